"""Dataset readers: metadata files and folder layouts to a list of :class:`Utterance`.

Formats (``FORMATTERS`` maps the Coqui TTS formatter names to readers):

- ``ljspeech``: ``metadata.csv`` lines ``id|text|normalized text`` and ``wavs/<id>.wav``. The
  normalized column is used when present and non-empty (Coqui uses only that column); two
  columns (``id|text``, the original VITS filelist shape) are accepted too. An id that already
  names a file (has an audio extension or a ``/``) is taken as a path relative to the root.
- ``ljspeech_test``: as ``ljspeech`` with a new speaker every two lines (``ljspeech-1``,
  ``ljspeech-1``, ``ljspeech-2``, ...), like Coqui's multi-speaker test formatter.
- ``vctk``: VCTK 0.92, ``txt/<spk>/<id>.txt`` and ``wav48_silence_trimmed/<spk>/<id>_mic1.flac``
  (speaker ``VCTK_<spk>``); ``vctk_old``: older releases, ``wav48/<spk>/<id>.wav``
  (speaker ``VCTK_old_<spk>``). Speaker names follow Coqui so its speaker maps apply.
- ``coqui``: a pipe-separated file with a header naming ``audio_file``, ``text`` and optionally
  ``speaker_name`` (default ``coqui``); audio paths are relative to the root.
- ``csv``: headerless ``id|text|speaker`` lines, audio as in ``ljspeech``.
- :func:`from_pairs`: a plain list of ``(wav path, text[, speaker])``.

Readers never open audio. Lines that cannot be parsed (wrong column count, invalid UTF-8)
are counted in the ``report`` or, with ``on_bad="error"``, raise :class:`DataError` naming
the file and line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .report import DataError, DatasetReport, check_on_bad

__all__ = [
    "Utterance",
    "read_ljspeech",
    "read_ljspeech_test",
    "read_vctk",
    "read_vctk_old",
    "read_coqui_csv",
    "read_speaker_csv",
    "from_pairs",
    "read_items",
    "FORMATTERS",
]

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au")


@dataclass(frozen=True)
class Utterance:
    """One (audio file, text) pair.

    Attributes:
        audio_path: the audio file.
        text: its transcription (raw; cleaning and phonemization happen in the tokenizer).
        speaker: speaker name, or None for single-speaker data.
        id: utterance id (defaults to the file stem).
        source: where the item came from (``metadata.csv:12``), used in messages.
    """

    audio_path: Path
    text: str
    speaker: str | None = None
    id: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "audio_path", Path(self.audio_path))
        if not self.id:
            object.__setattr__(self, "id", self.audio_path.stem)
        if not self.source:
            object.__setattr__(self, "source", str(self.audio_path))


def _lines(path: Path, report: DatasetReport, on_bad: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, decoded line)`` of a text file, one bad line at a time."""
    if not path.is_file():
        raise DataError(f"metadata file {str(path)!r} does not exist")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
        raw = raw[3:]
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        report.seen += 1
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.skip("non_utf8", f"{path}:{number}", f"byte {exc.start}", on_bad)


def _audio_for(root: Path, name: str, wavs_dir: str) -> Path:
    """The audio path of an id: a relative path when it names a file, else ``wavs/<id>.wav``."""
    if "/" in name or name.lower().endswith(AUDIO_SUFFIXES):
        return root / name
    return root / wavs_dir / f"{name}.wav"


def _split(line: str, where: str, n_min: int, n_max: int, report: DatasetReport, on_bad: str) -> list[str] | None:
    cols = [c.strip() for c in line.rstrip("\r\n").split("|")]
    if not n_min <= len(cols) <= n_max:
        expect = f"{n_min}" if n_min == n_max else f"{n_min} to {n_max}"
        report.skip("bad_line", where, f"{len(cols)} '|'-separated columns, expected {expect}", on_bad)
        return None
    return cols


