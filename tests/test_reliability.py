"""Reliability and security: untrusted checkpoints, bad audio and text, training faults.

Every case here has a row in ``docs/reliability.md``. ``kill -9`` and two-process runs are in
``tests/test_kill_resume.py``; per-reason dataset skips in ``tests/test_data.py``.
"""

from __future__ import annotations

import builtins
import errno
import json
import logging
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from reliability_worker import make_batches
from surgery_helpers import tiny_model

import vits_surgery
from vits_surgery import _files
from vits_surgery.audio import resample
from vits_surgery.config import preset
from vits_surgery.convert import ConversionError, native
from vits_surgery.convert.safeload import UnsafeCheckpointError
from vits_surgery.data import DataError, TextAudioDataset, make_loader, read_ljspeech
from vits_surgery.data import dataset as dataset_module
from vits_surgery.models.vits import VITS
from vits_surgery.surgery import rundir
from vits_surgery.surgery.callbacks import RunLogger, read_metrics
from vits_surgery.surgery.plan import SurgeryPlan
from vits_surgery.surgery.trainer import NonFiniteLossError, SurgicalTrainer, TrainConfig
from vits_surgery.text import Tokenizer, UnknownSymbolError

COQUI = Path(__file__).parent / "fixtures" / "coqui"
CFG = preset("tiny")  # 16 kHz, hop 64
BROKEN = (ConversionError, native.CheckpointError)


