"""The paired sample a diagnosis measures: donor utterances and the voice reading the same texts."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..batch import Batch

__all__ = ["PairedSample", "pick_utterances", "synthesize", "make_batches", "paired_sample"]

logger = logging.getLogger(__name__)


@dataclass
class PairedSample:
    """Donor and recipient audio of the same texts.

    Attributes:
        texts: the texts; tokens: their token ids ([T_x] each).
        donor: the donor's audio at its native rate (``(samples, rate)``, for the checks).
        donor_model_rate: the donor's audio at the voice's rate.
        recipient: the voice's synthesis of each text at its rate.
        ids: donor utterance ids.
        unencodable: texts of the picked utterances the tokenizer could not encode.
        recipient_durations: frames per token the voice chose for each text ([T_x] each).
    """

    texts: list[str]
    tokens: list[list[int]]
    donor: list[tuple[np.ndarray, int]]
    donor_model_rate: list[np.ndarray]
    recipient: list[np.ndarray]
    ids: list[str]
    unencodable: list[str] = field(default_factory=list)
    recipient_durations: list[torch.Tensor] = field(default_factory=list)


def pick_utterances(
    items: Sequence[Any], n: int, seed: int = 0, min_seconds: float = 0.3, max_seconds: float = 8.0
) -> list[Any]:
    """A seeded sample of at most ``n`` utterances whose length is within bounds (headers only)."""
    import soundfile as sf

    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    out = []
    for i in order:
        try:
            info = sf.info(str(items[i].audio_path))
        except Exception:  # noqa: BLE001 - unreadable files are counted by the folder scan
            continue
        if min_seconds <= info.frames / max(info.samplerate, 1) <= max_seconds:
            out.append(items[i])
        if len(out) == n:
            break
    return out


def synthesize(model: Any, tokens: Sequence[Sequence[int]], seed: int = 0, **infer_kwargs: Any) -> list[np.ndarray]:
    """The voice reading each token sequence (one seeded generator per utterance): [N] samples each."""
    return _read_aloud(model, tokens, seed, **infer_kwargs)[0]


@torch.no_grad()
def _read_aloud(
    model: Any, tokens: Sequence[Sequence[int]], seed: int = 0, **infer_kwargs: Any
) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """Audio and the frames per token the voice chose, per utterance."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    audios, durations = [], []
    for i, ids in enumerate(tokens):
        gen = torch.Generator(device).manual_seed(seed + i)
        res = model.infer(torch.tensor([list(ids)], device=device), generator=gen, **infer_kwargs)
        audios.append(res.audio[0, 0, : int(res.audio_lengths[0])].float().cpu().numpy())
        durations.append(res.durations[0, : len(ids)].float().cpu())
    model.train(was)
    return audios, durations


def make_batches(
    config: Any, tokens: Sequence[Sequence[int]], audios: Sequence[np.ndarray], texts: Sequence[str],
    order: Sequence[int], batch_size: int = 4,
) -> list[Batch]:
    """Batches of the utterances in ``order`` (audio at the voice's rate), ``batch_size`` each."""
    from ..audio import spectrogram
    from ..data import Sample, collate

    hop = config.audio.hop_length
    samples = []
    for i in order:
        x = torch.from_numpy(np.ascontiguousarray(audios[i], dtype=np.float32))
        spec = spectrogram(x.unsqueeze(0), config.audio)[0]  # [F, T_y]
        wav = x[: spec.shape[-1] * hop]
        wav = torch.nn.functional.pad(wav, (0, spec.shape[-1] * hop - wav.shape[0]))
        samples.append(Sample(torch.tensor(list(tokens[i]), dtype=torch.long), spec, wav.unsqueeze(0), None,
                              texts[i], str(i)))
    return [collate(samples[k : k + batch_size]) for k in range(0, len(samples), batch_size)]


def paired_sample(model: Any, tokenizer: Any, items: Sequence[Any], seed: int = 0, **infer_kwargs: Any) -> PairedSample:
    """Load the donor's picked utterances, encode their texts and synthesize them with the voice."""
    from ..audio import load_audio, resample
    from ..text.phonemize import PhonemizerError

    rate = model.config.audio.sample_rate
    texts, tokens, donor, donor_sr, ids, bad = [], [], [], [], [], []
    for utt in items:
        try:
            ids_ = tokenizer.encode(utt.text)
        except (ValueError, PhonemizerError) as err:  # unknown symbols, nothing left after cleaning, phonemizer errors
            logger.info("diagnose: %s: %s", utt.audio_path, err)
            bad.append(utt.text)
            continue
        audio, sr = load_audio(utt.audio_path)
        if not ids_ or len(ids_) > len(audio) * rate / sr / model.config.audio.hop_length:
            bad.append(utt.text)
            continue
        texts.append(utt.text)
        tokens.append(ids_)
        donor.append((audio, sr))
        donor_sr.append(resample(audio, sr, rate) if sr != rate else audio)
        ids.append(getattr(utt, "id", Path(utt.audio_path).stem))
    recipient, durations = _read_aloud(model, tokens, seed=seed, **infer_kwargs)
    return PairedSample(texts, tokens, donor, donor_sr, recipient, ids, bad, durations)
