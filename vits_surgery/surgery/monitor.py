"""Rejection monitor: watch the recipient side while a transplant trains, stop when it breaks.

A transplant should change what the donor's data asks for and keep the rest of the recipient.
:class:`RejectionMonitor` measures, every ``every`` steps, how far the model has drifted from
the recipient it started as, relative to a baseline measured when ``fit`` starts:

- ``recipient/mel``: reconstruction error on held-out recipient batches. Each utterance goes
  through the posterior encoder (its mean, no sampling) and the decoder, and the log-mel L1
  against the utterance's own log-mel is averaged over valid frames. It is one encoder and one
  decoder pass per batch (no alignment search, no discriminator), and it moves when the
  decoder or the posterior encoder, the organs that carry timbre, forget the recipient.
- artifact indicators on a fixed set of sentences synthesized through the real inference path
  (text encoder, duration predictor, flow, decoder; same seeds at every evaluation):
  ``artifact/clipping`` (fraction of samples with ``|x| >= clip_level``),
  ``artifact/nonfinite`` (fraction of NaN/inf samples), ``artifact/flatness`` (mean spectral
  flatness of the non-silent frames: near 0 for voiced speech, about 0.56 for white noise) and
  ``artifact/hf_energy`` (fraction of the energy above ``hf_cutoff_hz``, default a quarter of
  the sample rate: buzz and metallic noise raise it).
- ``speaker/similarity`` (optional): mean cosine of the synthesized sentences' resemblyzer
  embeddings to the recipient (``speaker_reference`` utterances, or the baseline syntheses).
  It needs the ``eval`` extra; when that is missing the metric is skipped with a logged note.
- ``intelligibility/wer``: word error rate of pocketsphinx's bundled US-English recognizer
  (:func:`vits_surgery.evaluate.asr.transcribe`, audio resampled to 16 kHz) on the same
  synthesized sentences against their texts, pooled over the sentences
  (:func:`~vits_surgery.evaluate.asr.word_error_rate`). No extra synthesis: it recognizes the
  audio the artifact indicators already measured. It needs ``sentences`` given as texts (token
  ids carry no words to compare with) and the ``eval`` extra (pocketsphinx, jiwer); when either
  is missing it is skipped with a logged note, unless ``intelligibility=True`` requires it.
  The absolute WER of an untrained or foreign voice is high; the check is its rise.

A metric *violates* its tolerance when it moves the wrong way by more than the tolerance:
``recipient/mel`` by a relative rise (value > baseline * (1 + tol)), the artifact indicators
and ``intelligibility/wer`` by an absolute rise (value > baseline + tol),
``speaker/similarity`` by an absolute drop (value < baseline - tol); a non-finite value always
violates. Defaults are :data:`DEFAULT_TOLERANCES`; a tolerance of None records the metric
without checking it.

Each violation is logged as a warning and kept in :attr:`RejectionMonitor.history`. After
``patience`` consecutive evaluations with a violation the monitor calls
:meth:`~vits_surgery.surgery.trainer.SurgicalTrainer.request_stop`. It also keeps the best
checkpoint: among evaluations that pass every tolerance (the baseline included), the one with
the lowest donor loss is saved with the trainer's ``save_checkpoint`` to ``out_dir/best``, so a
run whose voice degrades keeps the last good one; :meth:`RejectionMonitor.restore_best` loads it
back into the trainer after ``fit`` (the last log line of ``fit`` names its step and folder).
The donor loss is the trainer's weighted generator loss on ``donor_batches`` (eval mode,
fixed noise) when they are given, else the mean training loss since the previous evaluation
(the baseline then has none and is never the best).

Evaluations run in eval mode without gradients, with fixed random draws, and restore every
train/eval flag and every RNG stream the trainer uses, so they do not change training.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._names import did_you_mean
from ..audio import amp_to_log, log_mel, spec_to_mel
from ..batch import Batch
from .callbacks import Callback
from .freeze import preserved
from .listening import synthesize

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

SurgicalTrainer = Any  # callbacks observe a trainer; they do not import it

__all__ = [
    "DEFAULT_TOLERANCES",
    "MonitorRecord",
    "RejectionMonitor",
    "artifact_metrics",
    "reconstruction_error",
]

logger = logging.getLogger(__name__)

#: metric -> tolerance (see the module docstring for how each is applied).
DEFAULT_TOLERANCES: dict[str, float | None] = {
    "recipient/mel": 0.25,  # relative rise of the reconstruction error
    "artifact/clipping": 0.01,  # absolute rise of the clipped-sample fraction
    "artifact/nonfinite": 0.0,  # any new NaN/inf sample
    "artifact/flatness": 0.1,  # absolute rise of the mean spectral flatness
    "artifact/hf_energy": 0.1,  # absolute rise of the high-frequency energy fraction
    "speaker/similarity": 0.1,  # absolute drop of the cosine to the recipient
    "intelligibility/wer": 0.05,  # absolute rise of the word error rate (5 points)
}
_RELATIVE = ("recipient/mel",)
_HIGHER_IS_BETTER = ("speaker/similarity",)


@dataclass
class MonitorRecord:
    """One evaluation.

    Attributes:
        step: the trainer's step (the baseline is the step ``fit`` started at).
        metrics: metric -> value.
        violations: one message per metric beyond its tolerance.
        donor_loss: the best-checkpoint criterion (inf when unknown).
        consecutive: evaluations in a row with a violation, this one included.
        best: whether this evaluation became the best checkpoint.
        baseline: whether this is the baseline evaluation.
    """

    step: int
    metrics: dict[str, float]
    violations: list[str] = field(default_factory=list)
    donor_loss: float = math.inf
    consecutive: int = 0
    best: bool = False
    baseline: bool = False

    @property
    def passed(self) -> bool:
        """No metric beyond its tolerance."""
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**asdict(self), "passed": self.passed}


def artifact_metrics(
    audio: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop_length: int,
    clip_level: float = 0.99,
    hf_cutoff_hz: float | None = None,
    silence_db: float = -40.0,
) -> dict[str, float]:
    """Artifact indicators of a waveform (or several, concatenated) [N].

    Args:
        audio: samples in [-1, 1].
        sample_rate, n_fft, hop_length: the analysis (Hann window of ``n_fft``).
        clip_level: ``|x| >= clip_level`` counts as clipped.
        hf_cutoff_hz: start of the high band (default ``sample_rate / 4``).
        silence_db: frames quieter than the loudest frame by more than this are ignored by
            the spectral measures.

    Returns:
        ``artifact/clipping``, ``artifact/nonfinite``, ``artifact/flatness``,
        ``artifact/hf_energy``.
    """
    x = audio.detach().float().reshape(-1).cpu()
    n = max(1, x.numel())
    finite = torch.isfinite(x)
    nonfinite = 1.0 - float(finite.sum()) / n
    x = torch.where(finite, x, torch.zeros_like(x))
    clipping = float((x.abs() >= clip_level).sum()) / n
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(
        x, n_fft, hop_length, window=torch.hann_window(n_fft), center=False, return_complex=True
    )
    power = spec.abs().pow(2).double()  # [F, frames]
    energy = power.sum(dim=0)  # [frames]
    loud = energy > energy.max() * 10 ** (silence_db / 10) if bool(energy.max() > 0) else energy > 0
    if not bool(loud.any()):
        return {
            "artifact/clipping": clipping,
            "artifact/nonfinite": nonfinite,
            "artifact/flatness": 0.0,
            "artifact/hf_energy": 0.0,
        }
    p = power[:, loud]
    tiny = torch.finfo(torch.float64).tiny
    flatness = torch.exp(torch.log(p + tiny).mean(dim=0)) / (p.mean(dim=0) + tiny)  # [frames]
    cutoff = sample_rate / 4 if hf_cutoff_hz is None else hf_cutoff_hz
    freqs = torch.arange(power.shape[0], dtype=torch.float64) * sample_rate / n_fft
    hf = float(p[freqs >= cutoff].sum() / p.sum())
    return {
        "artifact/clipping": clipping,
        "artifact/nonfinite": nonfinite,
        "artifact/flatness": float(flatness.mean()),
        "artifact/hf_energy": hf,
    }


def reconstruction_error(model: nn.Module, batch: Batch, generator: torch.Generator | None = None) -> float:
    """Log-mel L1 of posterior-encoder -> decoder reconstructions over valid frames.

    The decoder reads the posterior mean (no sampling); call it under ``torch.no_grad()`` in
    eval mode.
    """
    cfg = model.config.audio
    g = model.speaker_vector(batch.speakers)
    post = model.encode_audio(batch.spec, batch.spec_lengths, g, generator=generator)
    m_q, mask = post[1], post[3]  # [B, C, T_y], [B, 1, T_y]
    wav = model.decoder(m_q * mask, g=g)  # [B, 1, N]
    hat = log_mel(wav.float(), cfg)  # [B, n_mels, T']
    target = amp_to_log(
        spec_to_mel(batch.spec.float(), cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.mel_fmin, cfg.mel_fmax)
    )
    t = min(hat.shape[-1], target.shape[-1])
    m = mask[..., :t].float()
    diff = (hat[..., :t] - target[..., :t]).abs() * m  # [B, n_mels, t]
    return float(diff.sum() / (m.sum() * hat.shape[1]).clamp_min(1))


class RejectionMonitor(Callback):
    """Measure recipient drift every ``every`` steps; warn, stop early, keep the best checkpoint.

    Args:
        recipient_batches: held-out recipient utterances (:class:`~vits_surgery.batch.Batch`),
            for ``recipient/mel``; a few short ones are enough.
        sentences: token-id lists or texts to synthesize for the artifact indicators (texts
            go through ``Tokenizer(model.config.text)``); default: the token ids of
            ``recipient_batches``.
        every: evaluate when ``step % every == 0``.
        patience: consecutive evaluations with a violation that stop training.
        tolerances: overrides of :data:`DEFAULT_TOLERANCES` (None turns a check off).
        donor_batches: held-out donor batches for the best-checkpoint criterion.
        speaker_similarity: True = required, False = off, None = when the ``eval`` extra is
            installed (otherwise skipped with a logged note).
        speaker_reference: recipient utterances (arrays at the model's sample rate) for the
            similarity; default: the baseline syntheses.
        intelligibility: ``intelligibility/wer`` of the synthesized ``sentences`` against their
            texts. True = required (a ValueError at construction when ``sentences`` are not
            all texts, an ImportError when pocketsphinx or jiwer is missing), False = off,
            None = when both are available (otherwise skipped with a logged note).
        out_dir: where ``best`` goes (default: the trainer's ``out_dir``).
        save_best: keep the best checkpoint in ``out_dir/best``.
        seed: sentence ``i`` is synthesized with a generator seeded ``seed + i``.
        max_seconds: cap on each synthesized sentence.
        clip_level, hf_cutoff_hz, silence_db: see :func:`artifact_metrics`.
        baseline: metric values to compare against instead of measuring them at fit start
            (e.g. ``monitor.baseline`` of an earlier run, when resuming).

    Attributes:
        history: one :class:`MonitorRecord` per evaluation, the baseline first.
        baseline: the baseline metrics.
        best_step: the step saved as ``best`` (None before any).
        best_path: the folder ``best`` is saved to (None before any or with ``save_best=False``).
        intelligibility_seconds: seconds the intelligibility check took at the first evaluation
            (None when it does not run).
    """

    def __init__(
        self,
        recipient_batches: Sequence[Batch] | Batch,
        sentences: Sequence[Sequence[int] | str] | None = None,
        every: int = 100,
        patience: int = 3,
        tolerances: Mapping[str, float | None] | None = None,
        donor_batches: Sequence[Batch] | None = None,
        speaker_similarity: bool | None = None,
        speaker_reference: Sequence[np.ndarray] | None = None,
        intelligibility: bool | None = None,
        out_dir: str | Path | None = None,
        save_best: bool = True,
        seed: int = 1234,
        max_seconds: float = 10.0,
        clip_level: float = 0.99,
        hf_cutoff_hz: float | None = None,
        silence_db: float = -40.0,
        baseline: Mapping[str, float] | None = None,
    ) -> None:
        self.recipient_batches = (
            [recipient_batches] if isinstance(recipient_batches, Batch) else list(recipient_batches)
        )
        if not self.recipient_batches or not all(isinstance(b, Batch) for b in self.recipient_batches):
            raise ValueError(
                "RejectionMonitor needs recipient_batches: a non-empty list of held-out recipient Batch objects"
            )
        if every < 1 or patience < 1:
            raise ValueError(f"every and patience must be >= 1, got every={every}, patience={patience}")
        self.tolerances = _check_tolerances(tolerances)
        self.sentences = list(sentences) if sentences is not None else None
        self.texts: list[str] | None = (
            [str(s) for s in self.sentences]
            if self.sentences and all(isinstance(s, str) for s in self.sentences)
            else None
        )
        if intelligibility:
            if self.texts is None:
                raise ValueError(
                    'intelligibility=True needs the sentences as texts (sentences=["...", ...]): '
                    "the word error rate compares the recognized words with them, and token ids carry no words"
                )
            missing = _recognizer_error()
            if missing is not None:
                raise missing
        self.intelligibility = intelligibility
        self.intelligibility_seconds: float | None = None
        self.every, self.patience = int(every), int(patience)
        self.donor_batches = list(donor_batches) if donor_batches is not None else None
        self.speaker_similarity = speaker_similarity
        self.speaker_reference = speaker_reference
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.save_best, self.seed, self.max_seconds = save_best, int(seed), float(max_seconds)
        self.artifact_kwargs = {
            "clip_level": clip_level,
            "hf_cutoff_hz": hf_cutoff_hz,
            "silence_db": silence_db,
        }
        self.baseline: dict[str, float] | None = dict(baseline) if baseline is not None else None
        self.history: list[MonitorRecord] = []
        self.best_step: int | None = None
        self.best_path: Path | None = None
        self.best_loss = math.inf
        self._consecutive = 0
        self._train_losses: list[float] = []
        self._tokens: list[list[int]] | None = None
        self._reference: np.ndarray | None = None

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: SurgicalTrainer) -> None:
        if trainer.world_size > 1:
            raise RuntimeError(
                "RejectionMonitor runs in single-process training only (it saves from rank 0); "
                "evaluate checkpoints offline in distributed runs"
            )
        self._consecutive, self._train_losses = 0, []
        self._tokens = self._sentence_tokens(trainer.model)
        self._resolve_intelligibility()
        if self.baseline is not None and self.history:
            return  # a later fit of the same run: keep the baseline and the best so far
        metrics, audio = self._measure(trainer, with_reference=True)
        if self.baseline is None:
            self.baseline = dict(metrics)
        record = MonitorRecord(trainer.step, metrics, self._violations(metrics), baseline=True)
        record.donor_loss = self._donor_loss(trainer)
        self._keep_if_best(trainer, record)
        self.history.append(record)
        logger.info("rejection monitor baseline at step %d: %s", trainer.step, _fmt(metrics))

    def on_step_end(self, trainer: SurgicalTrainer, step: int, logs: dict[str, float]) -> None:
        if "loss/generator" in logs:
            self._train_losses.append(float(logs["loss/generator"]))
        if step % self.every == 0:
            self.evaluate(trainer, step)

    def on_fit_end(self, trainer: SurgicalTrainer) -> None:
        bad = sum(1 for r in self.history if not r.passed)
        if self.best_step is None:
            best = "none (no evaluation passed with a known donor loss)"
        elif self.best_path is None:
            best = f"step {self.best_step} (not saved: save_best=False)"
        else:
            best = f"step {self.best_step} in {self.best_path} (monitor.restore_best(trainer) loads it)"
        logger.info(
            "rejection monitor: %d evaluations, %d with violations; best checkpoint: %s",
            len(self.history),
            bad,
            best,
        )

    def restore_best(self, trainer: SurgicalTrainer) -> Path:
        """Load the best checkpoint into ``trainer`` (its model and its state at that step).

        It goes through the trainer's ``load_checkpoint``: the weights, and also the step,
        optimizers and data position, so a later ``fit`` continues from the best step.

        Returns:
            The folder loaded.

        Raises:
            FileNotFoundError: no best checkpoint was saved (``save_best=False``, no passing
                evaluation yet, or the folder was removed).
        """
        if self.best_path is None or not self.best_path.is_dir():
            where = self.best_path or (self.out_dir or trainer.out_dir) / "best"
            raise FileNotFoundError(
                f"no best checkpoint to restore at {where} (best step: {self.best_step}; "
                f"save_best={self.save_best}): the monitor saves one when an evaluation passes every tolerance"
            )
        trainer.load_checkpoint(self.best_path)
        logger.info(
            "rejection monitor: restored the best checkpoint (step %d) from %s",
            self.best_step,
            self.best_path,
        )
        return self.best_path

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, trainer: SurgicalTrainer, step: int) -> MonitorRecord:
        """Measure, compare with the baseline, warn, keep the best, stop after ``patience``."""
        if self.baseline is None:
            raise RuntimeError(
                "RejectionMonitor.evaluate() before on_fit_start(): pass the monitor in callbacks="
            )
        metrics, _ = self._measure(trainer)
        record = MonitorRecord(step, metrics, self._violations(metrics))
        record.donor_loss = self._donor_loss(trainer)
        self._consecutive = self._consecutive + 1 if record.violations else 0
        record.consecutive = self._consecutive
        if record.violations:
            logger.warning(
                "step %d: recipient drift beyond tolerance (%d of %d in a row): %s",
                step,
                self._consecutive,
                self.patience,
                "; ".join(record.violations),
            )
        self._keep_if_best(trainer, record)
        self.history.append(record)
        if self._consecutive >= self.patience:
            trainer.request_stop(
                f"rejection monitor: {self._consecutive} consecutive evaluations beyond the recipient-drift "
                f"tolerances (last: {'; '.join(record.violations)})"
            )
        return record

    def _measure(
        self, trainer: SurgicalTrainer, with_reference: bool = False
    ) -> tuple[dict[str, float], list]:
        model, cfg = trainer.model, trainer.model.config
        a = cfg.audio
        with _quiet_eval(trainer, self.seed):
            gen = torch.Generator(device=trainer.device).manual_seed(self.seed)
            errors = [reconstruction_error(model, b.to(trainer.device), gen) for b in self.recipient_batches]
            speaker = 0 if cfg.n_speakers else None
            max_frames = max(1, math.ceil(self.max_seconds * a.sample_rate / a.hop_length))
            audio = [
                synthesize(model, tokens, self.seed + i, speaker, max_frames)["audio"]
                for i, tokens in enumerate(self._tokens or [])
            ]
        metrics = {"recipient/mel": float(np.mean(errors))}
        if audio:
            joined = torch.cat([x.reshape(-1) for x in audio])
            metrics.update(
                artifact_metrics(joined, a.sample_rate, a.n_fft, a.hop_length, **self.artifact_kwargs)
            )
        similarity = self._similarity(audio, a.sample_rate, with_reference)
        if similarity is not None:
            metrics["speaker/similarity"] = similarity
        wer = self._word_error_rate(audio, a.sample_rate)
        if wer is not None:
            metrics["intelligibility/wer"] = wer
        return metrics, audio

    def _resolve_intelligibility(self) -> None:
        """Turn an undecided (None) intelligibility check on or off, with one note when off."""
        if self.intelligibility is not None:
            return
        if self.texts is None:
            logger.info(
                "rejection monitor: intelligibility/wer skipped (the sentences are token ids, not texts; "
                "pass sentences=[...] as texts to measure it)"
            )
            self.intelligibility = False
            return
        missing = _recognizer_error()
        if missing is not None:
            logger.info("rejection monitor: intelligibility/wer skipped (%s)", missing)
            self.intelligibility = False
            return
        self.intelligibility = True

    def _word_error_rate(self, audio: list[torch.Tensor], sample_rate: int) -> float | None:
        if not self.intelligibility or not audio or self.texts is None:
            return None
        from ..evaluate import asr

        start = time.perf_counter()
        wavs = [np.nan_to_num(x.detach().reshape(-1).float().cpu().numpy()) for x in audio]
        hyps = [asr.transcribe(wav, sample_rate) for wav in wavs]
        wer = asr.word_error_rate(self.texts, hyps)
        if self.intelligibility_seconds is None:
            self.intelligibility_seconds = time.perf_counter() - start
            logger.info(
                "rejection monitor: intelligibility check (%d sentences) took %.2f s per evaluation",
                len(audio),
                self.intelligibility_seconds,
            )
        return float(wer)

    def _similarity(self, audio: list[torch.Tensor], sample_rate: int, with_reference: bool) -> float | None:
        if self.speaker_similarity is False or not audio:
            return None
        from ..evaluate import speaker

        wavs = [np.nan_to_num(x.numpy().astype(np.float32)) for x in audio]
        try:
            if with_reference and self._reference is None:
                ref = self.speaker_reference if self.speaker_reference is not None else wavs
                self._reference = speaker.speaker_embeddings(list(ref), sample_rate)
            if self._reference is None:
                return None
            emb = speaker.speaker_embeddings(wavs, sample_rate)
        except ImportError as err:
            if self.speaker_similarity:
                raise
            logger.info("rejection monitor: speaker similarity skipped (%s)", err)
            self.speaker_similarity = False
            return None
        return float(np.mean(speaker.similarity_to(emb, self._reference)))

    def _donor_loss(self, trainer: SurgicalTrainer) -> float:
        if self.donor_batches is None:
            losses, self._train_losses = self._train_losses, []
            return float(np.mean(losses)) if losses else math.inf
        total = 0.0
        path = trainer.loss_path
        with _quiet_eval(trainer, self.seed):
            path.rng.manual_seed(self.seed)
            for batch in self.donor_batches:
                batch = batch.to(trainer.device)
                out = path.forward(batch)
                total += float(path.total(path.generator_losses(batch, out)))
        return total / len(self.donor_batches)

    def _violations(self, metrics: Mapping[str, float]) -> list[str]:
        out = []
        for name, value in metrics.items():
            tol = self.tolerances.get(name)
            base = (self.baseline or {}).get(name)
            if tol is None or base is None:
                continue
            if name in _RELATIVE:
                limit, bad = base * (1 + tol), value > base * (1 + tol)
                how = f"baseline {base:.4g} + {100 * tol:.0f}%"
            elif name in _HIGHER_IS_BETTER:
                limit, bad = base - tol, value < base - tol
                how = f"baseline {base:.4g} - {tol:g}"
            else:
                limit, bad = base + tol, value > base + tol
                how = f"baseline {base:.4g} + {tol:g}"
            if bad or not math.isfinite(value):
                sign = "<" if name in _HIGHER_IS_BETTER else ">"
                out.append(f"{name} {value:.4g} {sign} {limit:.4g} ({how})")
        return out

    def _keep_if_best(self, trainer: SurgicalTrainer, record: MonitorRecord) -> None:
        if not record.passed or not record.donor_loss < self.best_loss:
            return
        self.best_loss, self.best_step, record.best = record.donor_loss, record.step, True
        if self.save_best:
            self.best_path = Path(trainer.save_checkpoint((self.out_dir or trainer.out_dir) / "best"))

    def _sentence_tokens(self, model: nn.Module) -> list[list[int]]:
        if self.sentences is None:
            return [
                b.tokens[i, : int(b.token_lengths[i])].tolist()
                for b in self.recipient_batches
                for i in range(len(b))
            ]
        if not any(isinstance(s, str) for s in self.sentences):
            return [list(map(int, s)) for s in self.sentences]  # type: ignore[arg-type]
        from ..text import Tokenizer

        tokenizer = Tokenizer(model.config.text)
        return [tokenizer.encode(s) if isinstance(s, str) else list(map(int, s)) for s in self.sentences]


def _recognizer_error() -> ImportError | None:
    """Why the word error rate cannot be measured here (pocketsphinx or jiwer missing), or None."""
    from ..evaluate._deps import require

    try:
        require("pocketsphinx", "the monitor's intelligibility/wer")
        require("jiwer", "the monitor's intelligibility/wer")
    except ImportError as err:
        return err
    return None


def _check_tolerances(overrides: Mapping[str, float | None] | None) -> dict[str, float | None]:
    out = dict(DEFAULT_TOLERANCES)
    for key, value in (overrides or {}).items():
        if key not in DEFAULT_TOLERANCES:
            hint = did_you_mean(key, DEFAULT_TOLERANCES)
            raise ValueError(f"unknown monitor metric {key!r}{hint} (known: {', '.join(DEFAULT_TOLERANCES)})")
        if value is not None and not float(value) >= 0:
            raise ValueError(f"tolerance of {key!r} must be >= 0 or None, got {value}")
        out[key] = None if value is None else float(value)
    return out


@contextlib.contextmanager
def _quiet_eval(trainer: SurgicalTrainer, seed: int) -> Iterator[None]:
    """Eval mode, no gradients, seeded global RNG; flags and the trainer's RNG streams restored."""
    model, rng = trainer.model, trainer.loss_path.rng
    gen_state = rng.get_state()
    devices = [trainer.device] if trainer.device.type == "cuda" else []
    try:
        with preserved(model), torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.default_generator.manual_seed(seed)
            model.eval()
            yield
    finally:
        rng.set_state(gen_state)


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
