"""The measured donor profile: rate, pitch, identity and durations against the recipient.

Everything is measured on pairs: the donor's recordings of a sample of texts and the
recipient voice synthesizing the same texts, so the texts cancel out of every ratio.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["SpeakerMeasures", "DonorProfile", "measure_speaker", "measure_profile"]

Audio = tuple[np.ndarray, int]


@dataclass(frozen=True)
class SpeakerMeasures:
    """One side (donor or recipient) of a :class:`DonorProfile`.

    Attributes:
        phones_per_second: median over utterances (energy VAD speech time, espeak phones).
        speech_seconds: total speech time of the sample (pauses removed).
        f0_median, f0_p5, f0_p95: voiced F0 in Hz, pooled over the sample (NaN if unmeasured).
        f0_range_semitones: ``12 log2(p95 / p5)``.
        self_similarity: mean leave-one-out cosine of each utterance to the others' centroid.
    """

    phones_per_second: float
    speech_seconds: float
    f0_median: float = math.nan
    f0_p5: float = math.nan
    f0_p95: float = math.nan
    f0_range_semitones: float = math.nan
    self_similarity: float = math.nan


@dataclass
class DonorProfile:
    """How the donor differs from the recipient on the same texts.

    Attributes:
        n_utterances: paired utterances measured.
        donor, recipient: :class:`SpeakerMeasures` of each side.
        rate_ratio: donor speaking rate over the recipient's, from paired speech time
            (recipient speech seconds / donor speech seconds; < 1 = the donor is slower).
        f0_shift_semitones: donor median F0 relative to the recipient's.
        similarity: mean cosine of the donor's utterances to the recipient's centroid
            (compare with ``recipient.self_similarity``, the voice against itself).
        duration_ratio: phone class -> donor frames / recipient frames on the same tokens.
        duration_source: what gave the durations (``"mas"`` or a forced aligner's name).
    """

    n_utterances: int
    donor: SpeakerMeasures
    recipient: SpeakerMeasures
    rate_ratio: float
    f0_shift_semitones: float = math.nan
    similarity: float = math.nan
    duration_ratio: dict[str, float] = field(default_factory=dict)
    duration_source: str = "mas"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def lines(self) -> list[str]:
        """Printable summary lines (``n/a`` for what was not measured)."""
        d, r = self.donor, self.recipient

        def f(x: float, fmt: str) -> str:
            return format(x, fmt) if math.isfinite(x) else "n/a"

        durs = ", ".join(f"{k} {v:.2f}" for k, v in self.duration_ratio.items() if math.isfinite(v))
        return [
            f"speaking rate   donor {f(d.phones_per_second, '.2f')} phones/s, recipient "
            f"{f(r.phones_per_second, '.2f')} (rate ratio {f(self.rate_ratio, '.3f')})",
            f"median F0       donor {f(d.f0_median, '.1f')} Hz, recipient {f(r.f0_median, '.1f')} Hz"
            f" ({f(self.f0_shift_semitones, '+.2f')} st); range {f(d.f0_range_semitones, '.1f')} vs "
            f"{f(r.f0_range_semitones, '.1f')} st",
            f"speaker cosine  donor to recipient {f(self.similarity, '.3f')} (recipient to itself "
            f"{f(r.self_similarity, '.3f')})",
            f"duration ratio  ({self.duration_source}) {durs or 'n/a'}",
        ]


def _rates(audios: Sequence[Audio], phones: Sequence[int]) -> tuple[float, float]:
    from ..evaluate import energy_vad

    rates, total = [], 0.0
    for (audio, sr), n in zip(audios, phones, strict=True):
        speech = energy_vad(audio, sr).speech_seconds
        total += speech
        if speech > 0:
            rates.append(n / speech)
    return (float(np.median(rates)) if rates else math.nan), total


def measure_speaker(
    audios: Sequence[Audio], phones: Sequence[int], pitch: bool = True, embeddings: np.ndarray | None = None
) -> SpeakerMeasures:
    """Rate, F0 and self-similarity of one side.

    Args:
        audios: ``(samples [T], rate)`` per utterance.
        phones: phones of each utterance's text.
        pitch: measure F0 (needs ``praat-parselmouth``).
        embeddings: [N, D] speaker embeddings of the utterances, for the self-similarity.
    """
    rate, seconds = _rates(audios, phones)
    f0: dict[str, float] = {}
    if pitch:
        from ..evaluate import f0_stats

        st = f0_stats(list(audios))
        f0 = {"f0_median": st.median, "f0_p5": st.p5, "f0_p95": st.p95, "f0_range_semitones": st.spread_semitones}
    sim = math.nan
    if embeddings is not None and len(embeddings) >= 2:
        from ..evaluate import similarity_to

        sim = float(np.mean(similarity_to(embeddings, embeddings, leave_one_out=True)))
    return SpeakerMeasures(rate, seconds, **f0, self_similarity=sim)


def measure_profile(
    donor: Sequence[Audio],
    recipient: Sequence[Audio],
    texts: Sequence[str],
    class_frames: tuple[Mapping[str, float], Mapping[str, float]] | None = None,
    language: str = "en-us",
    pitch: bool = True,
    similarity: bool = True,
    duration_source: str = "mas",
) -> DonorProfile:
    """Measure a :class:`DonorProfile` on paired utterances (``donor[i]`` and ``recipient[i]`` read ``texts[i]``).

    Args:
        donor, recipient: ``(samples [T], rate)`` per utterance.
        texts: the texts.
        class_frames: (donor, recipient) total frames per phone class
            (:func:`~vits_surgery.diagnose.durations.class_frames`); None skips the ratio.
        language: espeak-ng voice that counts phones.
        pitch: measure F0 (``praat-parselmouth``).
        similarity: measure speaker similarity (``resemblyzer``).
        duration_source: name recorded for the durations.
    """
    from ..evaluate import count_phones, semitones

    if not len(donor) == len(recipient) == len(texts) or not texts:
        raise ValueError(f"need the same >= 1 utterances on both sides, got {len(donor)}, {len(recipient)}, {len(texts)}")
    phones = count_phones(list(texts), language)
    emb_d = emb_r = None
    if similarity:
        from ..evaluate import speaker_embeddings

        emb_d, emb_r = speaker_embeddings(list(donor)), speaker_embeddings(list(recipient))
    d = measure_speaker(donor, phones, pitch, emb_d)
    r = measure_speaker(recipient, phones, pitch, emb_r)
    shift = semitones(d.f0_median, r.f0_median) if pitch and d.f0_median > 0 and r.f0_median > 0 else math.nan
    sim = math.nan
    if emb_d is not None:
        from ..evaluate import similarity_to

        sim = float(np.mean(similarity_to(emb_d, emb_r)))
    ratios: dict[str, float] = {}
    if class_frames is not None:
        fd, fr = class_frames
        ratios = {k: (fd[k] / fr[k] if fr.get(k, 0) > 0 else math.nan) for k in fd if fd[k] > 0 or fr.get(k, 0) > 0}
        total_d, total_r = sum(fd.values()), sum(fr.values())
        ratios["all"] = total_d / total_r if total_r > 0 else math.nan
    rate_ratio = r.speech_seconds / d.speech_seconds if d.speech_seconds > 0 else math.nan
    return DonorProfile(len(texts), d, r, rate_ratio, shift, sim, ratios, duration_source)