# ============================================================================ untrusted files
class _SystemPayload:
    """Unpickling this runs ``touch <marker>`` (a classic ``__reduce__`` code payload)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecPayload(_SystemPayload):
    """Unpickling this runs Python code that creates ``<marker>``."""

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


# Each carrier writes a checkpoint whose loading reads a pickle holding ``payload``;
# it returns (the path given to ``vits_surgery.load``, the file holding the payload).
def _coqui_trainer_dict(tmp: Path, payload) -> tuple[Path, Path]:
    torch.save({"config": {"model": "vits"}, "model": {"text_encoder.emb.weight": payload}}, tmp / "model.pth")
    return tmp / "model.pth", tmp / "model.pth"


def _coqui_bare(tmp: Path, payload) -> tuple[Path, Path]:
    shutil.copy(COQUI / "phonemes" / "config.json", tmp / "config.json")
    torch.save({"text_encoder.emb.weight": torch.zeros(2), "waveform_decoder.x": payload}, tmp / "model.pth")
    return tmp / "model.pth", tmp / "model.pth"


def _coqui_speakers_file(tmp: Path, payload) -> tuple[Path, Path]:
    obj = torch.load(COQUI / "multispeaker_dp_rb2" / "model.pth", weights_only=True)
    obj["config"] = {**obj["config"], "speakers": [], "speakers_file": "speakers.pth"}
    torch.save(obj, tmp / "model.pth")
    torch.save({"p225": 0, "p226": payload}, tmp / "speakers.pth")
    return tmp / "model.pth", tmp / "speakers.pth"


def _vits_generator(tmp: Path, payload) -> tuple[Path, Path]:
    (tmp / "config.json").write_text("{}")
    torch.save({"model": {"enc_p.emb.weight": torch.zeros(2)}, "iteration": payload}, tmp / "G_100.pth")
    return tmp / "G_100.pth", tmp / "G_100.pth"


def _vits_discriminator(tmp: Path, payload) -> tuple[Path, Path]:
    (tmp / "config.json").write_text("{}")
    torch.save({"model": {"enc_p.emb.weight": torch.zeros(2)}}, tmp / "G_100.pth")
    torch.save({"model": {"discriminators.0.x": payload}}, tmp / "D_100.pth")
    return tmp / "G_100.pth", tmp / "D_100.pth"


def _piper_ckpt(tmp: Path, payload) -> tuple[Path, Path]:
    state = {"model_g.enc_p.emb.weight": torch.zeros(2)}
    torch.save({"state_dict": state, "hyper_parameters": {"x": payload}}, tmp / "voice.ckpt")
    return tmp / "voice.ckpt", tmp / "voice.ckpt"


PAYLOAD_CARRIERS = {
    "coqui_trainer_dict": _coqui_trainer_dict,
    "coqui_bare_state_dict": _coqui_bare,
    "coqui_speakers_file": _coqui_speakers_file,
    "vits_G": _vits_generator,
    "vits_D_beside_G": _vits_discriminator,
    "piper_ckpt": _piper_ckpt,
}


@pytest.mark.parametrize("payload_cls", [_SystemPayload, _ExecPayload], ids=["os.system", "exec"])
@pytest.mark.parametrize("carrier", sorted(PAYLOAD_CARRIERS))
def test_code_payloads_are_refused_and_never_run(tmp_path: Path, carrier: str, payload_cls) -> None:
    marker = tmp_path / "payload_ran"
    path, _ = PAYLOAD_CARRIERS[carrier](tmp_path, payload_cls(marker))
    # the same carrier really is a working payload for an unsafe loader
    probe = tmp_path / "probe"
    probe.mkdir()
    _, payload_file = PAYLOAD_CARRIERS[carrier](probe, payload_cls(probe / "ran"))
    torch.load(payload_file, weights_only=False)
    assert (probe / "ran").exists()

    fmt = {"vits_G": "vits", "vits_D_beside_G": "vits", "piper_ckpt": "piper-ckpt"}.get(carrier, "coqui")
    for kwargs in ({}, {"format": fmt}):  # auto-detection, and the named loader itself
        with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*(system|exec)") as err:
            vits_surgery.load(path, **kwargs)
        assert "nothing was executed" in str(err.value)
    assert not marker.exists()


def test_trainer_state_payload_is_refused_on_resume(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, save_every=1)
    trainer.fit(1)
    marker = tmp_path / "payload_ran"
    state_file = rundir.latest_checkpoint(tmp_path) / rundir.STATE_FILE
    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "extra": _SystemPayload(marker)}, state_file)
    with pytest.raises(native.CheckpointError, match=rf"{re.escape(str(state_file))}.*run code"):
        _trainer(tmp_path).fit(2, resume=True)
    assert not marker.exists()
    assert not (tmp_path / ".lock").exists()


def test_native_files_are_safetensors_and_never_unpickled(tmp_path: Path, monkeypatch) -> None:
    model = tiny_model(seed=4)
    path = vits_surgery.save(model, tmp_path / "voice")
    head = path.read_bytes()[:9]
    assert head[8:9] == b"{"  # an 8-byte header length, then the JSON header: safetensors
    json.loads(path.read_bytes()[8 : 8 + int.from_bytes(head[:8], "little")])

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a native file must not be unpickled")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    loaded = vits_surgery.load(tmp_path / "voice")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _native(tmp: Path) -> Path:
    if not (tmp / "native" / native.MODEL_FILE).is_file():
        native.save(tiny_model(seed=1), tmp / "native")
    return tmp / "native" / native.MODEL_FILE


def _overwrite_tail(src: Path, dst: Path, n: int) -> Path:
    data = bytearray(src.read_bytes())
    data[-n:] = os.urandom(n)
    dst.write_bytes(bytes(data))
    return dst


def _in_folder(tmp: Path, name: str, data: bytes, extra: dict[str, str] | None = None) -> Path:
    folder = tmp / name
    folder.mkdir()
    (folder / native.MODEL_FILE).write_bytes(data)
    for fname, text in (extra or {}).items():
        (folder / fname).write_text(text)
    return folder


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
BROKEN_FILES = {
    # name: (builder(tmp) -> path, words the message must contain besides the file name)
    "empty.pth": (lambda t: t / "empty.pth", "empty"),
    "truncated.pth": (lambda t: _cut(COQUI / "phonemes" / "model.pth", t / "truncated.pth", 0.4), "truncated or corrupt"),
    "corrupt_zip.pth": (lambda t: _overwrite_tail(COQUI / "phonemes" / "model.pth", t / "corrupt_zip.pth", 300),
                        "truncated or corrupt"),
    "image.pth": (lambda t: t / "image.pth", "PNG image"),
    "image.ckpt": (lambda t: t / "image.ckpt", "PNG image"),
    "page.pth": (lambda t: t / "page.pth", "HTML"),
    "config.pth": (lambda t: t / "config.pth", "JSON"),
    "weights_as.pth": (lambda t: t / "weights_as.pth", "safetensors"),
    "random.safetensors": (lambda t: t / "random.safetensors", "not a readable safetensors"),
    "foreign.safetensors": (lambda t: t / "foreign.safetensors", "without vits_surgery metadata"),
    "resnet.pth": (lambda t: t / "resnet.pth", "not a recognised VITS checkpoint"),
    "list.pth": (lambda t: t / "list.pth", "not a recognised VITS checkpoint"),
    "truncated_native": (lambda t: _in_folder(t, "truncated_native", _native(t).read_bytes()[:5000]), "truncated"),
    "empty_native": (lambda t: _in_folder(t, "empty_native", b""), "not a readable safetensors"),
    "truncated.safetensors": (lambda t: _cut(_native(t), t / "truncated.safetensors", 0.7), "truncated"),
    "broken_hf": (lambda t: _in_folder(t, "broken_hf", os.urandom(300), {"config.json": "{}"}), "safetensors"),
}


def _write_broken_inputs(tmp: Path) -> None:
    (tmp / "empty.pth").write_bytes(b"")
    (tmp / "image.pth").write_bytes(PNG)
    (tmp / "image.ckpt").write_bytes(PNG)
    (tmp / "page.pth").write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    shutil.copy(COQUI / "phonemes" / "config.json", tmp / "config.pth")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp / "weights_as.pth"))
    (tmp / "random.safetensors").write_bytes(os.urandom(2000))
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, str(tmp / "foreign.safetensors"))
    resnet = {"conv1.weight": torch.zeros(4, 3, 3, 3), "bn1.running_mean": torch.zeros(4), "fc.weight": torch.zeros(2, 4)}
    torch.save(resnet, tmp / "resnet.pth")
    torch.save([1, 2, 3], tmp / "list.pth")


@pytest.mark.parametrize("name", sorted(BROKEN_FILES))
def test_broken_or_foreign_files_give_one_error_naming_the_file(tmp_path: Path, name: str) -> None:
    _write_broken_inputs(tmp_path)
    build, words = BROKEN_FILES[name]
    path = build(tmp_path)
    with pytest.raises(BROKEN) as err:
        vits_surgery.load(path)
    message = str(err.value)
    assert path.name in message and words in message, message
    assert "Traceback" not in message and len(message) < 600


@pytest.mark.parametrize("fmt", ["coqui", "vits", "piper-ckpt", "native"])
def test_a_png_is_never_taken_for_a_checkpoint_by_any_loader(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / ("voice.ckpt" if fmt == "piper-ckpt" else "voice.pth")
    path.write_bytes(PNG)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BROKEN, match=re.escape(path.name)):
        vits_surgery.load(path, format=fmt)


@pytest.mark.parametrize("damage", ["empty", "random_bytes", "truncated"])
def test_broken_onnx_voices_name_the_file(tmp_path: Path, damage: str, joe_voice) -> None:
    pytest.importorskip("onnx", reason="the onnx package is needed to read ONNX voices")
    graph, voice_json = joe_voice
    path = tmp_path / "voice.onnx"
    shutil.copy(voice_json, tmp_path / "voice.onnx.json")
    data = {"empty": b"", "random_bytes": os.urandom(4000), "truncated": Path(graph).read_bytes()[:200_000]}
    path.write_bytes(data[damage])
    with pytest.raises(ConversionError, match=rf"{re.escape(str(path))} is (empty|not a readable ONNX model)"):
        vits_surgery.load(path)


def _coqui_variant(tmp: Path, edit) -> Path:
    obj = torch.load(COQUI / "phonemes" / "model.pth", weights_only=True)
    obj["model"] = edit(dict(obj["model"]))
    torch.save(obj, tmp / "edited.pth")
    return tmp / "edited.pth"


FLOW_KEY = "flow.flows.0.pre.weight"
KEY_EDITS = {
    "missing": (lambda s: {k: v for k, v in s.items() if k != FLOW_KEY}, rf"missing keys: .*{re.escape(FLOW_KEY)}"),
    "extra": (lambda s: {**s, "text_encoder.surplus.weight": torch.zeros(3)}, r"unexpected keys: .*text_encoder\.surplus"),
    "misshaped": (lambda s: {**s, FLOW_KEY: torch.zeros(5, 2, 1)}, rf"{re.escape(FLOW_KEY)}: checkpoint shape \(5, 2, 1\)"),
    "not_a_tensor": (lambda s: {**s, FLOW_KEY: "weights"}, rf"non-tensor entries: .*{re.escape(FLOW_KEY)}"),
}


@pytest.mark.parametrize("case", sorted(KEY_EDITS))
def test_coqui_checkpoint_with_wrong_keys_names_file_and_keys(tmp_path: Path, case: str) -> None:
    edit, pattern = KEY_EDITS[case]
    path = _coqui_variant(tmp_path, edit)
    with pytest.raises(ConversionError, match=pattern) as err:
        vits_surgery.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("case", ["missing", "extra", "misshaped"])
def test_native_checkpoint_with_wrong_keys_names_file_and_keys(tmp_path: Path, case: str) -> None:
    from safetensors.torch import save_file

    model = tiny_model(seed=2)
    tensors, _, meta = native.read_native(native.save(model, tmp_path / "ok"))
    key = "flow.flows.0.pre.bias"
    if case == "missing":
        del tensors[key]
    elif case == "extra":
        tensors["decoder.surplus"] = torch.zeros(2)
        key = "decoder.surplus"
    else:
        tensors[key] = torch.zeros(7)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(native.CheckpointError, match=rf"bad\.safetensors does not fit the model: .*{re.escape(key)}"):
        vits_surgery.load(tmp_path / "bad.safetensors")


# ============================================================================ bad audio and text
SENTENCES = [
    "Hello world, this is a test.",
    "The quick brown fox jumps over the lazy dog.",
    "Surgery on a voice needs a steady hand.",
    "A short one to finish.",
]


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> list[np.ndarray]:
    root = tmp_path_factory.mktemp("espeak")
    out = []
    for i, text in enumerate(SENTENCES):
        subprocess.run(["espeak-ng", "-w", str(root / f"{i}.wav"), text], check=True, capture_output=True)
        audio, sr = sf.read(str(root / f"{i}.wav"), dtype="float32")
        assert sr == 22050
        out.append(audio)
    return out


def _mixed_corpus(root: Path, voices: list[np.ndarray]) -> tuple[Path, dict[str, int]]:
    """30 metadata lines: 20 usable files in five formats, 10 bad items (one per kind)."""
    wavs = root / "wavs"
    wavs.mkdir(parents=True)
    rows = []
    for i, v in enumerate(voices):
        s48 = resample(v, 22050, 48000)
        sf.write(str(wavs / f"pcm16_{i}.wav"), v, 22050)
        sf.write(str(wavs / f"stereo48_{i}.wav"), np.stack([s48, 0.5 * s48], axis=1), 48000, subtype="PCM_24")
        sf.write(str(wavs / f"u8_8k_{i}.wav"), resample(v, 22050, 8000), 8000, subtype="PCM_U8")
        sf.write(str(wavs / f"float16k_{i}.wav"), resample(v, 22050, 16000), 16000, subtype="FLOAT")
        sf.write(str(wavs / f"clipped_{i}.wav"), np.clip(4 * v, -1, 1), 22050)
        rows += [(f"{kind}_{i}", SENTENCES[i]) for kind in ("pcm16", "stereo48", "u8_8k", "float16k", "clipped")]
    (wavs / "notaudio.wav").write_text("RIFF? no, a text file with a .wav name\n")
    (wavs / "empty.wav").write_bytes(b"")
    nan = voices[0].copy()
    nan[500:510] = np.nan
    sf.write(str(wavs / "nan.wav"), nan, 22050, subtype="FLOAT")
    sf.write(str(wavs / "silent.wav"), np.zeros(22050, dtype=np.float32), 22050)
    noise = (0.1 * np.random.default_rng(0).standard_normal(8000 * 60)).astype(np.float32)
    sf.write(str(wavs / "hour_long.wav"), noise, 8000, subtype="PCM_U8")  # 60 s stands in for a very long file
    rows += [
        ("missing", "This file does not exist."), ("notaudio", "Not audio."), ("empty", "Zero bytes."),
        ("nan", "Not a number."), ("silent", "Nothing to hear."), ("hour_long", "Far too long."),
        ("pcm16_0", ""), ("pcm16_1", "... ?! --"), ("pcm16_2", "Snowman \u2603 here."),
    ]
    lines = [f"{i}|{t}|{t}".encode() for i, t in rows] + [b"pcm16_3|caf\xe9 in latin-1|caf\xe9 in latin-1"]
    (root / "metadata.csv").write_bytes(b"\n".join(lines) + b"\n")
    expected = {
        "missing_file": 1, "not_audio": 1, "empty_file": 1, "non_finite": 1, "silent": 1, "too_long": 1,
        "empty_text": 1, "no_letters": 1, "unknown_symbols": 1, "non_utf8": 1,
    }
    return root, expected


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory, voices) -> tuple[Path, dict[str, int]]:
    return _mixed_corpus(tmp_path_factory.mktemp("mixed"), voices)


def test_thirty_items_ten_bad_train_through(mixed_corpus, tmp_path: Path, monkeypatch, caplog) -> None:
    root, expected = mixed_corpus
    decoded = []
    real = dataset_module.load_audio
    monkeypatch.setattr(dataset_module, "load_audio", lambda p, *a, **k: decoded.append(Path(p).name) or real(p, *a, **k))
    with caplog.at_level(logging.WARNING, logger="vits_surgery.data"):
        data = TextAudioDataset.from_folder(root, CFG, max_seconds=10.0)
    report = data.report
    assert report.seen == 30 and report.kept == 20 and len(data) == 20
    assert dict(report.skipped) == expected
    assert report.converted == {"resampled": 16, "downmixed": 4, "clipped": 4}
    assert "hour_long.wav" not in decoded  # refused from its header, never decoded
    assert "kept 20 of 30 items, skipped 10" in caplog.text
    for reason in expected:  # every skip is explained with the file or metadata line
        assert reason in caplog.text and ("metadata.csv:" in report.examples[reason][0])

    loader = make_loader(data, batch_size=2, seed=3)
    trainer = SurgicalTrainer(tiny_model(), SurgeryPlan.cadence(), loader, out_dir=tmp_path,
                              config=TrainConfig(progress=False, seed=0, save_every=0))
    logs = trainer.fit(3)
    assert trainer.step == 3 and trainer.skipped_steps == 0
    assert math.isfinite(logs["gen/dur"])


def test_strict_mode_stops_at_the_first_bad_item(mixed_corpus) -> None:
    root, _ = mixed_corpus
    with pytest.raises(DataError, match=r"metadata\.csv:30: metadata line is not valid UTF-8.*on_bad='skip'"):
        TextAudioDataset.from_folder(root, CFG, max_seconds=10.0, on_bad="error")  # the reader comes first
    items = read_ljspeech(root)  # bad lines skipped, bad items kept for the dataset pass
    with pytest.raises(DataError, match=r"metadata\.csv:21 \(.*missing\.wav\): audio file does not exist"):
        TextAudioDataset(items, CFG, max_seconds=10.0, on_bad="error")


@pytest.mark.parametrize(
    "text, error, pattern",
    [
        ("", ValueError, "empty text"),
        ("  \t\n", ValueError, "empty text"),
        (None, TypeError, "needs a str, got NoneType"),
        (b"bytes", TypeError, "needs a str, got bytes"),
        ("Snowman \u2603.", UnknownSymbolError, r"unknown symbol '\u2603' \(U\+2603\) at position 8"),
    ],
)
def test_tokenizer_refuses_unusable_text_clearly(text, error, pattern) -> None:
    with pytest.raises(error, match=pattern):
        Tokenizer(CFG.text).encode(text)


def test_tokenizer_punctuation_unknown_drop_and_very_long_text() -> None:
    tok = Tokenizer(CFG.text)
    assert len(tok.encode("... ?!")) == 2 * 6 + 1  # punctuation is in the table (the dataset skips such lines)
    dropping = Tokenizer(CFG.text, on_unknown="drop")
    with pytest.warns(UserWarning, match="dropped"):
        assert dropping.encode("a\u2603b") == tok.encode("ab")
    with pytest.raises(ValueError, match="no symbol"), pytest.warns(UserWarning):
        dropping.encode("\u2603\u2603")
    long_text = "The quick brown fox jumps. " * 800  # 21600 characters
    symbols = tok.normalize(long_text)
    ids = tok.encode(long_text)
    assert len(symbols) > 21000 and len(ids) == 2 * len(symbols) + 1 and max(ids) < tok.vocab_size
    with pytest.raises(ValueError, match="token id 999 at position 0"):
        tok.decode([0, 999, 0])


@pytest.fixture(scope="module")
def small_voice() -> VITS:
    torch.manual_seed(0)
    return VITS(CFG.replace(n_speakers=3, gin_channels=8), with_discriminator=False).eval()


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"tokens": []}, r"non-empty .* got shape \(1, 0\)"),
        ({"tokens": torch.zeros(2, 0, dtype=torch.long)}, r"non-empty .* got shape \(2, 0\)"),
        ({"tokens": [1, 2, CFG.text_encoder.n_vocab]}, rf"token id {CFG.text_encoder.n_vocab} is outside .*0\.\.{CFG.text_encoder.n_vocab - 1}"),
        ({"tokens": [1, -3, 2]}, r"token id -3 is outside"),
        ({"tokens": torch.tensor([1.0, 2.0])}, r"integer token ids, got dtype torch\.float32"),
        ({"tokens": [[1, 2, 3]], "lengths": [0]}, r"lengths \[0\] must hold one value in 1\.\.3"),
        ({"tokens": [[1, 2, 3]], "lengths": [4]}, r"lengths \[4\]"),
        ({"tokens": [[1, 2, 3]], "lengths": [3, 3]}, r"lengths \[3, 3\]"),
        ({"tokens": [1, 2, 3], "speaker": 3}, r"speaker id 3 out of range: this model has 3 speakers"),
        ({"tokens": [1, 2, 3], "speaker": None}, r"this model has 3 speakers: pass speaker ids"),
    ],
)
def test_infer_refuses_bad_inputs_clearly(small_voice: VITS, kwargs: dict, pattern: str) -> None:
    kwargs = {"speaker": 0, **kwargs}
    with torch.no_grad(), pytest.raises(ValueError, match=pattern):
        small_voice.infer(**kwargs)


def test_infer_accepts_the_edges(small_voice: VITS) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        one = small_voice.infer([5], speaker=1, generator=gen, max_frames=40)
        batch = small_voice.infer([[1, 2, 3], [4, 5, 0]], lengths=[3, 2], speaker=[0, 2], generator=gen, max_frames=40)
    assert one.audio.shape[0] == 1 and torch.isfinite(one.audio).all()
    assert batch.audio.shape[0] == 2 and torch.isfinite(batch.audio).all()
    assert batch.durations[1, 2] == 0  # the padded token gets no frames


# ============================================================================ training faults
def _trainer(out_dir: Path, cls=SurgicalTrainer, plan: SurgeryPlan | None = None, data=None, **cfg) -> SurgicalTrainer:
    cfg.setdefault("progress", False)
    cfg.setdefault("seed", 0)
    cfg.setdefault("keep_last", 0)
    return cls(tiny_model(), plan or SurgeryPlan.cadence(), data if data is not None else make_batches(),
               out_dir=out_dir, config=TrainConfig(**cfg))


class _Poisoned(SurgicalTrainer):
    """``generator_losses`` returns ``poison`` (NaN or inf) on the calls listed in ``bad_calls``."""

    poison = float("nan")
    bad_calls: frozenset[int] = frozenset()
    calls = 0

    def generator_losses(self, batch, out, disc_out=None):
        losses = super().generator_losses(batch, out, disc_out)
        if self.calls in self.bad_calls:
            losses = {k: v * self.poison for k, v in losses.items()}
        self.calls += 1
        return losses


@pytest.mark.parametrize("poison", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nonfinite_loss_is_skipped_counted_logged_and_k_in_a_row_stop(tmp_path: Path, poison, caplog) -> None:
    trainer = _trainer(tmp_path, _Poisoned, save_every=2, max_consecutive_nonfinite=3)
    trainer.poison = poison
    trainer.bad_calls = frozenset({1, 4, 5, 6})  # one isolated bad step, then three in a row
    with caplog.at_level(logging.WARNING, logger="vits_surgery.surgery.trainer"):
        with pytest.raises(NonFiniteLossError, match=rf"3 consecutive .*stopped at step 3.*{re.escape(str(tmp_path))}"):
            trainer.fit(10)
    assert trainer.step == 3 and trainer.skipped_steps == 4
    assert "non-finite loss or gradient, update skipped (1 in a row, 1 in total)" in caplog.text
    assert "(3 in a row, 4 in total)" in caplog.text
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    last = rundir.latest_checkpoint(tmp_path)
    assert last.name == "step_00000002" and not (tmp_path / ".lock").exists()
    good = vits_surgery.load(last)  # the last good checkpoint is intact and loads
    assert all(torch.isfinite(p).all() for p in good.parameters())
    resumed = _trainer(tmp_path)
    resumed.fit(4, resume=True)
    assert resumed.step == 4 and resumed.skipped_steps == 1  # the count survives the checkpoint


@pytest.mark.parametrize("plan", ["cadence", "flow"])
@pytest.mark.parametrize("field", ["spec", "wav"])
def test_corrupt_batch_is_skipped_not_trained_on(tmp_path: Path, plan: str, field: str, caplog) -> None:
    """A cadence step never sees the spectrogram through a loss (MAS reads it under no_grad), so
    the loss alone would stay finite: the trainer checks its inputs."""
    batches = make_batches()
    corrupt = getattr(batches[1], field)
    corrupt[(0,) * (corrupt.dim() - 1) + (5,)] = float("nan")  # e.g. a NaN that slipped into a cache
    before = {n: p.detach().clone() for n, p in tiny_model().named_parameters()}
    plan_ = SurgeryPlan.cadence() if plan == "cadence" else SurgeryPlan(train=["flow"])
    trainer = _trainer(tmp_path, plan=plan_, data=batches[:2], save_every=0)
    with caplog.at_level(logging.WARNING, logger="vits_surgery.surgery.trainer"):
        logs = trainer.training_step(batches[0])
        assert "skipped" not in logs
        after_good = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        logs = trainer.training_step(batches[1])
    assert logs["skipped"] == 1.0 and trainer.skipped_steps == 1 and trainer.step == 1
    assert "['u1'] holds NaN/inf" in caplog.text
    assert any(not torch.equal(after_good[n], before[n]) for n in before)  # the good batch trained
    assert all(torch.equal(p, after_good[n]) for n, p in trainer.model.named_parameters())  # the bad one did not


class _Exploding(SurgicalTrainer):
    """Multiplies every generator loss by ``factor`` (a gradient explosion on demand)."""

    factor = 1e6

    def generator_losses(self, batch, out, disc_out=None):
        return {k: v * self.factor for k, v in super().generator_losses(batch, out, disc_out).items()}


def test_exploding_gradients_are_clipped_and_the_norm_reported(tmp_path: Path, caplog) -> None:
    trainer = _trainer(tmp_path, _Exploding, save_every=0, grad_clip=5.0, log_every=1)
    trainer.callbacks.append(RunLogger())
    seen = []

    def before_step(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    trainer.optimizers["generator"].register_step_pre_hook(before_step)
    with caplog.at_level(logging.INFO, logger="vits_surgery.surgery.trainer"):
        trainer.fit(2)
    assert re.search(r"step 2: .*grad_norm/generator=\d", caplog.text)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["grad_norm/generator"] > 1e3 for r in rows)  # the pre-clip norm is what is reported
    assert len(seen) == 2 and all(n <= 5.0 * (1 + 1e-4) for n in seen)  # the optimizer saw clipped gradients
    assert trainer.skipped_steps == 0


def test_infinite_gradient_with_finite_loss_is_skipped(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, save_every=0)
    param = next(p for p in trainer.model.duration_predictor.parameters() if p.requires_grad)
    before = param.detach().clone()
    handle = param.register_hook(lambda g: g * float("inf"))
    logs = trainer.training_step(make_batches()[0])
    handle.remove()
    assert math.isfinite(logs["gen/dur"]) and logs["skipped"] == 1.0 and trainer.skipped_steps == 1
    assert torch.equal(param, before)


class _PoisonedDiscriminator(SurgicalTrainer):
    """``discriminator_losses`` returns NaN on the calls listed in ``bad_calls``."""

    bad_calls: frozenset[int] = frozenset()
    calls = 0

    def discriminator_losses(self, batch, out):
        losses = super().discriminator_losses(batch, out)
        if self.calls in self.bad_calls:
            losses = {k: v * float("nan") for k, v in losses.items()}
        self.calls += 1
        return losses


def test_nonfinite_discriminator_loss_skips_the_whole_window(tmp_path: Path, caplog) -> None:
    """A GAN plan: a NaN discriminator loss means no optimizer step at all, the generator's included."""
    plan = SurgeryPlan(train=["decoder"], train_discriminator=True)
    trainer = _trainer(tmp_path, _PoisonedDiscriminator, plan=plan, save_every=0)
    trainer.bad_calls = frozenset({1})
    batches = make_batches()
    logs = trainer.training_step(batches[0])
    assert "skipped" not in logs and trainer.step == 1
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    opt_state = {k: sorted(float(st["step"]) for st in o.state.values()) for k, o in trainer.optimizers.items()}
    lrs = [s.get_last_lr() for s in trainer.schedulers.values()]
    with caplog.at_level(logging.WARNING, logger="vits_surgery.surgery.trainer"):
        logs = trainer.training_step(batches[1])
    assert math.isnan(logs["loss/discriminator"]) and math.isfinite(logs["loss/generator"])
    assert logs["skipped"] == 1.0 and logs["skipped/generator"] == 1.0 and logs["skipped/discriminator"] == 1.0
    assert trainer.step == 1 and trainer.skipped_steps == 1
    assert "update skipped (1 in a row, 1 in total)" in caplog.text
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == []  # neither the decoder nor the discriminator moved
    assert [s.get_last_lr() for s in trainer.schedulers.values()] == lrs
    assert {k: sorted(float(st["step"]) for st in o.state.values()) for k, o in trainer.optimizers.items()} == opt_state
    assert all(p.grad is None for p in trainer.model.parameters())  # nothing carried into the next window
    logs = trainer.training_step(batches[0])  # the next window trains both again
    assert "skipped" not in logs and trainer.step == 2
    moved = {n.split(".")[0] for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"decoder", "discriminator"}