def read_ljspeech(
    root: str | Path,
    metadata: str = "metadata.csv",
    wavs_dir: str = "wavs",
    speaker: str | None = None,
    report: DatasetReport | None = None,
    on_bad: str = "skip",
) -> list[Utterance]:
    """Read an LJSpeech-style folder (``metadata.csv`` + ``wavs/``).

    Args:
        root: dataset folder.
        metadata: metadata file name, relative to ``root``.
        wavs_dir: audio folder, relative to ``root``.
        speaker: speaker name given to every item (None: single speaker).
        report: where bad lines are counted (a new one when None; see :class:`DatasetReport`).
        on_bad: "skip" or "error" (raise on the first bad line).

    Returns:
        The utterances, in file order.
    """
    return _read_pipe(root, metadata, wavs_dir, report, on_bad, lambda i: speaker)


def read_ljspeech_test(
    root: str | Path,
    metadata: str = "metadata.csv",
    wavs_dir: str = "wavs",
    report: DatasetReport | None = None,
    on_bad: str = "skip",
) -> list[Utterance]:
    """LJSpeech folder read as multi-speaker test data: speaker ``ljspeech-{i // 2 + 1}``."""
    return _read_pipe(root, metadata, wavs_dir, report, on_bad, lambda i: f"ljspeech-{i // 2 + 1}")


def _read_pipe(
    root: str | Path,
    metadata: str,
    wavs_dir: str,
    report: DatasetReport | None,
    on_bad: str,
    speaker_of: Callable[[int], str | None],
) -> list[Utterance]:
    root, report, on_bad = Path(root), report if report is not None else DatasetReport(), check_on_bad(on_bad)
    path = root / metadata
    items: list[Utterance] = []
    for index, (number, line) in enumerate(_lines(path, report, on_bad)):
        where = f"{path}:{number}"
        cols = _split(line, where, 2, 3, report, on_bad)
        if cols is None:
            continue
        text = cols[2] if len(cols) == 3 and cols[2] else cols[1]
        items.append(Utterance(_audio_for(root, cols[0], wavs_dir), text, speaker_of(index), source=where))
    return items


def read_speaker_csv(
    root: str | Path,
    metadata: str = "metadata.csv",
    wavs_dir: str = "wavs",
    report: DatasetReport | None = None,
    on_bad: str = "skip",
) -> list[Utterance]:
    """Headerless ``id|text|speaker`` lines; audio found as in :func:`read_ljspeech`."""
    root, report, on_bad = Path(root), report if report is not None else DatasetReport(), check_on_bad(on_bad)
    path = root / metadata
    items = []
    for number, line in _lines(path, report, on_bad):
        where = f"{path}:{number}"
        cols = _split(line, where, 3, 3, report, on_bad)
        if cols is not None:
            items.append(Utterance(_audio_for(root, cols[0], wavs_dir), cols[1], cols[2] or None, source=where))
    return items


def read_coqui_csv(
    root: str | Path,
    metadata: str = "metadata.csv",
    report: DatasetReport | None = None,
    on_bad: str = "skip",
) -> list[Utterance]:
    """Coqui's ``coqui`` format: header ``audio_file|text[|speaker_name|...]``, paths relative to root."""
    root, report, on_bad = Path(root), report if report is not None else DatasetReport(), check_on_bad(on_bad)
    path = root / metadata
    lines = _lines(path, report, on_bad)
    first = next(lines, None)
    if first is None:
        return []
    report.seen -= 1  # the header is not an item
    header = [c.strip() for c in first[1].split("|")]
    missing = [c for c in ("audio_file", "text") if c not in header]
    if missing:
        raise DataError(f"{path}:{first[0]}: header {header} lacks column(s) {missing}")
    a, t = header.index("audio_file"), header.index("text")
    s = header.index("speaker_name") if "speaker_name" in header else None
    items = []
    for number, line in lines:
        where = f"{path}:{number}"
        cols = _split(line, where, len(header), len(header), report, on_bad)
        if cols is not None:
            speaker = cols[s] if s is not None else "coqui"
            items.append(Utterance(root / cols[a], cols[t], speaker, source=where))
    return items


