"""The inputs of a cadence step, computed once per utterance and cached on disk.

With every organ but the duration predictor frozen, what the duration loss reads is the same
at every step: the text encoder's hidden states, the speaker vector ``g`` and the donor's
integer durations per token. :class:`DurationCache` computes them once per utterance and keeps
them in memory and on disk (``$VITS_SURGERY_CACHE/cadence``, default
``~/.cache/vits_surgery/cadence``), one safetensors file per utterance.

**Key.** sha256 over the weights the inputs depend on (the text encoder, the speaker embedding
and the organs the duration source reads), the model configuration, the cache version, the
duration source's name and settings, and the utterance itself (token ids, speaker id and the
spectrogram frames). Change any of them and the entry is recomputed; nothing is ever reused
across a change of weights, audio or source.

**Duration sources** are pluggable: any object with a ``name``, the organs it ``reads``,
``settings()`` and ``__call__(model, inputs) -> [B, T_x]`` integer frames per token
(:class:`DurationSource`). ``"mas"`` (:class:`MASDurations`) is the training path's own route:
the frozen posterior encoder and flow read the spectrogram, and monotonic alignment search on
the prior's likelihood gives the path. ``"forced"`` (:class:`ForcedDurations`) aligns the
donor's audio with its transcript by a speaker-independent aligner instead (pocketsphinx), for a
donor whose voice the recipient never heard. ``"auto"`` (:class:`AutoDurations`, the default)
chooses one of the two per donor by the prior-fit gap
(:func:`~vits_surgery.durations.mas.prior_fit_gap`) before the first key is computed. Register
other sources in :data:`SOURCES`.

**Posterior noise.** The training path draws a fresh posterior sample ``z`` at every step, so
MAS sees a different draw each time. The cache takes one draw per utterance (noise scale 1,
seeded from the utterance's key): the durations are one of the draws the training path would
have made, the same distribution of targets over the corpus, fixed and reproducible.
``MASDurations(noise_scale=0.0)`` aligns the posterior mean instead (within a few tenths of a
point of the sample on held-out duration recovery, docs/benchmarks.md "The posterior's
spread").

The inputs are computed in fp32 with the read organs in ``eval()`` (a cadence plan keeps frozen
organs in eval, so the training path runs them the same way). Files are written atomically
(temporary file + rename) and read with ``safetensors`` (no pickle); an unreadable or
inconsistent file is reported with a warning and recomputed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from .._files import atomic_write
from ..batch import Batch
from ..models.commons import length_mask
from ..models.text_encoder import TextEncoderOutput
from ..models.vits import VITS
from .mas import posterior_durations

__all__ = [
    "AUTO_THRESHOLD",
    "CACHE_VERSION",
    "AutoDurations",
    "SOURCES",
    "CadenceInputs",
    "CachedUtterance",
    "DurationCache",
    "DurationSource",
    "ForcedDurations",
    "MASDurations",
    "SourceInputs",
    "cache_root",
    "forced_available",
    "predicted_durations",
    "resolve_source",
]

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bumped when what an entry holds or how it is computed changes (part of every key)."""
_SPEC_SUM_RTOL = 1e-5
"""Relative tolerance of the cheap spectrogram check of an in-memory lookup (see ``_probe``)."""


def cache_root() -> Path:
    """``$VITS_SURGERY_CACHE/cadence`` (default ``~/.cache/vits_surgery/cadence``)."""
    return Path(os.environ.get("VITS_SURGERY_CACHE") or "~/.cache/vits_surgery").expanduser() / "cadence"


# ----------------------------------------------------------------------------- sources
@dataclass
class SourceInputs:
    """What a duration source gets for one batch (all on the model's device).

    Attributes:
        batch: the utterances (tokens, spectrograms, waveforms, texts, ids).
        text: the frozen text encoder's output on ``batch`` (m_p, logs_p, mask [B, 1, T_x]).
        g: [B, gin, 1] speaker vector, or None.
        seeds: one integer per utterance, derived from its cache key, for sources that draw noise.
        reference: [B, T_x] the recipient's own predicted durations (frames, noise-free, 0 on
            padding) by its duration predictor as it was before training
            (:attr:`DurationCache.reference`), for a source whose ``uses_reference`` is true;
            otherwise None.
    """

    batch: Batch
    text: TextEncoderOutput
    g: torch.Tensor | None
    seeds: list[int]
    reference: torch.Tensor | None = None