def _failing_writes(monkeypatch, fail_on_call: int) -> list[Path]:
    """Patch the atomic writer: the ``fail_on_call``-th file gets half its bytes, then ENOSPC."""
    real = _files.atomic_write
    calls: list[Path] = []

    class _Full:
        def __init__(self, f) -> None:
            self.f = f

        def write(self, data: bytes) -> int:
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    def patched(path, write):
        calls.append(Path(path))
        if len(calls) == fail_on_call:
            return real(path, lambda f: write(_Full(f)))
        return real(path, write)

    monkeypatch.setattr(_files, "atomic_write", patched)
    return calls


@pytest.mark.parametrize("fail_on", [4, 5, 6], ids=["weights", "trainer_state", "plan_json"])
def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch, fail_on: int) -> None:
    calls = _failing_writes(monkeypatch, fail_on)  # 3 files per save: the 2nd save (step 4) fails
    trainer = _trainer(tmp_path, save_every=2)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit(6)
    assert calls[fail_on - 1].name in (native.MODEL_FILE, rundir.STATE_FILE, "plan.json")
    assert trainer.step == 4 and not (tmp_path / ".lock").exists()
    assert [s for s, _ in rundir.checkpoint_dirs(tmp_path)] == [2]  # no partial step_4 replaced anything
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002"]  # nothing half-written left
    previous = rundir.latest_checkpoint(tmp_path)
    assert rundir.load_trainer_state(previous)["step"] == 2
    vits_surgery.load(previous)
    monkeypatch.undo()  # space is freed: the run resumes from step 2 and saves again
    resumed = _trainer(tmp_path, save_every=2)
    resumed.fit(4, resume=True)
    assert [s for s, _ in rundir.checkpoint_dirs(tmp_path)] == [2, 4]


