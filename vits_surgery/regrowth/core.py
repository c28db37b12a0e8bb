"""Organ regrowth: train the organs an inference-only voice lacks, from the voice itself.

An inference graph (every Piper ONNX voice, released generator-only checkpoints) has no
posterior encoder, no posterior flows of the stochastic duration predictor (nor its first
ConvFlow, which inference skips) and no discriminator, yet surgery needs them. :func:`regrow`
re-creates them and trains only them, everything else frozen, on speech the voice itself
synthesizes, where teacher forcing is exact: the latent ``z`` fed to the decoder and the
integer durations of every utterance are known (:mod:`~vits_surgery.surgery.regrow_data`).
The loops are in :mod:`~vits_surgery.surgery.regrow_fit`:

- ``posterior_encoder``: Gaussian NLL of the teacher ``z`` given the spectrogram of the
  synthesized audio, with a floor on ``logs_q`` (the teacher ``z`` is nearly a function of
  the audio: without it the posterior would collapse and later fine-tuning would start with
  a huge KL);
- ``duration_posterior`` (``duration_predictor.post_*`` and ``duration_predictor.flows.1``):
  the SDP NLL of the teacher durations given the frozen text hidden states;
- ``discriminator``: LSGAN, real = synthesized segments, fake = the decoder on the regrown
  posterior's sample of ``z`` for the same segments.

Results are cached (:func:`cache_root`) under a fingerprint of the weights the regrowth
reads and of its settings, so a second call only loads the regrown tensors.

Example:
    >>> model, report = vits_surgery.load("en_US-joe-medium.onnx", return_report=True)  # doctest: +SKIP
    >>> result = vits_surgery.regrow(model, report=report)  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models.vits import VITS
from .freeze import apply_plan, release_plan
from .plan import SurgeryPlan
from .regrow_data import (
    Utterance,
    default_texts,
    duration_recovery,
    heldout_metrics,
    synthesize_utterances,
    tokenize_texts,
)
from .regrow_fit import FITTERS, FitOptions, resolve_precision, sdp_nll_per_token

__all__ = [
    "REGROWABLE",
    "DEFAULT_STEPS",
    "DEFAULT_LR",
    "RegrowReport",
    "Utterance",
    "regrow",
    "synthesize_utterances",
    "duration_recovery",
    "organs_from_report",
    "default_texts",
    "cache_root",
]

logger = logging.getLogger(__name__)

#: Regrowable organ -> the module paths it re-creates and trains.
REGROWABLE: dict[str, tuple[str, ...]] = {
    "posterior_encoder": ("posterior_encoder",),
    "duration_posterior": tuple(
        f"duration_predictor.{n}" for n in ("post_pre", "post_proj", "post_convs", "post_flows", "flows.1")
    ),
    "discriminator": ("discriminator",),
}
_ORGAN_ALIASES = {"enc_q": "posterior_encoder", "duration_predictor": "duration_posterior",
                  "dp": "duration_posterior", "disc": "discriminator", "net_d": "discriminator"}

#: Default optimizer steps per organ (a joe-sized voice on a CPU; docs/benchmarks.md).
DEFAULT_STEPS = {"posterior_encoder": 400, "duration_posterior": 300, "discriminator": 100}
#: Default AdamW learning rates per organ.
DEFAULT_LR = {"posterior_encoder": 3e-3, "duration_posterior": 1e-3, "discriminator": 2e-4}
DEFAULT_N_UTTERANCES = 120
HELDOUT_FRACTION = 0.1
"""Held-out utterances per training utterance (at least 2) for the recovery metric."""
LOG_STD_FLOOR = math.log(0.1)
"""Default floor of the regrown posterior's ``logs_q``."""


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
        duration_recovery: fraction of held-out phonemes whose MAS duration (regrown
            posterior) is within one frame of the teacher's; None if not measured.
        duration_recovery_before: the same with the posterior encoder before regrowth.
        metrics: held-out checks: ``recovery`` / ``recovery_mean`` (posterior sample / mean),
            ``kl`` (the VITS KL term fine-tuning would start from), ``posterior_log_std``
            (mean ``logs_q``), ``sdp_nll_before`` / ``sdp_nll`` (SDP NLL per token).
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
            lines.append(f"  duration recovery (+-1 frame): {self.duration_recovery:.1%}{before}")
        shown = {k: v for k, v in self.metrics.items() if k != "recovery"}
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


