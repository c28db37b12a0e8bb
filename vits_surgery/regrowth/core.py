"""Organ regrowth: train the organs an inference-only voice lacks, from the voice itself.

An inference graph (every Piper ONNX voice, released generator-only checkpoints) has no
posterior encoder, no posterior flows of the stochastic duration predictor (nor its first
ConvFlow, which inference skips) and no discriminator, yet surgery needs them. :func:`regrow`
re-creates them and trains only them, everything else frozen, on speech the voice itself
synthesizes, where teacher forcing is exact: the latent ``z`` fed to the decoder and the
integer durations of every utterance are known (:mod:`~vits_surgery.regrowth.teacher`).
The loops are in :mod:`~vits_surgery.regrowth.fit`, the held-out checks in
:mod:`~vits_surgery.regrowth.metrics`:

- ``posterior_encoder``: Gaussian NLL of the teacher ``z`` given the spectrogram of the
  synthesized audio, with a floor on ``logs_q`` (the teacher ``z`` is nearly a function of
  the audio: without it the posterior would collapse and later fine-tuning would start with
  a huge KL);
- ``duration_posterior`` (``duration_predictor.post_*`` and ``duration_predictor.flows.1``):
  the SDP NLL of the teacher durations given the frozen text hidden states;
- ``discriminator``: LSGAN, real = synthesized segments, fake = the decoder on the regrown
  posterior's sample of ``z`` for the same segments.

Results are cached (:func:`cache_root`) under a fingerprint of the weights the regrowth
reads, the token ids it synthesizes, its options, the library and torch versions and the
device, so a second call only loads the regrown tensors.

Example:
    >>> model, report = vits_surgery.load("en_US-joe-medium.onnx", return_report=True)  # doctest: +SKIP
    >>> result = vits_surgery.regrow(model, report=report, options=RegrowOptions.thorough())  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._deprecated import REMOVED_IN
from ..models.vits import VITS
from ..surgery.freeze import apply_plan, preserved, release_plan
from ..surgery.plan import SurgeryPlan
from .fit import FITTERS
from .metrics import heldout_metrics, sdp_nll_per_token
from .options import DEFAULT_LR, DEFAULT_STEPS, REGROWABLE, RegrowOptions
from .teacher import default_texts, synthesize_utterances, tokenize_texts

__all__ = [
    "REGROWABLE",
    "DEFAULT_STEPS",
    "DEFAULT_LR",
    "RegrowOptions",
    "RegrowReport",
    "regrow",
    "organs_from_report",
    "cache_root",
]

logger = logging.getLogger(__name__)

_ORGAN_ALIASES = {"enc_q": "posterior_encoder", "duration_predictor": "duration_posterior",
                  "dp": "duration_posterior", "disc": "discriminator", "net_d": "discriminator"}
#: Bumped when what a cache entry holds changes (3: phoneme-token metrics, versions and device in the key).
CACHE_VERSION = 3


@dataclass
class RegrowReport:
    """What :func:`regrow` did.

    Attributes:
        organs: regrown organs (keys of :data:`REGROWABLE`).
        steps: optimizer steps per organ.
        losses: organ -> {"first", "last", "min", "max"} of its training loss (means over
            the first / last tenth of the steps).
        curves: organ -> loss per step.
        seconds: wall time of "synthesis", each organ and "evaluation".
        cpu_seconds: CPU time of the process (all threads) for the same parts; on a shared
            machine this is the steadier measure.
        wall_time: total seconds of the call (the cache lookup only, on a hit).
        duration_recovery: fraction of held-out phoneme tokens (blank, BOS and EOS left out)
            whose MAS duration (regrown posterior, a sample as in training) is within one frame
            of the teacher's; None if not measured.
        duration_recovery_before: the same with the posterior encoder before regrowth.
        metrics: held-out checks (:func:`~vits_surgery.regrowth.metrics.heldout_metrics`):
            ``recovery_phonemes`` / ``recovery_all_tokens`` (posterior sample),
            ``recovery_mean_phonemes`` / ``recovery_mean_all_tokens`` (posterior mean), ``kl``
            (the VITS KL term fine-tuning would start from), ``posterior_log_std`` (mean
            ``logs_q``), ``sdp_nll_before`` / ``sdp_nll`` (SDP NLL per token).
        n_utterances: training utterances; n_heldout: evaluation utterances.
        settings: everything the cache key covers.
        cached: loaded from the cache; cache_path: the cache file.
    """

    organs: tuple[str, ...]
    steps: dict[str, int] = field(default_factory=dict)
    losses: dict[str, dict[str, float]] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    wall_time: float = 0.0
    duration_recovery: float | None = None
    duration_recovery_before: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    n_utterances: int = 0
    n_heldout: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    cache_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["organs"] = list(self.organs)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegrowReport:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["organs"] = tuple(data.get("organs", ()))
        return cls(**data)

    def summary(self) -> str:
        """A few lines: organs, times, losses, recovery."""
        lines = [f"regrew {', '.join(self.organs)} in {self.wall_time:.1f} s" + (" (cache hit)" if self.cached else "")]
        for organ in self.organs:
            loss = self.losses.get(organ, {})
            lines.append(
                f"  {organ}: {self.steps.get(organ, 0)} steps, {self.seconds.get(organ, 0.0):.1f} s, "
                f"loss {loss.get('first', float('nan')):.3f} -> {loss.get('last', float('nan')):.3f}"
            )
        if self.duration_recovery is not None:
            before = "" if self.duration_recovery_before is None else f" (before: {self.duration_recovery_before:.1%})"
            lines.append(f"  duration recovery, phoneme tokens (+-1 frame): {self.duration_recovery:.1%}{before}")
        shown = {k: v for k, v in self.metrics.items() if k != "recovery_phonemes"}
        if shown:
            lines.append("  held-out: " + ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))
        return "\n".join(lines)


# ----------------------------------------------------------------------------- organs
def _canonical_organ(name: str) -> str:
    organ = _ORGAN_ALIASES.get(name, name)
    if organ not in REGROWABLE:
        raise ValueError(f"cannot regrow {name!r}: choose from {', '.join(REGROWABLE)}")
    return organ


def organs_from_report(report: Any) -> tuple[str, ...]:
    """The regrowable organs whose tensors a :class:`ConversionReport` lists as created."""
    found = set()
    for key, _ in report.created:
        for organ, paths in REGROWABLE.items():
            if any(key.startswith(p + ".") for p in paths):
                found.add(organ)
    return tuple(o for o in REGROWABLE if o in found)


def _resolve_organs(model: VITS, organs: Sequence[str] | str | None, report: Any) -> tuple[str, ...]:
    if organs is None:
        chosen = organs_from_report(report) if report is not None else tuple(REGROWABLE)
    else:
        chosen = tuple(dict.fromkeys(_canonical_organ(o) for o in ([organs] if isinstance(organs, str) else organs)))
    has_sdp = hasattr(model.duration_predictor, "post_flows")
    if "duration_posterior" in chosen and not has_sdp:
        if organs is not None:
            raise ValueError("duration_posterior needs a stochastic duration predictor; this model's is deterministic")
        chosen = tuple(o for o in chosen if o != "duration_posterior")
    if "discriminator" in chosen and model.discriminator is None:
        if organs is not None:
            raise ValueError("cannot regrow the discriminator: the model was built without one")
        chosen = tuple(o for o in chosen if o != "discriminator")
    if not chosen:
        raise ValueError("nothing to regrow: the model has every regrowable organ or none was chosen")
    return tuple(o for o in REGROWABLE if o in chosen)


# ----------------------------------------------------------------------------- cache
def cache_root() -> Path:
    """``$VITS_SURGERY_CACHE/regrow`` (default ``~/.cache/vits_surgery/regrow``)."""
    return Path(os.environ.get("VITS_SURGERY_CACHE") or "~/.cache/vits_surgery").expanduser() / "regrow"


def _under(key: str, paths: Sequence[str]) -> bool:
    return any(key.startswith(p + ".") for p in paths)


def _regrown_keys(model: VITS, organs: Sequence[str]) -> list[str]:
    paths = [p for o in organs for p in REGROWABLE[o]]
    return [k for k in model.state_dict() if _under(k, paths)]


def _read_paths(model: VITS, organs: Sequence[str]) -> list[str]:
    """Module paths whose weights a regrowth of ``organs`` never reads: the regrown organs
    (re-initialised), the discriminator unless it regrows (nothing else reads it) and the
    duration posterior unless it regrows (inference skips it; its metric runs only then). The
    posterior encoder, when it does not regrow, is read: by the held-out metrics and the
    discriminator's fakes."""
    skip = [p for o in organs for p in REGROWABLE[o]]
    for organ in ("discriminator", "duration_posterior"):
        if organ not in organs:
            skip += list(REGROWABLE[organ])
    return skip


