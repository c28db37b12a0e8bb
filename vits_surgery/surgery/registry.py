"""Organ names -> submodules and parameters, with aliases, groups and loss reachability.

A :class:`ComponentRegistry` resolves the names users write to the modules of a
:class:`~vits_surgery.models.vits.VITS`:

- organs (``text_encoder``, ``duration_predictor``, ``posterior_encoder``, ``flow``,
  ``decoder``, ``speaker_embedding``, ``discriminator``);
- aliases from other implementations (Coqui ``waveform_decoder``, ``disc``, ``emb_g``;
  original VITS / Piper ``enc_p``, ``dp``, ``enc_q``, ``dec``; HF ``embed_speaker``), also as
  the head of a dotted path (``dec.ups.3``);
- sub-organs by dotted path (``decoder.ups.3``, ``text_encoder.encoder.attn_layers.0``) or a
  single parameter (``text_encoder.emb.weight``), resolved structurally with
  ``get_submodule`` / ``get_parameter``, never by substring;
- named groups (:meth:`ComponentRegistry.register`); ``generator`` (every organ but the
  discriminator) is built in.

The registry also records which losses reach each organ, derived from the VITS data flow
(:func:`data_flow`): e.g. the duration predictor's input is detached by default, so the
duration loss never reaches the text encoder.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from torch import nn

from .._names import did_you_mean
from ..config import VITSConfig
from ..models.vits import ORGANS

__all__ = [
    "ALIASES",
    "GENERATOR_TERMS",
    "WAVEFORM_TERMS",
    "DISCRIMINATOR_TERMS",
    "ComponentRegistry",
    "data_flow",
    "reachable_losses",
]

#: Names other implementations use for our organs (top-level attribute names).
ALIASES: dict[str, str] = {
    # Coqui TTS
    "waveform_decoder": "decoder",
    "disc": "discriminator",
    "emb_g": "speaker_embedding",
    # original VITS / Piper
    "enc_p": "text_encoder",
    "dp": "duration_predictor",
    "enc_q": "posterior_encoder",
    "dec": "decoder",
    "net_d": "discriminator",
    # HF transformers
    "embed_speaker": "speaker_embedding",
}

#: Generator loss terms, in the order the trainer computes them.
GENERATOR_TERMS = ("gen/kl", "gen/dur", "gen/mel", "gen/adv", "gen/fm")
#: Terms computed on the decoded waveform segment.
WAVEFORM_TERMS = ("gen/mel", "gen/adv", "gen/fm")
#: Discriminator loss terms.
DISCRIMINATOR_TERMS = ("disc/real", "disc/fake")

_BUILTIN_GROUPS = ("generator",)


def data_flow(config: VITSConfig) -> dict[str, tuple[str, ...]]:
    """The training graph: each organ -> the organs and loss terms its outputs feed.

    Edges carry gradients. MAS consumes the prior and ``flow(z)`` without gradients, so it
    is not an edge; the duration predictor's input is an edge only when
    ``config.duration_predictor.detach_input`` is False. The discriminator scores the decoded
    segment for ``gen/adv`` and ``gen/fm`` but is frozen in the generator step, so those terms
    belong to the decoder; the discriminator itself is trained by ``disc/real``, ``disc/fake``.

    Returns:
        node -> consumers (organs and loss keys such as ``gen/kl``).
    """
    dp = config.duration_predictor
    flow: dict[str, tuple[str, ...]] = {
        "text_encoder": ("gen/kl",) + (() if dp.detach_input else ("duration_predictor",)),
        "posterior_encoder": ("flow", "gen/kl", "decoder"),
        "flow": ("gen/kl",),
        "decoder": WAVEFORM_TERMS,
        "duration_predictor": ("gen/dur",),
        "discriminator": DISCRIMINATOR_TERMS,
    }
    if config.n_speakers > 0:
        consumers = ["posterior_encoder", "flow", "decoder"]
        if dp.condition_on_speaker and not dp.detach_input:
            consumers.append("duration_predictor")
        flow["speaker_embedding"] = tuple(consumers)
    return flow


def reachable_losses(config: VITSConfig) -> dict[str, tuple[str, ...]]:
    """Organ -> the loss terms whose gradients reach its parameters (sorted by term order)."""
    graph = data_flow(config)
    order = GENERATOR_TERMS + DISCRIMINATOR_TERMS

    def walk(node: str, seen: set[str]) -> set[str]:
        out: set[str] = set()
        for nxt in graph.get(node, ()):
            if "/" in nxt:
                out.add(nxt)
            elif nxt not in seen:
                seen.add(nxt)
                out |= walk(nxt, seen)
        return out

    return {organ: tuple(t for t in order if t in walk(organ, {organ})) for organ in graph}


class UnknownComponentError(KeyError):
    """A component name resolves to nothing; the message lists the closest valid names."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class ComponentRegistry:
    """Resolves organ names, aliases, dotted sub-organ paths and groups on a model.

    Args:
        model: a :class:`~vits_surgery.models.vits.VITS` (any ``nn.Module`` whose organs are
            attributes named as in ``ORGANS`` works; ``model.config`` gives loss reachability).

    Example::

        reg = ComponentRegistry(model)
        reg.parameters("dec.ups.3")          # original-VITS alias of decoder.ups.3
        reg.register("upsamplers", ["decoder.ups.2", "decoder.ups.3"])
        print(reg.table())
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.organs: tuple[str, ...] = tuple(
            name for name in ORGANS if isinstance(getattr(model, name, None), nn.Module)
        )
        self.groups: dict[str, tuple[str, ...]] = {
            "generator": tuple(o for o in self.organs if o != "discriminator")
        }
        config = getattr(model, "config", None)
        self._reach = reachable_losses(config) if isinstance(config, VITSConfig) else {}

    # ------------------------------------------------------------------ names
    def names(self) -> list[str]:
        """Organs present on the model, then groups."""
        return list(self.organs) + list(self.groups)

    def canonical(self, name: str) -> str:
        """Replace an alias at the head of a dotted name: ``dec.ups.3`` -> ``decoder.ups.3``."""
        head, dot, rest = name.partition(".")
        head = ALIASES.get(head, head)
        return head + dot + rest

    def is_group(self, name: str) -> bool:
        """True for a registered (or built-in) group name."""
        return name in self.groups

    def organ_of(self, name: str) -> str:
        """The organ a name belongs to (``decoder.ups.3`` -> ``decoder``); groups raise."""
        name = self.canonical(name)
        if name in self.groups:
            raise UnknownComponentError(f"{name!r} is a group of several paths, not inside one organ")
        head = name.partition(".")[0]
        if head not in self.organs:
            self._unknown(name)
        return head

    def resolve(self, name: str) -> tuple[str, ...]:
        """Canonical module/parameter paths a name stands for.

        Raises:
            UnknownComponentError: (a ``KeyError``) the name is not an organ, alias, group or
                a module/parameter path of the model; the message suggests the closest names.
        """
        name = self.canonical(name)
        if name in self.groups:
            out: list[str] = []
            for member in self.groups[name]:
                out.extend(p for p in self.resolve(member) if p not in out)
            return tuple(out)
        head = name.partition(".")[0]
        if head not in self.organs:
            self._unknown(name)
        if "." in name:
            try:
                self.model.get_submodule(name)
            except AttributeError:
                try:
                    self.model.get_parameter(name)
                except AttributeError:
                    self._unknown(name)
        return (name,)

    def modules(self, name: str) -> list[nn.Module]:
        """The submodules a name stands for (a parameter path yields its owning module)."""
        out = []
        for path in self.resolve(name):
            try:
                out.append(self.model.get_submodule(path))
            except AttributeError:
                out.append(self.model.get_submodule(path.rpartition(".")[0]))
        return out

    def named_parameters(self, name: str) -> list[tuple[str, nn.Parameter]]:
        """``(full name, parameter)`` pairs of a name, each parameter once."""
        seen: set[int] = set()
        out: list[tuple[str, nn.Parameter]] = []
        for path in self.resolve(name):
            try:
                module = self.model.get_submodule(path)
                pairs = list(module.named_parameters(prefix=path))
            except AttributeError:
                pairs = [(path, self.model.get_parameter(path))]
            for full, param in pairs:
                if id(param) not in seen:
                    seen.add(id(param))
                    out.append((full, param))
        return out

    def parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters a name stands for, each once."""
        return [p for _, p in self.named_parameters(name)]

    def num_parameters(self, name: str, trainable_only: bool = False) -> int:
        """Number of scalar parameters (optionally only those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters(name) if p.requires_grad or not trainable_only)

    def losses(self, name: str) -> tuple[str, ...]:
        """Loss terms whose gradients reach a name (union over a group's organs)."""
        organs = {self.organ_of(p) for p in self.resolve(name)}
        order = GENERATOR_TERMS + DISCRIMINATOR_TERMS
        return tuple(t for t in order if any(t in self._reach.get(o, ()) for o in organs))

    # ------------------------------------------------------------------ groups
    def register(self, name: str, paths: Sequence[str] | str) -> None:
        """Register (or replace) a named group of organs / sub-organ paths / other groups.

        Raises:
            ValueError: the name is an organ or an alias, or the group is empty.
            UnknownComponentError: a member does not resolve.
        """
        if isinstance(paths, str):
            paths = [paths]
        if name in self.organs or name in ALIASES or "." in name:
            raise ValueError(f"cannot register group {name!r}: it is an organ name, an alias or a dotted path")
        if name in _BUILTIN_GROUPS:
            raise ValueError(f"cannot register group {name!r}: it is a built-in group")
        if not paths:
            raise ValueError(f"group {name!r} has no members")
        members = tuple(self.canonical(p) for p in paths)
        if name in members:
            raise ValueError(f"group {name!r} cannot contain itself")
        for member in members:
            self.resolve(member)
        self.groups[name] = members

    # ------------------------------------------------------------------ display
    def rows(self) -> list[dict[str, object]]:
        """One dict per organ and group: name, kind, params, trainable, losses."""
        out = []
        for name in self.names():
            params = self.parameters(name)
            total = sum(p.numel() for p in params)
            trainable = sum(p.numel() for p in params if p.requires_grad)
            out.append(
                {
                    "name": name,
                    "kind": "group" if name in self.groups else "organ",
                    "params": total,
                    "trainable": trainable,
                    "losses": self.losses(name),
                }
            )
        return out

    def table(self) -> str:
        """A plain-text table: organ, parameters, trainable parameters, losses that reach it."""
        header = ("organ", "params", "trainable", "losses")
        lines = [
            (
                str(r["name"]) + (" (group)" if r["kind"] == "group" else ""),
                f"{r['params']:,}",
                _trainable_text(int(r["trainable"]), int(r["params"])),  # type: ignore[call-overload]
                ", ".join(r["losses"]) or "-",  # type: ignore[arg-type]
            )
            for r in self.rows()
        ]
        widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(header)]
        aligns = ("<", ">", ">", "<")

        def fmt(row: tuple[str, ...]) -> str:
            return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, aligns, widths, strict=True))

        sep = "  ".join("-" * w for w in widths)
        body = [fmt(header), sep, *(fmt(row) for row in lines)]
        return "\n".join(line.rstrip() for line in body)

    def _repr_html_(self) -> str:
        cells = "".join(
            "<tr><td>{}</td><td style='text-align:right'>{:,}</td><td style='text-align:right'>{}</td>"
            "<td>{}</td></tr>".format(
                html.escape(str(r["name"])) + (" <i>(group)</i>" if r["kind"] == "group" else ""),
                r["params"],
                html.escape(_trainable_text(int(r["trainable"]), int(r["params"]))),  # type: ignore[call-overload]
                html.escape(", ".join(r["losses"]) or "-"),  # type: ignore[arg-type]
            )
            for r in self.rows()
        )
        return (
            "<table><thead><tr><th>organ</th><th>params</th><th>trainable</th><th>losses</th></tr>"
            f"</thead><tbody>{cells}</tbody></table>"
        )

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"ComponentRegistry(organs={list(self.organs)}, groups={list(self.groups)})"

    # ------------------------------------------------------------------ errors
    def _candidates(self) -> Iterable[str]:
        yield from self.organs
        yield from self.groups
        yield from ALIASES
        for name, _ in self.model.named_modules():
            if name:
                yield name

    def _unknown(self, name: str) -> None:
        head = name.partition(".")[0]
        if head in ORGANS and head not in self.organs:
            raise UnknownComponentError(
                f"this model has no {head!r} (it is built only when the config asks for it); "
                f"organs present: {', '.join(self.organs)}"
            )
        hint = did_you_mean(name, self._candidates(), n=3)
        raise UnknownComponentError(
            f"unknown component {name!r}{hint} (organs: {', '.join(self.organs)}; "
            f"groups: {', '.join(self.groups)})"
        )


def _trainable_text(trainable: int, total: int) -> str:
    if trainable == 0:
        return "frozen"
    if trainable == total:
        return f"all ({trainable:,})"
    return f"{trainable:,} ({100.0 * trainable / total:.1f}%)"