def test_a_stale_temporary_checkpoint_is_not_carried_into_the_next_save(tmp_path: Path) -> None:
    """A process killed mid-save leaves ``.step_N.tmp``; the next save of step N starts it afresh."""
    stale = tmp_path / "checkpoints" / ".step_00000002.tmp"
    stale.mkdir(parents=True)
    (stale / f".{rundir.STATE_FILE}.tmp-99999").write_bytes(b"half a file")
    (stale / "leftover.bin").write_bytes(b"x")
    _trainer(tmp_path, save_every=2).fit(2)
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "step_00000002").iterdir()) == [
        native.MODEL_FILE, "plan.json", rundir.STATE_FILE,
    ]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002"]


@pytest.mark.parametrize("damage", ["truncated_weights", "truncated_state", "other_config"])
def test_resume_from_a_damaged_checkpoint_names_the_file(tmp_path: Path, damage: str) -> None:
    _trainer(tmp_path, save_every=1).fit(1)
    last = rundir.latest_checkpoint(tmp_path)
    if damage == "truncated_weights":
        _cut(last / native.MODEL_FILE, last / native.MODEL_FILE, 0.5)
        target, pattern = native.MODEL_FILE, "truncated or corrupt"
    elif damage == "truncated_state":
        _cut(last / rundir.STATE_FILE, last / rundir.STATE_FILE, 0.5)
        target, pattern = rundir.STATE_FILE, "truncated or corrupt"
    else:  # weights of a model with another width
        native.save(VITS(preset("tiny", inter_channels=8)), last)
        target, pattern = native.MODEL_FILE, "does not fit the model: misshaped: "
    with pytest.raises(native.CheckpointError, match=rf"{re.escape(str(last / target))}.*{pattern}"):
        _trainer(tmp_path).fit(2, resume=True)
    assert not (tmp_path / ".lock").exists()