def _fingerprint(model: VITS, organs: Sequence[str], settings: Mapping[str, Any]) -> str:
    """sha256 of the tensors the regrowth reads (see :func:`_read_paths`) and of the settings."""
    skip = _read_paths(model, organs)
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if _under(key, skip):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _load_cached(model: VITS, path: Path, organs: Sequence[str]) -> RegrowReport | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["regrow_report"])
        tensors = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - a broken cache entry is a miss, not an error
        logger.warning("regrow: ignoring unreadable cache entry %s (%s)", path, err)
        return None
    state = model.state_dict()
    if set(tensors) != set(_regrown_keys(model, organs)) or any(
        tensors[k].shape != state[k].shape for k in tensors
    ):
        logger.warning("regrow: cache entry %s does not match this model's organs; regrowing", path)
        return None
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value)
    report = RegrowReport.from_dict(meta)
    report.cached, report.cache_path = True, str(path)
    return report


def _save_cached(model: VITS, path: Path, organs: Sequence[str], report: RegrowReport) -> None:
    from safetensors.torch import save

    from .._files import atomic_write

    state = model.state_dict()
    tensors = {k: state[k].detach().cpu().contiguous().clone() for k in _regrown_keys(model, organs)}
    blob = save(tensors, metadata={"regrow_report": json.dumps(report.to_dict())})
    atomic_write(path, lambda f: f.write(blob), durable=False)


