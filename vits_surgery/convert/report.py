"""What a conversion did with every key: mapped, dropped, created."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ConversionReport", "ConversionError"]


class ConversionError(ValueError):
    """A checkpoint cannot be converted: names the file and the offending keys."""


@dataclass
class ConversionReport:
    """Record of one conversion.

    Attributes:
        source_format: "coqui", "vits", "piper-ckpt", "piper-onnx", "hf" or "native".
        source_path: the file or folder read.
        mapped: (source key, target key, transform name or "") per converted tensor.
        dropped: (source key, reason) for tensors deliberately not loaded.
        created: (target key, reason) for tensors not in the source, created on purpose
            (e.g. a fresh discriminator for a generator-only file).
        notes: config facts worth knowing (differences from defaults, quirks handled).
    """

    source_format: str
    source_path: str = ""
    mapped: list[tuple[str, str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    created: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts per category."""
        return (
            f"{self.source_format} checkpoint {self.source_path}: {len(self.mapped)} tensors mapped, "
            f"{len(self.dropped)} dropped, {len(self.created)} created"
        )

    def created_prefixes(self) -> dict[str, int]:
        """Created keys grouped by organ (first dotted component)."""
        out: dict[str, int] = {}
        for key, _ in self.created:
            organ = key.split(".", 1)[0]
            out[organ] = out.get(organ, 0) + 1
        return out

    def __str__(self) -> str:
        lines = [self.summary()]
        transforms: dict[str, int] = {}
        for _, _, t in self.mapped:
            if t:
                transforms[t] = transforms.get(t, 0) + 1
        for name, n in sorted(transforms.items()):
            lines.append(f"  transform {name}: {n} tensors")
        reasons: dict[str, int] = {}
        for _, reason in self.dropped:
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, n in sorted(reasons.items()):
            lines.append(f"  dropped {n}: {reason}")
        created: dict[tuple[str, str], int] = {}
        for key, reason in self.created:
            k = (key.split(".", 1)[0], reason)
            created[k] = created.get(k, 0) + 1
        for (organ, reason), n in sorted(created.items()):
            lines.append(f"  created {n} in {organ}: {reason}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)
