"""``TextAudioDataset``: utterances to (tokens, linear spectrogram, waveform) samples.

Construction runs one pass over the items: it tokenizes every text (phonemizing when the
config asks for it), opens every audio file, and keeps only the usable ones, counting the
others per reason in :attr:`TextAudioDataset.report` (or raising :class:`DataError` in strict
mode). Audio is read at the model's sample rate: other rates are resampled and several
channels are averaged to mono (both counted as conversions). The waveform of a sample is cut
to ``frames * hop`` samples, where ``frames`` is the spectrogram length.

With ``cache_dir`` the pass also stores, per audio file, the resampled waveform and its
spectrogram, and per text its token ids (see :class:`~vits_surgery.data.cache.FeatureCache`):
a second run only hashes the audio files and reads the cache. Without a cache, samples are
recomputed from the audio file at each access.

Items are never cropped: the text covers the whole utterance, and the model decodes random
``segment_size`` windows itself (``VITS.decode_segment``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..audio import AudioError, load_audio, num_frames, spectrogram
from ..config import VITSConfig
from .cache import FeatureCache, file_digest, fingerprint
from .readers import Utterance
from .report import DataError, DatasetReport, check_on_bad

__all__ = ["Sample", "TextAudioDataset"]

logger = logging.getLogger(__name__)

#: |sample| at or above this counts as clipped.
CLIP_LEVEL = 0.999
#: A kept file whose clipped-sample fraction exceeds this is counted as "clipped".
CLIP_FRACTION = 1e-3


@dataclass
class Sample:
    """One dataset item.

    Attributes:
        tokens: [T_x] long token ids.
        spec: [F, T_y] linear spectrogram.
        wav: [1, T_y * hop] waveform.
        speaker: speaker id, or None (single speaker).
        text: the raw text.
        id: utterance id.
    """

    tokens: torch.Tensor
    spec: torch.Tensor
    wav: torch.Tensor
    speaker: int | None
    text: str
    id: str


@dataclass(frozen=True)
class _Entry:
    """A kept item: what the sampler and ``__getitem__`` need."""

    utt: Utterance
    tokens: tuple[int, ...]
    n_frames: int
    speaker: int | None
    spec_key: str | None


class _Skip(Exception):
    """Internal: an item is unusable for ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


