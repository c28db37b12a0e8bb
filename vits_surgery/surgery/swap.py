"""Organ swap and blend between compatible voices.

``swap(recipient, donor, ["duration_predictor"])`` returns a new model: the recipient with the
donor's duration predictor; ``blend(a, b, "decoder", 0.3)`` returns ``a`` whose decoder tensors
are ``lerp(a, b, 0.3)`` (every stored tensor, so for weight-normed layers ``g`` and ``v`` are
interpolated separately; the ends are exact). The inputs are never modified.

Before touching anything, :func:`compatibility_problems` lists everything that does not fit,
and one :class:`IncompatibleVoicesError` carries the whole list:

- the audio frame grid: sample rate and hop length (durations, latents and the decoder all
  count frames of ``hop / sample_rate`` seconds);
- each tensor of the selected organs: present in both, same shape;
- the selected organs' config slices (activation slopes, layouts and other fields that shapes
  do not show; dropout rates are ignored);
- the text front end (symbol table, Piper phoneme map, blank and BOS/EOS handling, phonemes)
  when the text encoder is swapped: token ids must mean the same symbols;
- the speaker setup (``n_speakers``, ``gin_channels``) when a speaker-conditioned organ is
  swapped;
- LoRA adapters that are not merged in a selected organ of either voice.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence

import torch
from torch import nn

from .lora import is_lora_key, lora_layers, lora_state
from .registry import ComponentRegistry

__all__ = ["IncompatibleVoicesError", "compatibility_problems", "swap", "blend"]

logger = logging.getLogger(__name__)

_SPEAKER_CONDITIONED = ("posterior_encoder", "flow", "decoder", "duration_predictor", "speaker_embedding")
_TEXT_FIELDS = ("style", "add_blank", "pad", "blank", "bos", "eos", "use_bos_eos", "use_phonemes", "phoneme_language")
_MAX_LISTED = 12
_RECORD_ATTR = "_vits_surgery_patch_record"


class IncompatibleVoicesError(ValueError):
    """Two voices do not fit for a swap or blend; ``problems`` lists every reason."""

    def __init__(self, action: str, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{action}: {len(self.problems)} problem(s)\n{lines}")


def _paths(model: nn.Module, organs: Sequence[str] | str) -> list[str]:
    names = [organs] if isinstance(organs, str) else list(organs)
    if not names:
        raise ValueError("name at least one organ to swap or blend")
    registry = ComponentRegistry(model)
    out: list[str] = []
    for name in names:
        out.extend(p for p in registry.resolve(name) if p not in out)
    return out


def _keys(state: dict[str, torch.Tensor], paths: list[str]) -> list[str]:
    return [
        k for k in state if not is_lora_key(k) and any(k == p or k.startswith(p + ".") for p in paths)
    ]


def _listed(items: list[str], what: str) -> list[str]:
    if len(items) <= _MAX_LISTED:
        return [f"{what}: {item}" for item in items]
    return [f"{what}: {item}" for item in items[:_MAX_LISTED]] + [f"... and {len(items) - _MAX_LISTED} more {what}"]


def _tensor_problems(a: nn.Module, b: nn.Module, paths: list[str], names: tuple[str, str]) -> list[str]:
    sa, sb = a.state_dict(), b.state_dict()
    ka, kb = _keys(sa, paths), _keys(sb, paths)
    problems = _listed(sorted(set(ka) - set(kb)), f"missing in the {names[1]}")
    problems += _listed(sorted(set(kb) - set(ka)), f"only in the {names[1]}")
    shapes = [
        f"{k} {tuple(sa[k].shape)} vs {tuple(sb[k].shape)}" for k in ka if k in sb and sa[k].shape != sb[k].shape
    ]
    problems += _listed(shapes, f"shape differs ({names[0]} vs {names[1]})")
    if not ka:
        problems.append(f"the {names[0]} has no tensors under {', '.join(paths)}")
    return problems


def _config_problems(ca, cb, organs: set[str], names: tuple[str, str]) -> list[str]:
    problems = []
    for organ in sorted(organs):
        sa, sb = getattr(ca, organ, None), getattr(cb, organ, None)
        if not dataclasses.is_dataclass(sa) or not dataclasses.is_dataclass(sb):
            continue
        for f in dataclasses.fields(sa):
            va, vb = getattr(sa, f.name), getattr(sb, f.name, None)
            if "dropout" not in f.name and va != vb:
                problems.append(f"{organ} config differs: {f.name} = {va!r} ({names[0]}) vs {vb!r} ({names[1]})")
    return problems


def _text_problems(ta, tb, names: tuple[str, str]) -> list[str]:
    problems = []
    if ta.symbols and tb.symbols and ta.symbols != tb.symbols:
        first = next((i for i, (x, y) in enumerate(zip(ta.symbols, tb.symbols, strict=False)) if x != y), None)
        where = (
            f"first difference at id {first}: {ta.symbols[first]!r} vs {tb.symbols[first]!r}"
            if first is not None
            else "one table extends the other"
        )
        problems.append(
            f"symbol table differs: {len(ta.symbols)} symbols ({names[0]}) vs {len(tb.symbols)} ({names[1]}); {where}"
        )
    elif not ta.symbols or not tb.symbols:
        logger.warning("symbol table of the %s is unknown: cannot check that token ids match", names[0 if not ta.symbols else 1])
    if ta.phoneme_id_map != tb.phoneme_id_map:
        ma, mb = dict(ta.phoneme_id_map), dict(tb.phoneme_id_map)
        diff = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
        example = f"e.g. {diff[0]!r}: {ma.get(diff[0])} vs {mb.get(diff[0])}"
        problems.append(f"phoneme map differs in {len(diff)} entries ({example})")
    for name in _TEXT_FIELDS:
        va, vb = getattr(ta, name), getattr(tb, name)
        if va != vb:
            problems.append(f"text front end differs: {name} = {va!r} ({names[0]}) vs {vb!r} ({names[1]})")
    return problems


def _adapter_problems(model: nn.Module, paths: list[str], name: str) -> list[str]:
    hits = [
        n for n, m in lora_layers(model).items()
        if not lora_state(m).merged and any(n == p or n.startswith(p + ".") for p in paths)
    ]
    if not hits:
        return []
    more = f" and {len(hits) - 3} more" if len(hits) > 3 else ""
    return [f"the {name} has unmerged LoRA adapters on {', '.join(hits[:3])}{more}: merge_lora() or remove_lora() first"]


def compatibility_problems(
    recipient: nn.Module, donor: nn.Module, organs: Sequence[str] | str, names: tuple[str, str] = ("recipient", "donor")
) -> list[str]:
    """Everything that keeps ``organs`` of ``donor`` from fitting into ``recipient`` (empty = fits).

    Args:
        recipient: the model that receives (its registry resolves the names).
        donor: the model that gives.
        organs: organ names, aliases, sub-organ paths or groups.
        names: how the two models are called in the messages.
    """
    paths = _paths(recipient, organs)
    ca, cb = recipient.config, donor.config
    problems = []
    if ca.audio.sample_rate != cb.audio.sample_rate:
        problems.append(f"sample rate differs: {ca.audio.sample_rate} Hz ({names[0]}) vs {cb.audio.sample_rate} Hz ({names[1]})")
    if ca.audio.hop_length != cb.audio.hop_length:
        problems.append(f"hop length differs: {ca.audio.hop_length} ({names[0]}) vs {cb.audio.hop_length} ({names[1]}) samples")
    problems += _tensor_problems(recipient, donor, paths, names)
    touched = {p.partition(".")[0] for p in paths}
    problems += _config_problems(ca, cb, touched, names)
    if "text_encoder" in touched:
        problems += _text_problems(ca.text, cb.text, names)
    if touched & set(_SPEAKER_CONDITIONED) and (ca.n_speakers, ca.gin_channels) != (cb.n_speakers, cb.gin_channels):
        problems.append(
            f"speaker setup differs: {ca.n_speakers} speakers, gin_channels {ca.gin_channels} ({names[0]}) vs "
            f"{cb.n_speakers} speakers, gin_channels {cb.gin_channels} ({names[1]})"
        )
    problems += _adapter_problems(recipient, paths, names[0]) + _adapter_problems(donor, paths, names[1])
    return problems


@torch.no_grad()
def _combine(
    a: nn.Module, b: nn.Module, organs: Sequence[str] | str, alpha: float, action: str, names: tuple[str, str]
) -> nn.Module:
    problems = compatibility_problems(a, b, organs, names)
    if problems:
        raise IncompatibleVoicesError(action, problems)
    out = copy.deepcopy(a)
    out.__dict__.pop(_RECORD_ATTR, None)  # the result is a new voice: patches of ``a`` no longer apply
    state, donor = out.state_dict(), b.state_dict()
    keys = _keys(state, _paths(a, organs))
    for key in keys:
        dest, src = state[key], donor[key].to(state[key].device, state[key].dtype)
        dest.copy_(torch.lerp(dest, src, alpha) if dest.is_floating_point() else src)  # exact at 0 and 1
    logger.info("%s: %d tensors", action, len(keys))
    return out


def swap(recipient: nn.Module, donor: nn.Module, organs: Sequence[str] | str) -> nn.Module:
    """A new model: ``recipient`` with the donor's ``organs`` (the inputs are unchanged).

    Args:
        recipient: the voice that receives.
        donor: the voice that gives.
        organs: organ names, aliases, sub-organ paths (``decoder.ups.3``) or groups.

    Raises:
        IncompatibleVoicesError: with every reason the organs do not fit.
    """
    label = organs if isinstance(organs, str) else ", ".join(organs)
    action = f"cannot swap {label} from the donor into the recipient"
    return _combine(recipient, donor, organs, 1.0, action, ("recipient", "donor"))


def blend(a: nn.Module, b: nn.Module, organ: Sequence[str] | str, alpha: float) -> nn.Module:
    """A new model: ``a`` whose ``organ`` tensors are ``lerp(a, b, alpha)``.

    Args:
        a: the first voice (everything outside ``organ`` comes from it).
        b: the second voice.
        organ: organ name(s), aliases, sub-organ paths or groups.
        alpha: 0 = ``a``'s organ, 1 = ``b``'s organ.

    Raises:
        ValueError: alpha outside [0, 1].
        IncompatibleVoicesError: with every reason the organs do not fit.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"blend alpha must be in [0, 1], got {alpha}")
    label = organ if isinstance(organ, str) else ", ".join(organ)
    action = f"cannot blend {label} of the two voices"
    return _combine(a, b, organ, float(alpha), action, ("first voice", "second voice"))