def _fingerprint(model: VITS, organs: Sequence[str], settings: Mapping[str, Any]) -> str:
    """sha256 of the tensors the regrowth reads (the inference path, plus the posterior
    encoder when only the discriminator regrows) and of the settings."""
    skip = [p for o in REGROWABLE for p in REGROWABLE[o]]
    if "discriminator" in organs and "posterior_encoder" not in organs:
        skip.remove("posterior_encoder")
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if _under(key, skip):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
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
    from safetensors.torch import save_file

    state = model.state_dict()
    tensors = {k: state[k].detach().cpu().contiguous().clone() for k in _regrown_keys(model, organs)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"regrow_report": json.dumps(report.to_dict())})
    os.replace(tmp, path)


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


def _settings(model: VITS, organs, steps, lrs, n_train: int, texts: Sequence[str], generator, opts) -> dict:
    return {
        "version": 2,  # 2: the discriminator pool sized to its steps
        "organs": list(organs),
        "steps": steps,
        "lr": lrs,
        "n_utterances": n_train,
        "n_heldout": len(texts) - n_train,
        "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        "generator": hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest(),
        "config": hashlib.sha256(model.config.to_json().encode()).hexdigest(),
        **opts,
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


def _train_organs(model: VITS, organs, steps, lrs, train, opts: FitOptions, generator, result: RegrowReport) -> None:
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


def regrow(
    model: VITS,
    organs: Sequence[str] | str | None = None,
    n_utterances: int = DEFAULT_N_UTTERANCES,
    steps: int | Mapping[str, int] | None = None,
    batch_size: int = 8,
    lr: float | Mapping[str, float] | None = None,
    cache_dir: str | Path | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    *,
    texts: Sequence[str] | None = None,
    report: Any = None,
    n_heldout: int | None = None,
    crop_frames: int = 64,
    log_std_floor: float = LOG_STD_FLOOR,
    noise_scale: float = 0.667,
    noise_scale_w: float = 0.8,
    use_cache: bool = True,
    align_weight: float = 0.0,
    align_steps: int = 0,
    align_lr_factor: float = 1 / 3,
    align_temperature: float = 1.0,
    align_log_std: str = "nll",
    kl_weight: float = 0.0,
    prior_weight: float = 0.0,
    precision: str = "auto",
    compile: bool = False,
    flow_precision: str = "fp32",
) -> RegrowReport:
    """Re-create and train the organs an inference-only voice lacks; everything else frozen.

    Args:
        model: the voice (modified in place; left in eval mode, ``requires_grad`` as it was;
            a surgery plan applied before is released).
        organs: among ``posterior_encoder``, ``duration_posterior`` (SDP ``post_*`` and
            ``flows.1``), ``discriminator``; default: those ``report`` lists as created, or all.
        n_utterances: synthesized training utterances (plus ``n_heldout`` for evaluation).
        steps: optimizer steps, one number or per organ (default :data:`DEFAULT_STEPS`).
        batch_size: crops / sequences / segments per step.
        lr: AdamW learning rate, one number or per organ (default :data:`DEFAULT_LR`).
        cache_dir: cache folder (default :func:`cache_root`).
        generator: RNG of all draws (default: seeded with 0, so results are reproducible).
        progress: tqdm bars.
        texts: sentences to synthesize (default :func:`default_texts`); the first
            ``n_utterances`` train, the next ``n_heldout`` evaluate.
        report: the :class:`~vits_surgery.convert.report.ConversionReport` of the load.
        n_heldout: evaluation utterances (default: a tenth of ``n_utterances``, at least 2).
        crop_frames: spectrogram frames per posterior-encoder crop.
        log_std_floor: hinge floor of the posterior ``logs_q``.
        noise_scale, noise_scale_w: synthesis noise.
        use_cache: look up and store the result in the cache.
        align_weight: weight of the alignment loss added to the posterior encoder's loss
            (:func:`~vits_surgery.surgery.regrow_fit.alignment_loss`).
        align_steps: 0 = that loss at every posterior step; > 0 = only in a final phase of
            this many extra steps after the main fit (at ``align_lr_factor`` times its learning
            rate), which is where it paid off on the joe voice (docs/benchmarks.md).
        align_lr_factor: learning rate of the final alignment phase relative to the main fit's.
        align_temperature: divisor of the alignment logits (the prior log-likelihood summed
            over channels; 1 = the scale MAS compares tokens on).
        align_log_std: what sets the posterior's log-std in the alignment steps: "nll" (the
            teacher-z likelihood, as in the main fit) or "alignment" (the alignment loss on
            the posterior sample, the sample MAS sees in training; the floor still holds).
        kl_weight: weight of the VITS KL term (teacher alignment) added to the posterior
            encoder's loss; 0 (the default) fits the teacher z alone, which recovered the
            teacher durations as well or better at half the cost per step on the joe voice.
        prior_weight: weight of the whitened prior-path loss added to the posterior
            encoder's loss (:func:`~vits_surgery.surgery.regrow_fit.whitened_prior_loss`).
        precision: "auto" (default: bfloat16 autocast of the posterior encoder's WaveNet stack
            where the CPU has native bfloat16 units, else float32), "fp32" or "bf16".
        compile: ``torch.compile`` the posterior encoder's WaveNet stack while it trains.
        flow_precision: dtype of the frozen flow the KL, alignment and prior terms run the
            posterior through: "fp32" (default, the model's flow), "bf16" (a frozen bfloat16
            copy, weight norm folded; the model's flow is untouched; measured no faster on the
            joe voice) or "auto" (bf16 where ``precision="auto"`` would pick it).

    Returns:
        :class:`RegrowReport` (losses, times, duration recovery on held-out utterances).
    """
    start = time.perf_counter()
    organs = _resolve_organs(model, organs, report)
    steps_map = _per_organ(steps, DEFAULT_STEPS, organs, "steps")
    lr_map = _per_organ(lr, DEFAULT_LR, organs, "lr")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    n_heldout = max(2, round(HELDOUT_FRACTION * n_utterances)) if n_heldout is None else n_heldout
    all_texts = _texts(texts, n_utterances, n_heldout)
    device = next(model.parameters()).device
    opts = FitOptions(batch_size=batch_size, crop_frames=crop_frames, log_std_floor=log_std_floor,
                      align_weight=align_weight, align_steps=align_steps, align_lr_factor=align_lr_factor,
                      align_temperature=align_temperature, align_log_std=align_log_std,
                      kl_weight=kl_weight, prior_weight=prior_weight,
                      precision=resolve_precision(precision, device), compile=compile,
                      flow_precision=resolve_precision(flow_precision, device), progress=progress)
    noise = {"noise_scale": noise_scale, "noise_scale_w": noise_scale_w}
    settings = _settings(model, organs, steps_map, lr_map, n_utterances, all_texts, generator,
                         {**asdict(opts), **noise, "progress": None})
    path = Path(cache_dir) if cache_dir is not None else cache_root()
    path = path / f"{_fingerprint(model, organs, settings)}.safetensors"
    if use_cache and path.is_file() and (hit := _load_cached(model, path, organs)) is not None:
        hit.wall_time = time.perf_counter() - start
        logger.info("regrow: loaded %s from the cache %s", ", ".join(organs), path)
        return hit
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    try:
        result = _regrow_uncached(model, organs, steps_map, lr_map, all_texts, n_utterances, opts, noise, generator)
    finally:
        release_plan(model)
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
        model.train(was_training)
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


def _regrow_uncached(model: VITS, organs, steps, lrs, texts, n_train: int, opts: FitOptions, noise, generator):
    result = RegrowReport(organs=tuple(organs))
    model.eval()
    with _timed(result, "synthesis"):
        tokens = tokenize_texts(model, texts)
        utts = synthesize_utterances(model, tokens, generator=generator, progress=opts.progress, **noise)
    train, heldout = utts[:n_train], utts[n_train:]
    result.n_utterances, result.n_heldout = len(train), len(heldout)
    if "posterior_encoder" in organs and heldout:
        result.duration_recovery_before = duration_recovery(model, heldout, generator=generator)
    if "duration_posterior" in organs and heldout:
        with torch.no_grad():
            result.metrics["sdp_nll_before"] = float(sdp_nll_per_token(model, heldout, generator=generator))
    _reinit(model, organs, int(torch.randint(2**62, (1,), generator=generator)))
    _train_organs(model, organs, steps, lrs, train, opts, generator, result)
    with _timed(result, "evaluation"):
        if heldout:
            result.metrics.update(heldout_metrics(model, heldout, generator=generator))
            result.duration_recovery = result.metrics["recovery"]
            if "duration_posterior" in organs:
                with torch.no_grad():
                    result.metrics["sdp_nll"] = float(sdp_nll_per_token(model, heldout, generator=generator))
    return result