class TextAudioDataset(Dataset):
    """Text/audio pairs as model inputs, with bad items skipped and counted.

    Args:
        items: utterances (from a reader in :mod:`vits_surgery.data.readers`, or
            :func:`~vits_surgery.data.readers.from_pairs`).
        model_config: the model's config; its ``audio`` slice sets sample rate and spectrogram,
            its ``text`` slice the default tokenizer, ``n_speakers`` whether speakers are used.
        tokenizer: anything with ``encode(text) -> list[int]``; default
            ``Tokenizer(model_config.text)``.
        cache_dir: feature cache folder (None: no cache).
        min_seconds: shorter audio is skipped (``too_short``).
        max_seconds: longer audio is skipped (``too_long``).
        on_bad: "skip" (count bad items, see :attr:`report`) or "error" (raise
            :class:`DataError` naming the file on the first bad item).
        speaker_map: speaker name -> id for multi-speaker models; default: sorted names.
        silence_threshold: audio whose peak |sample| is below this is skipped (``silent``).
        report: a report to continue (e.g. the one a reader filled); default a new one.

    Attributes:
        report: :class:`DatasetReport` of the construction pass.
        cache: the :class:`FeatureCache`, or None.
        speaker_map: the speaker name -> id map used (empty for single-speaker models).
    """

    def __init__(
        self,
        items: Sequence[Utterance],
        model_config: VITSConfig,
        tokenizer: Any | None = None,
        cache_dir: str | Path | None = None,
        min_seconds: float = 0.5,
        max_seconds: float = 20.0,
        on_bad: str = "skip",
        speaker_map: dict[str, int] | None = None,
        silence_threshold: float = 1e-4,
        report: DatasetReport | None = None,
    ) -> None:
        if min_seconds < 0 or max_seconds <= min_seconds:
            raise DataError(f"need 0 <= min_seconds < max_seconds, got {min_seconds} and {max_seconds}")
        items = list(items)
        self.config = model_config
        self.audio_cfg = model_config.audio
        self.on_bad = check_on_bad(on_bad)
        self.min_seconds, self.max_seconds = float(min_seconds), float(max_seconds)
        self.silence_threshold = float(silence_threshold)
        self.tokenizer = tokenizer if tokenizer is not None else _default_tokenizer(model_config)
        self.cache = FeatureCache(cache_dir) if cache_dir is not None else None
        self.report = report if report is not None else DatasetReport()
        self.speaker_map = self._speaker_map(items, speaker_map)
        self._audio_fp = fingerprint(
            "spec", self.audio_cfg.sample_rate, self.audio_cfg.n_fft, self.audio_cfg.hop_length,
            self.audio_cfg.win_length, "mono=mix",
        )
        self._text_fp = fingerprint("tokens", type(self.tokenizer).__qualname__, _describe(self.tokenizer))
        self.entries: list[_Entry] = []
        for utt in items:
            self.report.seen += 1
            entry = self._prepare(utt)
            if entry is not None:
                self.entries.append(entry)
                self.report.kept += 1
        self.report.log()
        if not self.entries:
            logger.warning("dataset is empty: none of %d items could be used", len(items))

    @classmethod
    def from_folder(
        cls,
        root: str | Path,
        model_config: VITSConfig,
        formatter: str = "ljspeech",
        reader_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TextAudioDataset:
        """Read ``root`` with a named formatter and build the dataset; one report covers both.

        Args:
            root: dataset folder.
            model_config: the model's config.
            formatter: a key of :data:`~vits_surgery.data.readers.FORMATTERS` ("ljspeech", "vctk", ...).
            reader_kwargs: extra reader arguments (``metadata="train.csv"``, ``mic="mic2"``...).
            **kwargs: :class:`TextAudioDataset` arguments (``cache_dir``, ``on_bad``...).
        """
        from .readers import read_items

        report = kwargs.pop("report", None) or DatasetReport()
        on_bad = kwargs.get("on_bad", "skip")
        items = read_items(root, formatter, report=report, on_bad=on_bad, **(reader_kwargs or {}))
        report.seen = report.n_skipped  # lines the reader dropped; the dataset counts the rest
        return cls(items, model_config, report=report, **kwargs)

    # ------------------------------------------------------------------ construction pass
    def _speaker_map(self, items: Sequence[Utterance], given: dict[str, int] | None) -> dict[str, int]:
        n = self.config.n_speakers
        names = sorted({u.speaker for u in items if u.speaker is not None})
        if n == 0:
            if len(names) > 1:
                logger.warning("model is single-speaker; ignoring the %d speaker names in the data", len(names))
            return {}
        mapping = dict(given) if given is not None else {name: i for i, name in enumerate(names)}
        bad = {k: v for k, v in mapping.items() if not 0 <= int(v) < n}
        if bad:
            raise DataError(f"speaker ids {bad} are out of range: the model has n_speakers={n}")
        return mapping

    def _prepare(self, utt: Utterance) -> _Entry | None:
        try:
            speaker = self._speaker_id(utt)
            tokens = self._tokens(utt.text)
            spec_key, n_frames, meta = self._audio_meta(utt.audio_path)
            if len(tokens) > n_frames:
                raise _Skip("text_too_long", f"{len(tokens)} tokens for {n_frames} frames")
        except _Skip as skip:
            where = utt.source if utt.source == str(utt.audio_path) else f"{utt.source} ({utt.audio_path})"
            self.report.skip(skip.reason, where, skip.detail, self.on_bad)
            return None
        self._count_conversions(meta)
        return _Entry(utt, tuple(tokens), n_frames, speaker, spec_key)

    def _speaker_id(self, utt: Utterance) -> int | None:
        if not self.speaker_map:
            return None
        if utt.speaker not in self.speaker_map:
            raise _Skip("unknown_speaker", f"speaker {utt.speaker!r}")
        return int(self.speaker_map[utt.speaker])

    def _tokens(self, text: str) -> list[int]:
        if not text.strip():
            raise _Skip("empty_text")
        if not any(ch.isalnum() for ch in text):
            raise _Skip("no_letters", f"text {text!r}")
        key = fingerprint(self._text_fp, text)
        if self.cache is not None and (entry := self.cache.load("tokens", key)) is not None:
            return entry["tokens"].tolist()
        from ..text import PhonemizerError, UnknownSymbolError

        try:
            tokens = list(self.tokenizer.encode(text))
        except UnknownSymbolError as exc:
            raise _Skip("unknown_symbols", str(exc)) from exc
        except PhonemizerError as exc:
            raise _Skip("phonemizer_error", str(exc)) from exc
        except ValueError as exc:  # e.g. nothing left after cleaning
            raise _Skip("bad_text", str(exc)) from exc
        if not tokens:
            raise _Skip("empty_text", f"text {text!r} gives no tokens")
        if self.cache is not None:
            self.cache.save("tokens", key, {"tokens": torch.tensor(tokens, dtype=torch.long)})
        return tokens

    def _audio_meta(self, path: Path) -> tuple[str | None, int, dict[str, Any]]:
        """Check the audio file; return (cache key, frames, metadata). Fills the cache on a miss."""
        if not path.is_file():
            raise _Skip("missing_file")
        if path.stat().st_size == 0:
            raise _Skip("empty_file")
        if self.cache is None:
            wav, meta = self._decode(path)
            return None, num_frames(len(wav), self.audio_cfg.n_fft, self.audio_cfg.hop_length), meta
        key = fingerprint(self._audio_fp, file_digest(path))
        entry = self.cache.load("spec", key, mmap=True)
        if entry is None:
            wav, meta = self._decode(path)
            spec, wav = self._features(wav)
            entry = dict(meta, spec=spec, wav=wav, n_samples=int(meta["n_samples"]), n_frames=spec.shape[-1])
            self.cache.save("spec", key, entry)
        self._check_loaded(entry)
        return key, int(entry["n_frames"]), entry

    def _decode(self, path: Path) -> tuple[np.ndarray, dict[str, Any]]:
        """Read, resample and down-mix; raise ``_Skip`` for unusable audio."""
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except Exception as exc:
            raise _Skip("not_audio", str(exc).strip()) from exc
        if info.frames == 0:
            raise _Skip("empty_audio")
        if info.frames / info.samplerate > self.max_seconds:  # refuse before decoding a huge file
            raise _Skip("too_long", f"{info.frames / info.samplerate:.1f} s > max_seconds {self.max_seconds:g}")
        try:
            wav, _ = load_audio(path, self.audio_cfg.sample_rate)
        except AudioError as exc:
            raise _Skip("non_finite" if "NaN/inf" in str(exc) else "not_audio", str(exc)) from exc
        peak = float(np.abs(wav).max()) if wav.size else 0.0
        meta = {
            "n_samples": int(wav.size), "peak": peak, "orig_sr": int(info.samplerate),
            "channels": int(info.channels),
            "clipped": bool(np.mean(np.abs(wav) >= CLIP_LEVEL) > CLIP_FRACTION),
        }
        self._check_loaded(meta)
        return wav, meta

    def _check_loaded(self, meta: dict[str, Any]) -> None:
        sr = self.audio_cfg.sample_rate
        if float(meta["peak"]) < self.silence_threshold:
            raise _Skip("silent", f"peak {float(meta['peak']):.2g} < silence_threshold {self.silence_threshold:g}")
        seconds = int(meta["n_samples"]) / sr
        if seconds < self.min_seconds:
            raise _Skip("too_short", f"{seconds:.3f} s < min_seconds {self.min_seconds:g}")
        if seconds > self.max_seconds:
            raise _Skip("too_long", f"{seconds:.1f} s > max_seconds {self.max_seconds:g}")
        if num_frames(int(meta["n_samples"]), self.audio_cfg.n_fft, self.audio_cfg.hop_length) < 1:
            raise _Skip("too_short", f"{int(meta['n_samples'])} samples give no spectrogram frame")

    def _count_conversions(self, meta: dict[str, Any]) -> None:
        if int(meta["orig_sr"]) != self.audio_cfg.sample_rate:
            self.report.convert("resampled")
        if int(meta["channels"]) > 1:
            self.report.convert("downmixed")
        if bool(meta["clipped"]):
            self.report.convert("clipped")

    def _features(self, wav: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(spec [F, T_y], wav [T_y * hop]) of a mono waveform at the model rate."""
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32))
        spec = spectrogram(x.unsqueeze(0), self.audio_cfg)[0]  # [F, T_y]
        return spec, x[: spec.shape[-1] * self.audio_cfg.hop_length].clone()

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def lengths(self) -> list[int]:
        """Spectrogram frames of every item (for length bucketing)."""
        return [e.n_frames for e in self.entries]

    @property
    def items(self) -> list[Utterance]:
        """The kept utterances, in dataset order."""
        return [e.utt for e in self.entries]

    def total_seconds(self) -> float:
        """Audio duration of the kept items."""
        return sum(self.lengths) * self.audio_cfg.hop_length / self.audio_cfg.sample_rate

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[index]
        spec, wav = self._load_features(entry)
        return Sample(
            tokens=torch.tensor(entry.tokens, dtype=torch.long),
            spec=spec,
            wav=wav.unsqueeze(0),
            speaker=entry.speaker,
            text=entry.utt.text,
            id=entry.utt.id,
        )

    def _load_features(self, entry: _Entry) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None and entry.spec_key is not None:
            cached = self.cache.load("spec", entry.spec_key)
            if cached is not None and cached["spec"].shape[-1] == entry.n_frames:
                return cached["spec"], cached["wav"]
        try:
            wav, _ = self._decode(entry.utt.audio_path)
        except (_Skip, OSError) as exc:
            raise DataError(f"{entry.utt.source}: audio changed or vanished after the dataset pass ({exc})") from exc
        spec, wav = self._features(wav)
        if spec.shape[-1] != entry.n_frames:
            raise DataError(
                f"{entry.utt.source}: audio now has {spec.shape[-1]} frames, the dataset pass saw "
                f"{entry.n_frames}; rebuild the dataset"
            )
        if self.cache is not None and entry.spec_key is not None:
            logger.warning("cache entry of %s was missing or invalid; rewriting it", entry.utt.audio_path)
        return spec, wav


def _default_tokenizer(config: VITSConfig) -> Any:
    from ..text import Tokenizer

    return Tokenizer(config.text)


def _describe(tokenizer: Any) -> Any:
    """A JSON-able description of a tokenizer's configuration, for cache keys."""
    cfg = getattr(tokenizer, "cfg", None) or getattr(tokenizer, "config", None)
    extra = getattr(tokenizer, "on_unknown", None)
    if cfg is not None and dataclasses.is_dataclass(cfg):
        return [dataclasses.asdict(cfg), extra]
    return repr(getattr(tokenizer, "fingerprint", None) or cfg or type(tokenizer).__qualname__)