def test_alignment_does_not_undo_the_torch_thread_setting() -> None:
    """numba's OpenMP pool, started by the first MAS call, sets the OpenMP thread count that torch
    shares; on a loaded machine the extra threads made every later op ~100x slower. Checked in a
    fresh process, where that first call happens."""
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from vits_surgery.align import maximum_path\n"
        "maximum_path(torch.randn(2, 5, 20), torch.ones(2, 5, 20), backend='numba')\n"
        "print(torch.get_num_threads())\n"
    )
    env = dict(os.environ, NUMBA_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[-1] == "1", out.stderr[-2000:]


def test_prune_removes_a_half_deleted_checkpoint(tmp_path: Path) -> None:
    for step, files in ((1, 2), (2, 1), (3, 2), (4, 2), (5, 1)):  # 2 and 5 are incomplete
        d = rundir.step_dir(tmp_path, step)
        d.mkdir(parents=True)
        (d / rundir.STATE_FILE).write_bytes(b"x")
        if files == 2:
            (d / native.MODEL_FILE).write_bytes(b"x")
    assert rundir.latest_checkpoint(tmp_path).name == "step_00000004"  # incomplete ones are never resumed from
    removed = sorted(p.name for p in rundir.prune_checkpoints(tmp_path, keep_last=2))
    assert removed == ["step_00000001", "step_00000002"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_00000003", "step_00000004", "step_00000005",  # newer than the newest: left alone
    ]