# ----------------------------------------------------------------------------- regrow
def _per_organ(value: Any, defaults: Mapping[str, Any], organs: Sequence[str], what: str) -> dict[str, Any]:
    if value is None:
        return {o: defaults[o] for o in organs}
    if isinstance(value, Mapping):
        unknown = [k for k in value if _canonical_organ(k) not in organs]
        if unknown:
            raise ValueError(f"{what} names organs that are not regrown: {unknown} (regrowing {list(organs)})")
        given = {_canonical_organ(k): v for k, v in value.items()}
        return {o: given.get(o, defaults[o]) for o in organs}
    return {o: value for o in organs}


@torch.no_grad()
def _reinit(model: VITS, organs: Sequence[str], seed: int) -> None:
    """Fresh, seeded weights for the organs (VITS's own initialisation)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = VITS(model.config, with_discriminator="discriminator" in organs).state_dict()
    state = model.state_dict()
    for key in _regrown_keys(model, organs):
        state[key].copy_(fresh[key])


def _settings(model: VITS, organs, steps, lrs, tokens: Sequence[Sequence[int]], n_train: int, generator,
              opts: RegrowOptions, device: torch.device) -> dict:
    from .. import __version__

    return {
        "version": CACHE_VERSION,
        "library": __version__,
        "torch": torch.__version__,
        "device": str(device),
        "organs": list(organs),
        "steps": steps,
        "lr": lrs,
        "n_utterances": n_train,
        "n_heldout": len(tokens) - n_train,
        "tokens": hashlib.sha256(json.dumps([list(map(int, t)) for t in tokens]).encode()).hexdigest(),
        "generator": hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest(),
        "config": hashlib.sha256(model.config.to_json().encode()).hexdigest(),
        **{k: v for k, v in opts.cache_settings().items() if k not in ("steps", "lr", "n_utterances", "n_heldout")},
    }


def _texts(texts: Sequence[str] | None, n_train: int, n_heldout: int) -> list[str]:
    if texts is None:
        return default_texts(n_train + n_heldout)
    texts = [t for t in texts if t and t.strip()]
    if len(texts) < n_train + n_heldout:
        raise ValueError(
            f"regrow needs {n_train + n_heldout} texts ({n_train} to train, {n_heldout} held out), got {len(texts)}"
        )
    return texts[: n_train + n_heldout]


def _train_organs(model: VITS, organs, steps, lrs, train, opts: RegrowOptions, generator, result: RegrowReport) -> None:
    for organ in organs:
        if steps[organ] <= 0:
            continue
        is_disc = organ == "discriminator"
        plan = SurgeryPlan(train=REGROWABLE[organ], train_discriminator=is_disc, name=f"regrow:{organ}")
        with _timed(result, organ):
            params = [p for group in apply_plan(model, plan).values() for p in group]
            model.train()
            curve = FITTERS[organ](model, train, params, steps[organ], lrs[organ], opts, generator)
            model.eval()
        tenth = max(1, len(curve) // 10)
        result.curves[organ] = curve
        result.losses[organ] = {"first": sum(curve[:tenth]) / tenth, "last": sum(curve[-tenth:]) / tenth,
                                "min": min(curve), "max": max(curve)}
        result.steps[organ] = len(curve)
        logger.info("regrow: %s: %d steps in %.1f s, loss %.4f -> %.4f", organ, len(curve),
                    result.seconds[organ], result.losses[organ]["first"], result.losses[organ]["last"])


#: regrow() keywords that became RegrowOptions fields (deprecated: pass options=).
_OPTION_KEYWORDS = ("n_utterances", "steps", "batch_size", "lr", "n_heldout", "crop_frames", "log_std_floor",
                    "noise_scale", "noise_scale_w", "align_weight", "align_steps", "align_lr_factor",
                    "align_log_std", "precision")
#: regrow() keywords of experiments that lost (now in benchmarks/regrow_terms.py) -> their old default.
_REMOVED_KEYWORDS = {"kl_weight": 0.0, "prior_weight": 0.0, "align_temperature": 1.0, "compile": False,
                     "flow_precision": "fp32"}


def _options_from(options: RegrowOptions | None, legacy: Mapping[str, Any]) -> RegrowOptions:
    """``options`` with the deprecated keywords of :func:`regrow` folded in (each warns once)."""
    options = options if options is not None else RegrowOptions()
    changes = {}
    for key, value in legacy.items():
        if key in _REMOVED_KEYWORDS:
            if value != _REMOVED_KEYWORDS[key]:
                raise TypeError(
                    f"regrow({key}=...) was removed: it is an experiment, reproducible through "
                    "RegrowOptions(extra_terms=...) with the terms in benchmarks/regrow_terms.py"
                )
            warnings.warn(f"regrow({key}=...) is ignored and will be an error in vits_surgery {REMOVED_IN}",
                          DeprecationWarning, stacklevel=3)
        elif key in _OPTION_KEYWORDS:
            warnings.warn(f"regrow({key}=...) is deprecated and will be removed in vits_surgery {REMOVED_IN}; "
                          f"use regrow(..., options=RegrowOptions({key}=...))", DeprecationWarning, stacklevel=3)
            changes[key] = value
        else:
            raise TypeError(f"regrow() got an unexpected keyword argument {key!r}")
    return options.replace(**changes) if changes else options


def regrow(
    model: VITS,
    organs: Sequence[str] | str | None = None,
    options: RegrowOptions | None = None,
    *,
    texts: Sequence[str] | None = None,
    report: Any = None,
    generator: torch.Generator | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool | None = None,
    **deprecated: Any,
) -> RegrowReport:
    """Re-create and train the organs an inference-only voice lacks; everything else frozen.

    Args:
        model: the voice (its regrown organs change in place; train/eval flags,
            ``requires_grad`` and a surgery plan applied before are as they were).
        organs: among ``posterior_encoder``, ``duration_posterior`` (SDP ``post_*`` and
            ``flows.1``), ``discriminator``; default: those ``report`` lists as created, or all.
        options: what the regrowth does (:class:`RegrowOptions`; default
            :meth:`RegrowOptions.quick`, :meth:`RegrowOptions.thorough` for the longest recipe).
        texts: sentences to synthesize (default :func:`~vits_surgery.regrowth.teacher.default_texts`);
            the first ``options.n_utterances`` train, the next ``options.n_heldout`` evaluate.
        report: the :class:`~vits_surgery.convert.report.ConversionReport` of the load.
        generator: RNG of all draws (default: seeded with 0, so results are reproducible).
        cache_dir: cache folder (default :func:`cache_root`).
        use_cache: look up and store the result in the cache.
        progress: tqdm bars (overrides ``options.progress``).
        **deprecated: the keywords that are now :class:`RegrowOptions` fields (``n_utterances``,
            ``steps``, ``lr``, ...) still work for one release, with a ``DeprecationWarning``.

    Returns:
        :class:`RegrowReport` (losses, times, duration recovery on held-out utterances).
    """
    start = time.perf_counter()
    opts = _options_from(options, deprecated)
    if progress is not None:
        opts = opts.replace(progress=progress)
    organs = _resolve_organs(model, organs, report)
    steps_map = _per_organ(opts.steps, DEFAULT_STEPS, organs, "steps")
    lr_map = _per_organ(opts.lr, DEFAULT_LR, organs, "lr")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    n_train, n_heldout = opts.n_utterances, opts.heldout()
    tokens = tokenize_texts(model, _texts(texts, n_train, n_heldout))
    device = next(model.parameters()).device
    settings = _settings(model, organs, steps_map, lr_map, tokens, n_train, generator, opts, device)
    path = Path(cache_dir) if cache_dir is not None else cache_root()
    path = path / f"{_fingerprint(model, organs, settings)}.safetensors"
    if use_cache and path.is_file() and (hit := _load_cached(model, path, organs)) is not None:
        hit.wall_time = time.perf_counter() - start
        logger.info("regrow: loaded %s from the cache %s", ", ".join(organs), path)
        return hit
    with preserved(model):
        try:
            result = _regrow_uncached(model, organs, steps_map, lr_map, tokens, n_train, opts, generator)
        finally:
            release_plan(model)
    result.settings = settings
    result.wall_time = time.perf_counter() - start
    if use_cache:
        _save_cached(model, path, organs, result)
        result.cache_path = str(path)
    logger.info("%s", result.summary())
    return result


@contextlib.contextmanager
def _timed(result: RegrowReport, name: str) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    result.seconds[name] = time.perf_counter() - wall
    result.cpu_seconds[name] = time.process_time() - cpu


def _regrow_uncached(model: VITS, organs, steps, lrs, tokens, n_train: int, opts: RegrowOptions, generator):
    result = RegrowReport(organs=tuple(organs))
    model.eval()
    with _timed(result, "synthesis"):
        utts = synthesize_utterances(model, tokens, noise_scale=opts.noise_scale, noise_scale_w=opts.noise_scale_w,
                                     generator=generator, progress=opts.progress)
    train, heldout = utts[:n_train], utts[n_train:]
    result.n_utterances, result.n_heldout = len(train), len(heldout)
    if "posterior_encoder" in organs and heldout:
        result.duration_recovery_before = heldout_metrics(model, heldout, generator=generator)["recovery_phonemes"]
    if "duration_posterior" in organs and heldout:
        with torch.no_grad():
            result.metrics["sdp_nll_before"] = float(sdp_nll_per_token(model, heldout, generator=generator))
    _reinit(model, organs, int(torch.randint(2**62, (1,), generator=generator)))
    _train_organs(model, organs, steps, lrs, train, opts, generator, result)
    with _timed(result, "evaluation"):
        if heldout:
            result.metrics.update(heldout_metrics(model, heldout, generator=generator))
            result.duration_recovery = result.metrics["recovery_phonemes"]
            if "duration_posterior" in organs:
                with torch.no_grad():
                    result.metrics["sdp_nll"] = float(sdp_nll_per_token(model, heldout, generator=generator))
    return result
