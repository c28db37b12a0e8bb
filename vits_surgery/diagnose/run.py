"""``diagnose()``: what a donor differs in, whether it is usable, and which organs to train."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..surgery.autoplan import ContrastiveRanking
from .checks import Finding, FolderScan, unusable
from .durations import DurationSource, class_frames, mas_durations, token_classes
from .profile import DonorProfile
from .recommend import Recommendation, recommend
from .sample import PairedSample

__all__ = ["Diagnosis", "diagnose"]

logger = logging.getLogger(__name__)


@dataclass
class Diagnosis:
    """Everything :func:`diagnose` measured.

    Attributes:
        donor: the donor folder; voice: what the voice was loaded from.
        scan: headers of every donor file.
        findings: the unusable-donor checks.
        profile: the measured profile (None when the donor is unusable before measuring).
        ranking: the contrastive organ ranking (None likewise).
        recommendation: organs to train and why.
        wer: recognizer word error rates on the same texts (``donor``, ``recipient``).
        seconds: wall time per stage.
        voice_rate: the voice's sample rate.
        sample: the paired audio (not serialised).
    """

    donor: str
    voice: str
    scan: FolderScan
    findings: list[Finding]
    recommendation: Recommendation
    profile: DonorProfile | None = None
    ranking: ContrastiveRanking | None = None
    wer: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    voice_rate: int = 0
    sample: PairedSample | None = field(default=None, repr=False)

    @property
    def usable(self) -> bool:
        """No check found the donor unusable."""
        return not unusable(self.findings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN stays NaN)."""
        from dataclasses import asdict

        return {
            "donor": self.donor, "voice": self.voice, "usable": self.usable, "scan": asdict(self.scan),
            "findings": [f.to_dict() for f in self.findings],
            "recommendation": self.recommendation.to_dict(),
            "profile": self.profile.to_dict() if self.profile else None,
            "ranking": self.ranking.to_dict() if self.ranking else None,
            "wer": dict(self.wer), "seconds": dict(self.seconds),
        }

    def summary(self) -> str:
        """The printable summary."""
        from .report import summary_text

        return summary_text(self)

    def __str__(self) -> str:
        return self.summary()

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``diagnosis.json`` and ``diagnosis.html`` into ``out_dir``."""
        from .report import write_report

        return write_report(self, out_dir)


def _load_voice(voice: Any) -> tuple[Any, str]:
    if not isinstance(voice, (str, Path)):
        return voice, type(voice).__name__
    from .. import load

    return load(voice), str(voice)


def _timed(seconds: dict[str, float], key: str, t0: float) -> float:
    now = time.perf_counter()
    seconds[key] = round(now - t0, 2)
    return now


def _cpu_seconds() -> float:
    """CPU seconds of this process (all threads)."""
    return time.process_time()


def _wers(sample: PairedSample, rate: int, n: int) -> dict[str, float]:
    from ..evaluate import transcribe, word_error_rate

    k = min(n, len(sample.texts))
    if k == 0:
        return {}
    refs = sample.texts[:k]
    donor = [transcribe(a) for a in sample.donor[:k]]
    recipient = [transcribe((a, rate)) for a in sample.recipient[:k]]
    return {"donor": word_error_rate(refs, donor), "recipient": word_error_rate(refs, recipient), "n": float(k)}


def _class_frames(model: Any, classes: dict[int, str], batches: Any, source: DurationSource) -> dict[str, float]:
    toks, durs = [], []
    for b in batches:
        toks += [b.tokens[i, : int(n)] for i, n in enumerate(b.token_lengths)]
        durs += source(model, b)
    return class_frames(toks, durs, classes)


def diagnose(
    voice: Any,
    donor_dir: str | Path,
    out_dir: str | Path | None = None,
    n_utterances: int = 16,
    n_rgn_batches: int = 2,
    batch_size: int = 4,
    n_asr: int = 4,
    seed: int = 0,
    formatter: str = "ljspeech",
    duration_source: DurationSource = mas_durations,
    language: str = "en-us",
    measure: Mapping[str, bool] | None = None,
    check_kwargs: Mapping[str, Mapping[str, float]] | None = None,
    rgn_kwargs: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    stop_if_unusable: bool = True,
) -> Diagnosis:
    """Diagnose a donor against a voice: checks, profile, contrastive ranking, recommendation.

    Samples ``n_utterances`` of the donor (seeded), has the voice read the same texts, and
    measures both sides. Nothing is trained and the voice is left as it was.

    Args:
        voice: a :class:`~vits_surgery.models.vits.VITS` or a checkpoint path for
            :func:`vits_surgery.load` (it needs a trained posterior encoder: regrow an
            inference-only voice first, see :func:`vits_surgery.regrow`).
        donor_dir: the donor's dataset folder (``formatter`` layout, LJSpeech by default).
        out_dir: where ``diagnosis.json`` and ``diagnosis.html`` go (None: not written).
        n_utterances: donor utterances sampled (of 0.3-8 s; the cost grows with it).
        n_rgn_batches, batch_size: batches per side for the contrastive ranking.
        n_asr: utterances per side for the language check (word error rate).
        seed: sampling, synthesis and training-noise seed.
        formatter: the dataset layout (see :data:`vits_surgery.data.FORMATTERS`).
        duration_source: per-token durations of recorded speech (default: MAS through the
            voice's posterior encoder and flow; a forced aligner fits here).
        language: espeak-ng voice that counts phones.
        measure: switch parts off: ``{"pitch": False, "similarity": False, "asr": False}``.
        check_kwargs: thresholds per check, e.g. ``{"amount": {"min_seconds": 120}}``.
        rgn_kwargs: further arguments of the relative gradient norms (``loss_weights``...).
        progress: called with a short message as each stage starts.
        stop_if_unusable: skip the ranking and the profile once a check finds the donor
            unusable (the report then gives the reasons only).

    Returns:
        :class:`Diagnosis` (also written to ``out_dir`` when given).
    """
    from ..text import Tokenizer

    say = progress or (lambda msg: logger.info("diagnose: %s", msg))
    on = {"pitch": True, "similarity": True, "asr": True, **(measure or {})}
    ck = {k: dict(v) for k, v in (check_kwargs or {}).items()}
    t_start, cpu_start = time.perf_counter(), _cpu_seconds()
    model, voice_name = _load_voice(voice)
    tokenizer = Tokenizer.from_config(model.config, on_unknown="error")
    diag = _sample_and_check(model, tokenizer, donor_dir, formatter, n_utterances, seed, ck, say)
    diag.voice = voice_name
    if diag.sample.texts:
        _language_checks(diag, n_asr if on["asr"] else 0, language, ck, say)
    if not diag.sample.texts or (stop_if_unusable and not diag.usable):
        return _finish(diag, out_dir, t_start, cpu_start)
    _measure(diag, model, tokenizer, n_rgn_batches, batch_size, seed, duration_source, language, on,
             dict(rgn_kwargs or {}), say)
    diag.recommendation = recommend(diag.ranking, diag.profile)
    return _finish(diag, out_dir, t_start, cpu_start)


def _sample_and_check(model: Any, tokenizer: Any, donor_dir: str | Path, formatter: str, n: int, seed: int,
                      ck: dict[str, dict[str, float]], say: Callable[[str], None]) -> Diagnosis:
    """Folder scan, the paired sample, and the checks that need no recognizer."""
    from ..data import read_items
    from . import checks
    from .sample import paired_sample, pick_utterances

    seconds: dict[str, float] = {}
    t, rate = time.perf_counter(), model.config.audio.sample_rate
    say("scanning the donor folder")
    items = read_items(donor_dir, formatter)
    scan = checks.scan_audio_files([u.audio_path for u in items])
    findings = [checks.check_amount(scan.total_seconds, **ck.get("amount", {})),
                checks.check_sample_rate(scan.sample_rate, rate, **ck.get("sample_rate", {}))]
    picked = pick_utterances(items, n, seed)
    t = _timed(seconds, "scan", t)
    say(f"the voice reads {len(picked)} donor texts")
    sample = paired_sample(model, tokenizer, picked, seed=seed)
    _timed(seconds, "synthesis", t)
    example = f"(e.g. {sample.unencodable[0][:60]!r})" if sample.unencodable else ""
    findings += [checks.check_transcripts(len(picked), len(sample.unencodable), example=example,
                                          **ck.get("transcripts", {})),
                 checks.check_clipping([a for a, _ in sample.donor], **ck.get("clipping", {}))]
    return Diagnosis(str(donor_dir), "", scan, findings, Recommendation((), "none", ""), seconds=seconds,
                     voice_rate=rate, sample=sample)


def _language_checks(diag: Diagnosis, n_asr: int, language: str, ck: dict[str, dict[str, float]],
                     say: Callable[[str], None]) -> None:
    """The transcripts' language and the recognizer's word errors on both sides."""
    from . import checks

    t = time.perf_counter()
    if n_asr > 0:
        say("recognizing speech (language check)")
        diag.wer = _wers(diag.sample, diag.voice_rate, n_asr)
        if language.startswith("en"):
            share = checks.english_word_share(diag.sample.texts)
            diag.findings.append(checks.check_text_language(share, **ck.get("text_language", {})))
        _timed(diag.seconds, "asr", t)
    diag.findings.append(checks.check_language(diag.wer.get("donor", math.nan), diag.wer.get("recipient", math.nan),
                                               language=language, **ck.get("language", {})))


def _measure(diag: Diagnosis, model: Any, tokenizer: Any, n_rgn_batches: int, batch_size: int, seed: int,
             duration_source: DurationSource, language: str, on: dict[str, bool], rgn_kwargs: dict[str, Any],
             say: Callable[[str], None]) -> None:
    """The contrastive ranking and the profile."""
    from ..surgery.autoplan import contrastive_ranking
    from .profile import measure_profile
    from .sample import make_batches

    sample, rate, t = diag.sample, diag.voice_rate, time.perf_counter()
    order = sorted(range(len(sample.texts)), key=lambda i: len(sample.tokens[i]))
    both = {side: make_batches(model.config, sample.tokens, audios, sample.texts, order, batch_size)
            for side, audios in (("donor", sample.donor_model_rate), ("recipient", sample.recipient))}
    say("contrastive organ ranking")
    n_b = max(1, min(n_rgn_batches, len(both["donor"])))
    diag.ranking = contrastive_ranking(model, _spread(both["donor"], n_b), _spread(both["recipient"], n_b),
                                       seed=seed, **rgn_kwargs)
    t = _timed(diag.seconds, "ranking", t)
    say("measuring the profile")
    # the donor's durations come from the duration source; the voice's are the ones it chose
    classes = token_classes(tokenizer)
    frames = (_class_frames(model, classes, both["donor"], duration_source),
              class_frames([torch.tensor(ids) for ids in sample.tokens], sample.recipient_durations, classes))
    t = _timed(diag.seconds, "durations", t)
    name = getattr(duration_source, "__name__", "custom").replace("_durations", "")
    diag.profile = measure_profile(sample.donor, [(a, rate) for a in sample.recipient], sample.texts, frames,
                                   language, pitch=on["pitch"], similarity=on["similarity"], duration_source=name)
    _timed(diag.seconds, "profile", t)


def _spread(batches: list, n: int) -> list:
    """``n`` batches spread over the length-sorted list (short, middle, long ...)."""
    if n >= len(batches):
        return list(batches)
    step = (len(batches) - 1) / max(n - 1, 1)
    return [batches[round(k * step)] for k in range(n)]


def _finish(diag: Diagnosis, out_dir: str | Path | None, t_start: float, cpu_start: float = math.nan) -> Diagnosis:
    bad = unusable(diag.findings)
    if bad:
        keep = diag.recommendation
        diag.recommendation = Recommendation((), "unusable", "unusable donor: " + "; ".join(f.message for f in bad),
                                             keep.evidence, [f"had it been usable: {keep.why}"] if keep.why else [])
    diag.seconds["total"] = round(time.perf_counter() - t_start, 2)
    if math.isfinite(cpu_start):
        diag.seconds["cpu_total"] = round(_cpu_seconds() - cpu_start, 2)
    if out_dir is not None:
        diag.write(out_dir)
    return diag
