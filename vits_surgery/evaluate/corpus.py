"""All metrics over a set of utterances: :func:`evaluate_corpus`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._audio import AudioLike, as_audio
from .asr import normalize_transcript, transcribe, word_error_rate
from .pitch import f0_stats, f0_track
from .rate import count_phones, speaking_rate
from .speaker import similarity_to, speaker_embeddings

__all__ = ["METRICS", "evaluate_corpus", "summary"]

logger = logging.getLogger(__name__)

METRICS = ("rate", "f0", "speaker", "wer")
"""Metric groups :func:`evaluate_corpus` can compute."""

References = Sequence[AudioLike] | np.ndarray | Mapping[str, Sequence[AudioLike] | np.ndarray]


def summary(values: Sequence[float]) -> dict[str, float]:
    """mean, sd, min, max and n of the finite values (NaN fields when none)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        nan = float("nan")
        return {"mean": nan, "sd": nan, "min": nan, "max": nan, "n": 0}
    sd = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {
        "mean": float(arr.mean()),
        "sd": sd,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


def _rate(
    audios: list[tuple[np.ndarray, int]], texts: Sequence[str], language: str, rows: list[dict]
) -> dict:
    phones = count_phones(list(texts), language)
    results = [speaking_rate(a, t, phones=n) for a, t, n in zip(audios, texts, phones, strict=True)]
    for row, r in zip(rows, results, strict=True):
        row.update(
            phones=r.phones,
            phones_per_second=r.phones_per_second,
            phones_per_second_trimmed=r.phones_per_second_trimmed,
            speech_seconds=r.speech_seconds,
        )
    speech = sum(r.speech_seconds for r in results)
    trimmed = sum(r.trimmed_seconds for r in results)
    total_phones = sum(r.phones for r in results)
    return {
        "phones_per_second": summary([r.phones_per_second for r in results]),
        "phones_per_second_trimmed": summary([r.phones_per_second_trimmed for r in results]),
        "phones_per_second_pooled": total_phones / speech if speech > 0 else float("nan"),
        "speech_seconds": speech,
        "trimmed_seconds": trimmed,
        "phones": total_phones,
    }


def _f0(audios: list[tuple[np.ndarray, int]], rows: list[dict]) -> dict:
    medians = []
    for row, audio in zip(rows, audios, strict=True):
        track = f0_track(audio)
        row["f0_median"] = float(np.median(track)) if track.size else float("nan")
        medians.append(row["f0_median"])
    stats = f0_stats(audios)
    return {**vars(stats), "utterance_medians": summary(medians)}


def _references(ref_wavs: References | None) -> dict[str, Any]:
    if ref_wavs is None:
        return {}
    if isinstance(ref_wavs, Mapping):
        return dict(ref_wavs)
    return {"reference": ref_wavs}


def _speaker(
    audios: list[tuple[np.ndarray, int]],
    wavs: Sequence[AudioLike],
    refs: dict[str, Any],
    device: str,
    rows: list[dict],
) -> tuple[dict, np.ndarray]:
    emb = speaker_embeddings(audios, device=device)  # [N, 256]
    out = {}
    for name, ref in refs.items():
        loo = ref is wavs
        ref_emb = (
            emb
            if loo
            else (np.asarray(ref) if _is_embedding(ref) else speaker_embeddings(ref, device=device))
        )
        sims = similarity_to(emb, ref_emb, leave_one_out=loo)
        for row, s in zip(rows, sims, strict=True):
            row[f"similarity_{name}"] = float(s)
        out[name] = {**summary(sims.tolist()), "leave_one_out": loo}
    return out, emb


def _is_embedding(ref: Any) -> bool:
    return isinstance(ref, np.ndarray) and ref.ndim == 2 and ref.dtype.kind == "f" and ref.shape[1] == 256


def _wer(audios: list[tuple[np.ndarray, int]], texts: Sequence[str], rows: list[dict]) -> dict:
    hyps = [transcribe(a) for a in audios]
    for row, hyp, text in zip(rows, hyps, texts, strict=True):
        row["hypothesis"] = hyp
        row["wer"] = word_error_rate(text, hyp) if normalize_transcript(text) else float("nan")
    return {
        "wer": word_error_rate(list(texts), hyps),
        "words": sum(len(normalize_transcript(t).split()) for t in texts),
    }


def evaluate_corpus(
    wavs: Sequence[AudioLike],
    texts: Sequence[str],
    ref_wavs: References | None = None,
    *,
    sample_rate: int | None = None,
    metrics: Sequence[str] = METRICS,
    language: str = "en-us",
    device: str = "cpu",
    return_embeddings: bool = False,
) -> dict[str, Any]:
    """Speaking rate, F0, speaker similarity and WER of a set of utterances.

    Args:
        wavs: the utterances (paths, arrays with ``sample_rate``, or ``(array, rate)``).
        texts: what each utterance says (normalised text), same length as ``wavs``.
        ref_wavs: reference speaker(s) for similarity: a list of utterances, a [M, 256] array of
            their embeddings, or a mapping ``name -> either`` (e.g. ``{"recipient": ...,
            "donor": ...}``). Passing ``wavs`` itself (the same object) compares each utterance
            with the centroid of the others (leave-one-out).
        sample_rate: rate of bare arrays.
        metrics: subset of :data:`METRICS`; ``"speaker"`` is skipped without references unless
            ``return_embeddings``.
        language: espeak-ng voice for the phone counts.
        device: torch device of the speaker encoder.
        return_embeddings: add ``"embeddings"`` ([N, 256] array) to the result.

    Returns:
        JSON-ready dict: ``n``; ``rate`` (phones/s per utterance summarised as mean/sd/min/max,
        trimmed-span rate, pooled rate); ``f0`` (pooled median, p5, p95, spread in Hz and
        semitones, summary of per-utterance medians); ``similarity`` (per reference name);
        ``wer`` (pooled) and ``words``; ``utterances`` (one row per utterance).

    Raises:
        ValueError: unknown metric, or ``wavs`` and ``texts`` of different lengths.
        ImportError: an optional package of a requested metric is missing.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {list(METRICS)}")
    if len(wavs) != len(texts):
        raise ValueError(f"got {len(wavs)} utterances but {len(texts)} texts")
    if len(wavs) == 0:
        raise ValueError("evaluate_corpus needs at least one utterance")
    audios = [as_audio(w, sample_rate) for w in wavs]
    rows: list[dict[str, Any]] = [{"index": i, "text": t} for i, t in enumerate(texts)]
    result: dict[str, Any] = {"n": len(wavs)}
    if "rate" in metrics:
        result["rate"] = _rate(audios, texts, language, rows)
    if "f0" in metrics:
        result["f0"] = _f0(audios, rows)
    refs = _references(ref_wavs)
    if "speaker" in metrics and (refs or return_embeddings):
        result["similarity"], emb = _speaker(audios, wavs, refs, device, rows)
        if return_embeddings:
            result["embeddings"] = emb
    if "wer" in metrics:
        result.update(_wer(audios, texts, rows))
    result["utterances"] = rows
    logger.info("evaluated %d utterances: %s", len(wavs), ", ".join(m for m in metrics))
    return result
