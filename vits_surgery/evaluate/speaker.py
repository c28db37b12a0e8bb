"""Speaker similarity: cosine of resemblyzer d-vectors (the model ships inside the wheel).

Embeddings are 256-d and L2-normalised. A speaker is represented by the centroid of its
utterance embeddings (mean, re-normalised); the similarity of a set of utterances to a speaker
is the cosine of each utterance to that centroid (leave-one-out when the set is the speaker's
own reference set).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._audio import AudioLike, as_audio
from ._deps import require

__all__ = [
    "SPEAKER_SR",
    "speaker_embedding",
    "speaker_embeddings",
    "speaker_centroid",
    "cosine_similarity",
    "similarity_to",
]

SPEAKER_SR = 16000
"""Rate the resemblyzer encoder works at."""


@functools.lru_cache(maxsize=2)
def _encoder(device: str) -> Any:
    resemblyzer = require("resemblyzer", "speaker similarity")
    return resemblyzer.VoiceEncoder(device, verbose=False)


def speaker_embedding(wav: AudioLike, sample_rate: int | None = None, device: str = "cpu") -> np.ndarray:
    """Resemblyzer embedding of one utterance.

    The audio is resampled to 16 kHz, volume-normalised and stripped of long silences
    (resemblyzer's ``preprocess_wav``) before encoding.

    Args:
        wav: the audio (path, array with ``sample_rate``, or ``(array, rate)``).
        sample_rate: rate of a bare array.
        device: torch device of the encoder.

    Returns:
        [256] L2-normalised float32 embedding.

    Raises:
        ImportError: ``resemblyzer`` is missing (names the install command).
    """
    encoder = _encoder(device)
    resemblyzer = require("resemblyzer", "speaker similarity")
    audio, _ = as_audio(wav, sample_rate, target_sr=SPEAKER_SR)
    prepared = resemblyzer.preprocess_wav(audio.astype(np.float32))
    if prepared.size < SPEAKER_SR // 10:  # the silence trim left (almost) nothing: use the raw audio
        prepared = audio
    return np.asarray(encoder.embed_utterance(prepared), dtype=np.float32)


def speaker_embeddings(
    wavs: Sequence[AudioLike], sample_rate: int | None = None, device: str = "cpu"
) -> np.ndarray:
    """Embeddings of several utterances: [N, 256]."""
    if len(wavs) == 0:
        raise ValueError("speaker_embeddings needs at least one utterance, got none")
    return np.stack([speaker_embedding(w, sample_rate, device) for w in wavs])


def speaker_centroid(embeddings: np.ndarray) -> np.ndarray:
    """L2-normalised mean of [N, D] embeddings: [D]."""
    emb = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
    if emb.shape[0] == 0:
        raise ValueError("a centroid needs at least one embedding, got an empty [0, D] array")
    mean = emb.mean(axis=0)
    return (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Cosine similarity along the last axis; [..., D] x [D] or [..., D] -> [...]."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    num = np.sum(a * b, axis=-1)
    den = np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
    out = num / den
    return float(out) if np.ndim(out) == 0 else out


def similarity_to(embeddings: np.ndarray, reference: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
    """Cosine of each utterance embedding to a speaker's centroid.

    Args:
        embeddings: [N, D] utterance embeddings.
        reference: [M, D] embeddings of the reference speaker's utterances.
        leave_one_out: ``embeddings`` *are* the reference (same rows, M == N): utterance i is
            compared with the centroid of the other M - 1.

    Returns:
        [N] cosines.
    """
    emb, ref = np.atleast_2d(embeddings), np.atleast_2d(reference)
    if not leave_one_out:
        return np.asarray(cosine_similarity(emb, speaker_centroid(ref)))
    if emb.shape != ref.shape or emb.shape[0] < 2:
        raise ValueError(
            f"leave-one-out needs the same >= 2 utterances on both sides, got {emb.shape} and {ref.shape}"
        )
    total = ref.sum(axis=0)
    return np.array([cosine_similarity(e, total - r) for e, r in zip(emb, ref, strict=True)])