def read_vctk(
    root: str | Path,
    wavs_dir: str = "wav48_silence_trimmed",
    mic: str = "mic1",
    ignored_speakers: Sequence[str] = (),
    report: DatasetReport | None = None,
    on_bad: str = "skip",
) -> list[Utterance]:
    """VCTK 0.92: ``txt/<spk>/<id>.txt`` with ``<wavs_dir>/<spk>/<id>_<mic>.flac``.

    Speakers are named ``VCTK_<spk>`` (Coqui's names). An utterance whose audio file is
    missing becomes a ``missing_file`` skip in the dataset pass (some VCTK texts have no audio).
    """
    return _read_vctk(root, wavs_dir, lambda spk, uid: f"{spk}/{uid}_{mic}.flac", "VCTK_",
                      ignored_speakers, report, on_bad)


def read_vctk_old(
    root: str | Path,
    wavs_dir: str = "wav48",
    ignored_speakers: Sequence[str] = (),
    report: DatasetReport | None = None,
    on_bad: str = "skip",
) -> list[Utterance]:
    """Older VCTK releases: ``txt/<spk>/<id>.txt`` with ``wav48/<spk>/<id>.wav``; speakers ``VCTK_old_<spk>``."""
    return _read_vctk(root, wavs_dir, lambda spk, uid: f"{spk}/{uid}.wav", "VCTK_old_",
                      ignored_speakers, report, on_bad)


def _read_vctk(
    root: str | Path,
    wavs_dir: str,
    audio_name: Callable[[str, str], str],
    prefix: str,
    ignored_speakers: Sequence[str],
    report: DatasetReport | None,
    on_bad: str,
) -> list[Utterance]:
    root, report, on_bad = Path(root), report if report is not None else DatasetReport(), check_on_bad(on_bad)
    txt_root = root / "txt"
    if not txt_root.is_dir():
        raise DataError(f"VCTK folder {str(root)!r} has no txt/ subfolder")
    items = []
    for txt in sorted(txt_root.glob("*/*.txt")):
        speaker = txt.parent.name
        if speaker in ignored_speakers:
            continue
        report.seen += 1
        try:
            text = txt.read_bytes().decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            report.skip("non_utf8", str(txt), f"byte {exc.start}", on_bad)
            continue
        audio = root / wavs_dir / audio_name(speaker, txt.stem)
        items.append(Utterance(audio, text, prefix + speaker, id=txt.stem, source=str(txt)))
    return items


def from_pairs(pairs: Iterable[Sequence[str | Path]]) -> list[Utterance]:
    """Utterances from ``(wav path, text)`` or ``(wav path, text, speaker)`` tuples.

    Raises:
        DataError: a tuple has neither 2 nor 3 entries.
    """
    items = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, Utterance):
            items.append(pair)
            continue
        if len(pair) not in (2, 3):
            raise DataError(f"item {i} must be (wav path, text) or (wav path, text, speaker), got {pair!r}")
        speaker = str(pair[2]) if len(pair) == 3 and pair[2] is not None else None
        items.append(Utterance(Path(pair[0]), str(pair[1]), speaker, source=f"item {i} ({pair[0]})"))
    return items


#: Coqui TTS formatter names (and ``csv``) -> reader taking ``(root, **kwargs)``.
FORMATTERS: dict[str, Callable[..., list[Utterance]]] = {
    "ljspeech": read_ljspeech,
    "ljspeech_test": read_ljspeech_test,
    "vctk": read_vctk,
    "vctk_old": read_vctk_old,
    "coqui": read_coqui_csv,
    "csv": read_speaker_csv,
}


def read_items(root: str | Path, formatter: str = "ljspeech", **kwargs) -> list[Utterance]:
    """Read a dataset folder with a named formatter (see :data:`FORMATTERS`).

    Raises:
        DataError: unknown formatter name (the message lists the known ones).
    """
    if formatter not in FORMATTERS:
        raise DataError(f"unknown dataset formatter {formatter!r}; known: {', '.join(FORMATTERS)}")
    return FORMATTERS[formatter](root, **kwargs)