class DurationSource(Protocol):
    """Where the donor's durations come from.

    Attributes:
        name: short name (logged, part of the cache key), e.g. ``"mas"``.
        reads: model organs whose weights the durations depend on (hashed into the key).
    """

    name: str
    reads: tuple[str, ...]

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings that change the durations (part of the cache key)."""
        ...

    def __call__(self, model: VITS, inputs: SourceInputs) -> torch.Tensor:
        """[B, T_x] integer frames per token (0 on padding)."""
        ...


@dataclass(frozen=True)
class MASDurations:
    """Durations by MAS over the frozen posterior encoder and flow (the training path's route).

    Args:
        noise_scale: scale of the posterior noise of ``z``: 1 = a sample as in training (one
            fixed draw per utterance), 0 = the posterior mean.
    """

    noise_scale: float = 1.0
    name: ClassVar[str] = "mas"
    reads: ClassVar[tuple[str, ...]] = ("speaker_embedding", "posterior_encoder", "flow")

    def settings(self) -> dict[str, Any]:
        """The noise scale."""
        return {"noise_scale": float(self.noise_scale)}

    @torch.no_grad()
    def __call__(self, model: VITS, inputs: SourceInputs) -> torch.Tensor:
        """[B, T_x] frames per token: posterior encoder, flow, MAS on the prior likelihood."""
        batch = inputs.batch
        noise = torch.zeros(len(batch), model.config.inter_channels, batch.spec.shape[-1])  # [B, C, T_y]
        if self.noise_scale:
            for i, seed in enumerate(inputs.seeds):
                n = int(batch.spec_lengths[i])
                draw = torch.randn((noise.shape[1], n), generator=torch.Generator().manual_seed(seed))
                noise[i, :, :n] = self.noise_scale * draw
        return posterior_durations(model, batch, inputs.text, inputs.g, noise)  # [B, T_x]


@dataclass
class ForcedDurations:
    """Durations by speaker-independent forced alignment of the donor's own audio.

    Each utterance's waveform (``batch.wav`` at the model's rate) is aligned with its transcript
    (``batch.texts``) by :func:`~vits_surgery.durations.forced.forced_align` (pocketsphinx's
    English acoustic model, never trained on the recipient), and the word, pause and phone
    segments are mapped onto the utterance's token ids by
    :func:`~vits_surgery.durations.tokens.token_durations`: integer frames per token summing
    exactly to the utterance's spectrogram frames. Right for a donor the recipient never heard,
    where MAS through the recipient's own posterior misplaces the boundaries. English only.

    **What is taken from the aligner** (``timing``): by default (``"words"``) the times of the
    words and of the pauses between them only; each word's time is shared among its tokens in
    proportion to the recipient's own predicted durations. The aligner's phone boundaries are
    its least reliable output, the more so for an accent its US English models do not know:
    the recipient speaking a Scottish donor's aligned timings lost 4.5 fewer WER points with
    word times than with phone times, and the same on a US donor
    (``benchmarks/cadence/split_check.py``, docs/benchmarks.md). ``"phones"`` keeps the
    aligner's phone times, each phone's time shared equally among its tokens (the first
    version of this source).

    The recipient's predicted durations come from its duration predictor *as it was before
    training* (:attr:`DurationCache.reference`, a frozen copy that the trainer keeps in its
    checkpoints), never from the predictor being trained, so a resumed run rebuilds exactly the
    targets of the first.

    An utterance the aligner cannot align (or that has no transcript) falls back to MAS
    (:class:`MASDurations`, ``mas_noise_scale``) for that utterance alone, with a warning;
    :attr:`fallbacks` counts them. The fallback reads the speaker embedding, posterior encoder
    and flow, so their weights are part of the key (they are frozen in a cadence plan).

    Args:
        language: espeak-ng voice that pronounces words missing from the aligner's dictionary.
        min_frames: the fewest frames a token gets.
        mas_noise_scale: posterior noise of the MAS fallback.
        timing: ``"words"`` or ``"phones"``, what is taken from the aligner (above).

    Attributes:
        fallbacks: utterances that fell back to MAS (over this object's lifetime).
        aligned: utterances aligned by the forced aligner.
    """

    language: str = "en-us"
    min_frames: int = 1
    mas_noise_scale: float = 1.0
    timing: str = "words"
    fallbacks: int = field(default=0, compare=False)
    aligned: int = field(default=0, compare=False)
    name: ClassVar[str] = "forced"
    reads: ClassVar[tuple[str, ...]] = ("speaker_embedding", "posterior_encoder", "flow")

    def __post_init__(self) -> None:
        if self.timing not in ("words", "phones"):
            raise ValueError(f"timing must be 'words' or 'phones', got {self.timing!r}")

    @property
    def uses_reference(self) -> bool:
        """Whether the durations read the recipient's predicted durations (``SourceInputs.reference``)."""
        return self.timing == "words"

    def settings(self) -> dict[str, Any]:
        """Aligner, its passes and version, what is taken from it and how it is shared, the fallback."""
        from importlib.metadata import PackageNotFoundError, version

        from .forced import PASSES, TRIM_MARGINS

        try:
            aligner = f"pocketsphinx {version('pocketsphinx')}"
        except PackageNotFoundError:  # pragma: no cover - the alignment itself will say so
            aligner = "pocketsphinx (not installed)"
        return {
            "aligner": aligner, "passes": [repr(p) for p in PASSES], "trim_margins": list(TRIM_MARGINS),
            "language": self.language, "timing": self.timing,
            "weights": "recipient" if self.uses_reference else "uniform", "min_frames": int(self.min_frames),
            "fallback": "mas", "mas_noise_scale": float(self.mas_noise_scale),
        }

    def stats(self) -> dict[str, int]:
        """Aligned and fallen-back utterance counts (for the run log)."""
        return {"aligned": self.aligned, "fallbacks": self.fallbacks}

    def _one(self, model: VITS, batch: Batch, i: int, weights: torch.Tensor | None = None) -> torch.Tensor:
        """[n] frames per token of item ``i`` by forced alignment (raises when it cannot);
        ``weights`` [n] share each unit's time (equal shares when None)."""
        from ..text import Tokenizer
        from .forced import forced_align
        from .segments import WordSpan
        from .tokens import token_durations

        if not batch.texts or not batch.texts[i].strip():
            raise ValueError("the batch carries no transcript for it")
        audio = model.config.audio
        n, frames = int(batch.token_lengths[i]), int(batch.spec_lengths[i])
        wav = batch.wav[i].reshape(-1)[: int(batch.wav_lengths[i])].detach().float().cpu().numpy()
        spans = forced_align(wav, audio.sample_rate, batch.texts[i], language=self.language)
        if self.timing == "words":  # the word and pause times; the phone times are dropped
            spans = [WordSpan(w.text, w.start, w.end) for w in spans]
        tokenizer = Tokenizer.from_config(model.config)
        ids = batch.tokens[i, :n].tolist()
        d = token_durations(tokenizer, ids, spans, frames, audio.hop_length / audio.sample_rate, weights, self.min_frames)
        if int(d.sum()) != frames or d.shape[0] != n or bool((d < 0).any()):
            raise ValueError(f"the mapping gave {int(d.sum())} frames over {d.shape[0]} tokens, expected {frames} over {n}")
        return d

    @torch.no_grad()
    def __call__(self, model: VITS, inputs: SourceInputs) -> torch.Tensor:
        """[B, T_x] frames per token: forced alignment, MAS for the utterances it cannot align."""
        batch = inputs.batch
        out = torch.zeros(len(batch), batch.tokens.shape[1], dtype=torch.long)
        failed = []
        if self.uses_reference and inputs.reference is None:
            raise ValueError("ForcedDurations(timing='words') needs SourceInputs.reference (the recipient's "
                             "predicted durations; DurationCache provides them)")
        for i in range(len(batch)):
            n = int(batch.token_lengths[i])
            weights = inputs.reference[i, :n].detach().double().cpu() if self.uses_reference else None
            try:
                out[i, :n] = self._one(model, batch, i, weights)
                self.aligned += 1
            except Exception as err:  # noqa: BLE001 - any failure of the aligner or the mapping falls back
                uid = batch.ids[i] if batch.ids else f"item {i}"
                logger.warning("forced durations: %s not aligned (%s); MAS durations for it", uid, err)
                failed.append(i)
        if failed:
            self.fallbacks += len(failed)
            sub = _select(batch, failed)
            fallback = MASDurations(self.mas_noise_scale)(model, SourceInputs(
                sub, model.encode_text(sub.tokens, sub.token_lengths), model.speaker_vector(sub.speakers),
                [inputs.seeds[i] for i in failed],
            ))  # [b, T_x']
            for j, i in enumerate(failed):
                n = int(batch.token_lengths[i])
                out[i, :n] = fallback[j, :n].cpu()
        return out.to(batch.tokens.device)


def forced_available() -> bool:
    """Whether the forced aligner's package (pocketsphinx, the ``align`` extra) is installed."""
    import importlib.util

    return importlib.util.find_spec("pocketsphinx") is not None


AUTO_THRESHOLD = 0.04
"""Prior-fit gap (nats per frame per channel) from which ``"auto"`` picks forced alignment.

Calibrated on the transplant benchmark's donors with the regrown joe voice
(benchmarks/cadence/source_choice.py, docs/results/cadence_source_choice.json; 12 utterances,
6 references): the recipient itself slowed down (D_cad) -0.003; flite slt slowed (D) 0.160,
flite slt (D_tim) 0.176, flite awb (F_awb) 0.174, festival kal (F_kal) 0.085. The threshold sits
midway between D_cad and the nearest other voice (margins 0.043 and 0.045)."""


@dataclass
class AutoDurations:
    """MAS for a donor that sounds like the recipient, forced alignment for another voice.

    Before its first durations, :meth:`decide` measures the donor's prior-fit gap
    (:func:`~vits_surgery.durations.mas.prior_fit_gap`: how much worse the donor's ``z_p`` fits
    the recipient's text prior than the recipient's own synthesis of the same texts does) on up
    to ``max_utterances`` utterances, and picks ``"mas"`` (:class:`MASDurations`) when the gap is
    below ``threshold``, ``"forced"`` (:class:`ForcedDurations`) otherwise; every batch then goes
    to that source. The decision and the gap are logged. Without pocketsphinx (the ``align``
    extra) it picks ``"mas"`` without measuring, with a warning.

    :class:`~vits_surgery.durations.step.CadenceStep` calls :meth:`decide` on the training data
    before precomputing; a :class:`DurationCache` whose source is still undecided decides on the
    first batch it sees. The choice and its source's settings are part of :meth:`settings`, so
    the two choices never share cache entries. The reference syntheses take the recipient's
    predicted durations (seeded noise), as calibrated; a resumed run measures the gap again with
    the duration predictor it has trained so far, which moves the reference fit little against
    the margin around the threshold (a flipped choice would change the cache key and so the
    targets: pass ``source="mas"`` or ``"forced"`` explicitly to pin it).

    Args:
        threshold: the gap (nats per frame per channel) from which forced alignment is chosen.
        max_utterances: donor utterances measured.
        references: of those, how many the recipient synthesizes for the reference fit.
        mas_noise_scale: posterior noise of the MAS durations (either choice's MAS route).

    Attributes:
        choice: ``"mas"``, ``"forced"``, or None before :meth:`decide`.
        measurement: the :class:`~vits_surgery.durations.mas.PriorFitGap` measured, or None.
        reason: why the choice was made (logged and in :meth:`describe`).
        delegate: the chosen source.
    """

    threshold: float = AUTO_THRESHOLD
    max_utterances: int = 12
    references: int = 6
    mas_noise_scale: float = 1.0
    timing: str = "words"
    choice: str | None = field(default=None, compare=False)
    measurement: Any = field(default=None, compare=False)
    reason: str = field(default="", compare=False)
    delegate: Any = field(default=None, compare=False)
    name: ClassVar[str] = "auto"
    reads: ClassVar[tuple[str, ...]] = ("speaker_embedding", "posterior_encoder", "flow")

    @property
    def decided(self) -> bool:
        """Whether :meth:`decide` has chosen a source."""
        return self.choice is not None

    @property
    def uses_reference(self) -> bool:
        """Whether the chosen source reads the recipient's predicted durations."""
        return bool(getattr(self.delegate, "uses_reference", False))

    def measure(self, model: VITS, batches: Iterable[Batch]):
        """The donor's prior-fit gap on up to ``max_utterances`` utterances of ``batches``."""
        from .mas import prior_fit_gap

        return prior_fit_gap(model, batches, self.max_utterances, self.references)

    def decide(self, model: VITS, batches: Iterable[Batch]) -> str:
        """Choose ``"mas"`` or ``"forced"`` (once; later calls return the choice)."""
        if self.choice is not None:
            return self.choice
        if not forced_available():
            self.reason = "pocketsphinx is not installed"
            logger.warning("duration source auto: pocketsphinx is not installed, so durations come from MAS "
                           "through the recipient's posterior, right only for a donor that sounds like the "
                           "recipient; for another voice reinstall pocketsphinx (a dependency of vits-surgery: "
                           "pip install 'pocketsphinx>=5')")
            return self._choose("mas")
        start = time.perf_counter()
        gap = self.measurement = self.measure(model, batches)
        choice = "mas" if gap.gap < self.threshold else "forced"
        self.reason = (f"prior-fit gap {gap.gap:.3f} nats per frame per channel on {gap.utterances} utterances "
                       f"{'<' if choice == 'mas' else '>='} threshold {self.threshold:g}")
        logger.info("duration source auto: %s (%s: the donor %s; %.1f s)", choice, self.reason,
                    "sounds like the recipient" if choice == "mas" else "is another voice",
                    time.perf_counter() - start)
        return self._choose(choice)

    def _choose(self, choice: str) -> str:
        self.choice = choice
        self.delegate = MASDurations(self.mas_noise_scale) if choice == "mas" else ForcedDurations(
            mas_noise_scale=self.mas_noise_scale, timing=self.timing)
        return choice

    def _chosen(self) -> Any:
        if self.delegate is None:
            raise RuntimeError("duration source auto has not decided yet: call decide(model, batches) first")
        return self.delegate

    def settings(self) -> dict[str, Any]:
        """The choice, the threshold and the chosen source's settings (raises before :meth:`decide`)."""
        delegate = self._chosen()
        return {"choice": self.choice, "threshold": float(self.threshold), "max_utterances": int(self.max_utterances),
                "references": int(self.references), "choice_settings": delegate.settings()}

    def describe(self) -> dict[str, Any]:
        """For the run log: the choice, why, and the measured gap."""
        out: dict[str, Any] = {"choice": self.choice, "threshold": float(self.threshold), "reason": self.reason}
        if self.measurement is not None:
            m = self.measurement
            out.update(gap=m.gap, donor_fit=m.donor, reference_fit=m.reference, utterances=m.utterances,
                       references=m.references)
        return out

    def stats(self) -> dict[str, Any]:
        """The chosen source's counts (the forced source's aligned / fallen-back utterances)."""
        stats = getattr(self.delegate, "stats", None)
        return stats() if callable(stats) else {}

    def __call__(self, model: VITS, inputs: SourceInputs) -> torch.Tensor:
        """[B, T_x] frames per token from the chosen source."""
        return self._chosen()(model, inputs)


#: Duration sources by name (``resolve_source("mas")``).
SOURCES: dict[str, type] = {"auto": AutoDurations, "mas": MASDurations, "forced": ForcedDurations}


def resolve_source(source: str | DurationSource) -> DurationSource:
    """A source object from a name in :data:`SOURCES` or a source object (returned as is)."""
    if isinstance(source, str):
        if source not in SOURCES:
            raise ValueError(f"unknown duration source {source!r} (known: {', '.join(SOURCES)})")
        return SOURCES[source]()
    for attr in ("name", "reads", "settings"):
        if not hasattr(source, attr):
            raise TypeError(f"a duration source needs a {attr!r} attribute (see DurationSource)")
    return source


def predicted_durations(
    model: VITS, text: TextEncoderOutput, g: torch.Tensor | None = None, predictor: torch.nn.Module | None = None
) -> torch.Tensor:
    """[B, T_x] frames per token (not rounded, noise-free, 0 on padding) that ``predictor``
    (default: the model's own duration predictor) gives for ``text``; ``g`` as the model
    conditions its duration predictor (:meth:`~vits_surgery.models.vits.VITS._dp_g`)."""
    predictor = model.duration_predictor if predictor is None else predictor
    logw = predictor.infer(text.hidden, text.mask, g=model._dp_g(g), noise_scale=0.0)  # [B, 1, T_x]
    return (torch.exp(logw) * text.mask)[:, 0]


# ----------------------------------------------------------------------------- entries
@dataclass
class CachedUtterance:
    """One utterance's cached inputs (CPU, fp32).

    Attributes:
        hidden: [H, T_x] text encoder hidden states.
        durations: [T_x] int32 frames per token.
        g: [gin, 1] speaker vector, or None.
    """

    hidden: torch.Tensor
    durations: torch.Tensor
    g: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """For safetensors."""
        out = {"hidden": self.hidden.contiguous(), "durations": self.durations.contiguous()}
        if self.g is not None:
            out["g"] = self.g.contiguous()
        return out


@dataclass
class CadenceInputs:
    """A batch's cached inputs, collated on the model's device.

    Attributes:
        hidden: [B, H, T_x] (zero on padding); x_mask: [B, 1, T_x];
        durations: [B, 1, T_x] float frames per token; g: [B, gin, 1] or None.
    """

    hidden: torch.Tensor
    x_mask: torch.Tensor
    durations: torch.Tensor
    g: torch.Tensor | None


def _sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return f"{flat.dtype}:{tuple(tensor.shape)}:".encode() + flat.view(torch.uint8).numpy().tobytes()


def _select(batch: Batch, idx: list[int]) -> Batch:
    """The items ``idx`` of ``batch`` (the batch itself when all are selected)."""
    if idx == list(range(len(batch))):
        return batch
    sel = torch.tensor(idx, device=batch.tokens.device)
    t_x, t_y = int(batch.token_lengths[sel].max()), int(batch.spec_lengths[sel].max())
    return Batch(
        tokens=batch.tokens[sel, :t_x], token_lengths=batch.token_lengths[sel],
        spec=batch.spec[sel, :, :t_y], spec_lengths=batch.spec_lengths[sel],
        wav=batch.wav[sel], wav_lengths=batch.wav_lengths[sel],
        speakers=batch.speakers[sel] if batch.speakers is not None else None,
        texts=[batch.texts[i] for i in idx] if batch.texts else [],
        ids=[batch.ids[i] for i in idx] if batch.ids else [],
    )


def _check_entry(meta: Mapping[str, str], tensors: Mapping[str, torch.Tensor], key: str, n_tokens: int,
                 with_g: bool) -> None:
    """Raise ValueError when a loaded entry is not the one asked for or not well formed."""
    if meta.get("key") != key or meta.get("version") != str(CACHE_VERSION):
        raise ValueError("its metadata names another key or cache version")
    hidden, durations = tensors.get("hidden"), tensors.get("durations")
    if hidden is None or durations is None:
        raise ValueError("it lacks the 'hidden' or 'durations' tensor")
    if hidden.dim() != 2 or hidden.shape[1] != n_tokens or hidden.dtype != torch.float32:
        raise ValueError(f"hidden has shape {tuple(hidden.shape)} / {hidden.dtype}, expected [H, {n_tokens}] float32")
    if tuple(durations.shape) != (n_tokens,) or durations.dtype != torch.int32 or bool((durations < 0).any()):
        raise ValueError(f"durations has shape {tuple(durations.shape)} / {durations.dtype}, expected [{n_tokens}] int32 >= 0")
    if ("g" in tensors) != with_g:
        raise ValueError("its speaker vector does not match the model's speaker embedding")
    if not bool(torch.isfinite(hidden).all()):
        raise ValueError("hidden holds NaN/inf")


class DurationCache:
    """Per-utterance cadence inputs (text hidden states, ``g``, durations), in memory and on disk.

    Args:
        model: the recipient; its text encoder, speaker embedding and the organs the source
            reads must stay frozen while the cache is used (their weights are hashed once, at
            the first lookup; call :meth:`reset` after changing them).
        source: a name in :data:`SOURCES` (default ``"auto"``) or a :class:`DurationSource`.
        cache_dir: folder of the entries (default :func:`cache_root`).

    Attributes:
        stats: ``computed`` / ``loaded`` / ``corrupt`` entries, ``compute_seconds`` (wall) and
            ``audio_seconds`` (of the computed utterances).
        reference: a frozen copy of the model's duration predictor as it was when the cache was
            made (before any training step), for sources that share time by the recipient's own
            durations (``uses_reference``); its weights are in the key of their entries.
            :meth:`reference_state` / :meth:`load_reference_state` carry it through a checkpoint.
    """

    def __init__(self, model: VITS, source: str | DurationSource = "auto", cache_dir: str | Path | None = None) -> None:
        self.model = model
        self.source = resolve_source(source)
        self.reference = copy.deepcopy(model.duration_predictor).requires_grad_(False).eval()
        self.root = Path(cache_dir) if cache_dir is not None else cache_root()
        self.items: dict[str, CachedUtterance] = {}
        self._index: dict[tuple, list[tuple[float, str]]] = {}
        self._fingerprint: str | None = None
        self.stats: dict[str, float] = dict.fromkeys(
            ("computed", "loaded", "corrupt", "compute_seconds", "audio_seconds"), 0
        )

    @property
    def organs(self) -> tuple[str, ...]:
        """The organs whose weights the entries depend on."""
        return tuple(dict.fromkeys(("text_encoder", "speaker_embedding", *self.source.reads)))

    def settings(self) -> dict[str, Any]:
        """Everything but weights and utterances that the key covers."""
        return {
            "version": CACHE_VERSION,
            "config": hashlib.sha256(self.model.config.to_json().encode()).hexdigest(),
            "source": self.source.name,
            "source_settings": self.source.settings(),
            "precision": "fp32",
        }

    def decide(self, batches: Iterable[Batch]) -> None:
        """Let a source that chooses on the data (``"auto"``) choose now, on ``batches``."""
        decide = getattr(self.source, "decide", None)
        if decide is not None and not self.source.decided:
            decide(self.model, batches)
            self._fingerprint = None

    @property
    def uses_reference(self) -> bool:
        """Whether the source reads :attr:`reference` (so its weights are in the key)."""
        return bool(getattr(self.source, "uses_reference", False))

    def reference_state(self) -> dict[str, torch.Tensor]:
        """The weights of :attr:`reference` (CPU copies), for a checkpoint."""
        return {k: v.detach().cpu().clone() for k, v in self.reference.state_dict().items()}

    def load_reference_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore :attr:`reference` from :meth:`reference_state`: a resumed run keeps the
        targets of the first even when its model was built from a trained checkpoint."""
        self.reference.load_state_dict(dict(state))
        self.reset()

    def fingerprint(self) -> str:
        """sha256 of :meth:`settings` and of the weights of :attr:`organs` (and of
        :attr:`reference` when the source reads it), computed once."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode())
            modules = [(organ, getattr(self.model, organ, None)) for organ in self.organs]
            if self.uses_reference:
                modules.append(("reference_duration_predictor", self.reference))
            for organ, module in modules:
                for name, tensor in sorted(module.state_dict().items()) if module is not None else ():
                    digest.update(f"{organ}.{name}".encode())
                    digest.update(_tensor_bytes(tensor))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def reset(self) -> None:
        """Forget the fingerprint and the in-memory entries (after the hashed weights changed)."""
        self._fingerprint = None
        self.items.clear()
        self._index.clear()

    def key(self, batch: Batch, i: int) -> str:
        """The cache key of item ``i``: fingerprint, token ids, speaker id, spectrogram frames."""
        n, frames = int(batch.token_lengths[i]), int(batch.spec_lengths[i])
        speaker = -1 if batch.speakers is None else int(batch.speakers[i])
        return _sha(
            self.fingerprint().encode(),
            _tensor_bytes(batch.tokens[i, :n].long()),
            str(speaker).encode(),
            _tensor_bytes(batch.spec[i, :, :frames].float()),
        )

    def path(self, key: str) -> Path:
        """The entry's file."""
        return self.root / key[:2] / f"{key}.safetensors"

    # ------------------------------------------------------------------ lookups
    def inputs(self, batch: Batch) -> CadenceInputs:
        """The batch's cached inputs on its device (computing and storing the missing ones)."""
        return self.collate(batch, self.ensure(batch))

    def ensure(self, batch: Batch) -> list[str]:
        """Make every item of ``batch`` available in memory; returns their keys."""
        if not getattr(self.source, "decided", True):  # a source that chooses on the data (auto)
            self.decide([batch])
        keys: list[str | None] = [self._recall(batch, i) for i in range(len(batch))]
        todo = []
        for i, known in enumerate(keys):
            if known is not None:
                continue
            key = keys[i] = self.key(batch, i)
            if key not in self.items:
                item = self._load(key, int(batch.token_lengths[i]))
                if item is None:
                    todo.append(i)
                    continue
                self.items[key] = item
                self.stats["loaded"] += 1
            self._remember(batch, i, key)
        if todo:
            self._compute(batch, todo, [keys[i] for i in todo])
            for i in todo:
                self._remember(batch, i, keys[i])
        return keys

    def collate(self, batch: Batch, keys: list[str]) -> CadenceInputs:
        """Pad the entries ``keys`` (in batch order) to the batch's ``T_x`` on its device."""
        device, t_x = batch.tokens.device, batch.tokens.shape[1]
        items = [self.items[k] for k in keys]
        hidden = torch.zeros(len(items), items[0].hidden.shape[0], t_x)  # [B, H, T_x]
        durations = torch.zeros(len(items), 1, t_x)  # [B, 1, T_x]
        for i, item in enumerate(items):
            n = item.hidden.shape[1]
            hidden[i, :, :n] = item.hidden
            durations[i, 0, :n] = item.durations
        x_mask = length_mask(batch.token_lengths, t_x).to(device)  # [B, 1, T_x]
        g = torch.stack([it.g for it in items]).to(device) if items[0].g is not None else None
        return CadenceInputs(hidden.to(device), x_mask, durations.to(device), g)

    def _probe(self, batch: Batch, i: int) -> tuple:
        """In-memory lookup key: id, speaker, frames and token ids (the audio is checked apart)."""
        n = int(batch.token_lengths[i])
        speaker = -1 if batch.speakers is None else int(batch.speakers[i])
        uid = batch.ids[i] if batch.ids else ""
        return (uid, speaker, int(batch.spec_lengths[i]), batch.tokens[i, :n].cpu().numpy().tobytes())

    @staticmethod
    def _spec_sum(batch: Batch, i: int) -> float:
        return float(batch.spec[i, :, : int(batch.spec_lengths[i])].double().sum())

    def _recall(self, batch: Batch, i: int) -> str | None:
        """An in-memory key for item ``i`` without hashing its audio: same id, speaker, frames and
        tokens, and the same spectrogram sum (to summation-order rounding)."""
        entries = self._index.get(self._probe(batch, i))
        if not entries:
            return None
        total = self._spec_sum(batch, i)
        for seen, key in entries:
            if abs(seen - total) <= _SPEC_SUM_RTOL * max(abs(total), 1e-12) and key in self.items:
                return key
        return None

    def _remember(self, batch: Batch, i: int, key: str) -> None:
        entries = self._index.setdefault(self._probe(batch, i), [])
        if all(k != key for _, k in entries):
            entries.append((self._spec_sum(batch, i), key))

    # ------------------------------------------------------------------ compute and store
    def _compute(self, batch: Batch, idx: list[int], keys: list[str]) -> None:
        """Run the frozen text encoder and the duration source on the items ``idx``; store them."""
        start = time.perf_counter()
        sub, model = _select(batch, idx), self.model
        modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            with torch.no_grad(), torch.autocast(sub.tokens.device.type, enabled=False):
                g = model.speaker_vector(sub.speakers)  # [B, gin, 1] or None
                text = model.encode_text(sub.tokens, sub.token_lengths)
                seeds = [int(key[:15], 16) for key in keys]
                reference = self._reference_durations(text, g) if self.uses_reference else None
                durations = self.source(model, SourceInputs(sub, text, g, seeds, reference))  # [B, T_x]
        finally:
            for module, training in modes.items():
                module.training = training
        for j, key in enumerate(keys):
            n = int(sub.token_lengths[j])
            item = CachedUtterance(
                hidden=text.hidden[j, :, :n].float().cpu().clone(),
                durations=durations[j, :n].to(device="cpu", dtype=torch.int32).clone(),
                g=g[j].float().cpu().clone() if g is not None else None,
            )
            self.items[key] = item
            self._save(key, item)
        audio = model.config.audio
        self.stats["computed"] += len(idx)
        self.stats["audio_seconds"] += float(sub.spec_lengths.sum()) * audio.hop_length / audio.sample_rate
        self.stats["compute_seconds"] += time.perf_counter() - start

    def _reference_durations(self, text: TextEncoderOutput, g: torch.Tensor | None) -> torch.Tensor:
        """[B, T_x] frames per token predicted by :attr:`reference` without noise (0 on padding)."""
        return predicted_durations(self.model, text, g, self.reference.to(text.hidden.device))

    def _load(self, key: str, n_tokens: int) -> CachedUtterance | None:
        """The entry on disk, or None when absent; a broken entry is reported and ignored."""
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no iterator
            _check_entry(meta, tensors, key, n_tokens, getattr(self.model, "speaker_embedding", None) is not None)
        except Exception as err:  # noqa: BLE001 - any unreadable entry is recomputed
            self.stats["corrupt"] += 1
            logger.warning("cadence cache: entry %s is unreadable or inconsistent (%s); recomputing it", path, err)
            return None
        return CachedUtterance(tensors["hidden"], tensors["durations"], tensors.get("g"))

    def _save(self, key: str, item: CachedUtterance) -> None:
        """Atomic write (temporary file + rename); a failure leaves the entry in memory only."""
        from safetensors.torch import save

        path = self.path(key)
        meta = {"key": key, "version": str(CACHE_VERSION), "source": self.source.name}
        data = save(item.tensors(), metadata=meta)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: f.write(data), durable=False)
        except OSError as err:
            logger.warning("cadence cache: could not write %s (%s); the entry stays in memory only", path, err)
