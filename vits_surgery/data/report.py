"""Counting, logging or refusing bad dataset items.

Every reader and :class:`~vits_surgery.data.dataset.TextAudioDataset` records what it could
not use in a :class:`DatasetReport` (one count per reason, a few examples each) and logs a
summary. In strict mode (``on_bad="error"``) the first bad item raises :class:`DataError`
with a message that names the file or metadata line.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["DataError", "DatasetReport", "SKIP_REASONS", "check_on_bad"]

logger = logging.getLogger(__name__)

#: Reasons an item is skipped, with the sentence used in messages.
SKIP_REASONS: dict[str, str] = {
    "bad_line": "metadata line does not have the expected columns",
    "non_utf8": "metadata line is not valid UTF-8",
    "missing_file": "audio file does not exist",
    "empty_file": "audio file is empty (0 bytes)",
    "not_audio": "file is not readable audio",
    "empty_audio": "audio file holds no samples",
    "non_finite": "audio holds NaN/inf samples",
    "silent": "audio is silent",
    "too_short": "audio is shorter than min_seconds",
    "too_long": "audio is longer than max_seconds",
    "empty_text": "text is empty",
    "no_letters": "text has no letters or digits (punctuation only)",
    "unknown_symbols": "text has symbols the tokenizer does not know",
    "phonemizer_error": "the phonemizer failed on the text",
    "bad_text": "the tokenizer refused the text",
    "text_too_long": "text has more tokens than the audio has frames",
    "unknown_speaker": "speaker is not in the speaker map",
}

#: How many example messages a report keeps per reason.
MAX_EXAMPLES = 3


class DataError(ValueError):
    """A dataset item is unusable and the dataset runs in strict mode (or the input is invalid)."""


def check_on_bad(on_bad: str) -> str:
    """Validate an ``on_bad`` argument ("skip" or "error")."""
    if on_bad not in ("skip", "error"):
        raise DataError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
    return on_bad


@dataclass
class DatasetReport:
    """What a dataset pass kept, converted and skipped.

    Attributes:
        seen: items examined (metadata lines or utterances).
        kept: items that made it into the dataset.
        skipped: count per skip reason (keys of :data:`SKIP_REASONS`).
        converted: count per conversion applied to kept items ("resampled", "downmixed",
            "clipped" (kept, but with clipped samples)).
        examples: up to :data:`MAX_EXAMPLES` messages per reason.
    """

    seen: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    converted: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n_skipped(self) -> int:
        """Total skipped items."""
        return sum(self.skipped.values())

    def skip(self, reason: str, where: str, detail: str = "", on_bad: str = "skip") -> None:
        """Record a skipped item, or raise :class:`DataError` in strict mode.

        Args:
            reason: a key of :data:`SKIP_REASONS`.
            where: the file or ``metadata.csv:LINE`` the item came from.
            detail: extra explanation appended to the message.
            on_bad: "skip" (count and continue) or "error" (raise).
        """
        if reason not in SKIP_REASONS:
            raise KeyError(f"unknown skip reason {reason!r}; known: {', '.join(SKIP_REASONS)}")
        message = f"{where}: {SKIP_REASONS[reason]}" + (f" ({detail})" if detail else "")
        if on_bad == "error":
            raise DataError(message + "; pass on_bad='skip' to skip such items and count them")
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < MAX_EXAMPLES:
            examples.append(message)
        logger.debug("skipped %s", message)

    def convert(self, what: str, count: int = 1) -> None:
        """Count a conversion applied to a kept item."""
        self.converted[what] += count

    def merge(self, other: DatasetReport) -> None:
        """Add another report's counts (e.g. the reader's) into this one."""
        self.seen += other.seen
        self.kept += other.kept
        self.skipped.update(other.skipped)
        self.converted.update(other.converted)
        for reason, msgs in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(msgs[: MAX_EXAMPLES - len(mine)])

    def summary(self) -> str:
        """A few human-readable lines: kept/seen, then one line per skip reason."""
        lines = [f"dataset: kept {self.kept} of {self.seen} items, skipped {self.n_skipped}"]
        for reason, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            example = self.examples.get(reason, [""])[0]
            lines.append(f"  skipped {n} x {reason}: {SKIP_REASONS[reason]}; e.g. {example}")
        for what, n in sorted(self.converted.items()):
            lines.append(f"  {what}: {n}")
        return "\n".join(lines)

    def log(self) -> None:
        """Log :meth:`summary` (warning level when something was skipped)."""
        level = logging.WARNING if self.n_skipped else logging.INFO
        logger.log(level, "%s", self.summary())

    def __str__(self) -> str:
        return self.summary()
