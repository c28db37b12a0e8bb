"""Shared pieces of the transplant benchmark: paths, sentence splits, corpus folders, voices.

Corpus layout (default ``bench_data/transplant`` in the repository, ignored by git; or
``$TRANSPLANT_DATA``)::

    <root>/<speaker>/<split>/metadata.csv     id|text|text  (LJSpeech style)
    <root>/<speaker>/<split>/wavs/<id>.wav    22050 Hz mono 16-bit
    <root>/<speaker>/corpus.json              how it was made
    <root>/calibration.json                   measured rates and the fitted flite stretches

Speakers: ``R`` (the joe voice, recipient), ``D_cad`` (joe at length_scale 1.35), ``D_tim``
(a flite voice at joe's rate), ``D`` (that flite voice 1.35x slower than joe). Splits:
``train`` (donor training data), ``test`` (held-out sentences every table is measured on),
``ref`` (held-out sentences whose embeddings make each speaker's centroid).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = Path(os.environ.get("TRANSPLANT_DATA", REPO / "bench_data" / "transplant"))
# The LJSpeech sentence list, one sentence per line (see docs/results/README.md)
SENTENCES = Path(os.environ.get("VITS_SURGERY_SENTENCES", REPO / "bench_data" / "ljspeech_sentences.txt"))
SAMPLE_RATE = 22050
SPLITS = ("train", "test", "ref", "calib")
SLOW = 1.35
"""Donor slow-down factor of D_cad and D."""


def read_sentences(path: Path = SENTENCES) -> list[str]:
    """Non-empty lines, whitespace collapsed; ``a|b|c`` lines keep the last field."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("|")[-1].strip()
        if line:
            out.append(" ".join(line.split()))
    return out


def split_sentences(n_sentences: int, sizes: dict[str, int], seed: int = 1234) -> dict[str, list[int]]:
    """Disjoint sentence indices per split, from one seeded permutation.

    The order of ``SPLITS`` decides which split takes the first indices, so growing
    ``train`` never changes ``test`` or ``ref``.
    """
    order = list(range(n_sentences))
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for name in ("test", "ref", "calib", "train"):
        n = sizes.get(name, 0)
        out[name] = order[start : start + n]
        start += n
    if start > n_sentences:
        raise ValueError(f"asked for {start} sentences but the list has {n_sentences}")
    return out


def utt_id(index: int) -> str:
    """Id of sentence ``index``: the same for every speaker (parallel corpora)."""
    return f"LJS-{index:05d}"


@dataclass(frozen=True)
class Item:
    """One utterance of a corpus folder."""

    id: str
    text: str
    wav: Path


def write_metadata(folder: Path, rows: list[tuple[str, str]]) -> None:
    """``metadata.csv`` with ``id|text|text`` lines."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.csv", "w", encoding="utf-8") as f:
        for uid, text in rows:
            f.write(f"{uid}|{text}|{text}\n")


def read_corpus(folder: Path, limit: int | None = None) -> list[Item]:
    """Items of ``metadata.csv`` in ``folder`` sorted by id (the same ids for every speaker)."""
    items = []
    for line in (folder / "metadata.csv").read_text(encoding="utf-8").splitlines():
        cols = line.split("|")
        items.append(Item(cols[0], cols[-1], folder / "wavs" / f"{cols[0]}.wav"))
    items.sort(key=lambda it: it.id)
    return items[:limit] if limit else items


# ----------------------------------------------------------------------------- voices
def load_joe():
    """The Piper joe voice as a VITS model (eval mode) and its tokenizer."""
    import vits_surgery
    from vits_surgery.convert.piper_voice import find_joe_voice
    from vits_surgery.text import Tokenizer

    model = vits_surgery.load(find_joe_voice()[0])
    model.eval()
    return model, Tokenizer.from_config(model.config)


def joe_synthesize(model, tokenizer, text: str, seed: int, length_scale: float = 1.0):
    """One utterance by a joe-like model: ``(audio [N] float32, token ids, durations [T_x])``.

    The noise comes from a generator seeded with ``seed``, so the same seed gives the same
    draws at every length scale (paired utterances).
    """
    import torch

    ids = tokenizer.encode(text)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = model.infer(torch.tensor(ids), generator=gen, length_scale=length_scale)
    n = int(out.audio_lengths[0])
    audio = out.audio[0, 0, :n].float().cpu().numpy()
    return audio, ids, out.durations[0].long().cpu().tolist()


def flite_synthesize(voice: str, text: str, stretch: float, f0_mean: float | None = None) -> np.ndarray:
    """One flite utterance resampled to 22050 Hz (float32, the engine's own level)."""
    from vits_surgery.audio import load_audio, resample

    with tempfile.TemporaryDirectory(prefix="flite_") as tmp:
        txt, raw = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
        txt.write_text(text + "\n", encoding="utf-8")
        cmd = [
            "flite",
            "-voice",
            voice,
            "-f",
            str(txt),
            "-o",
            str(raw),
            "--setf",
            f"duration_stretch={stretch:.4f}",
        ]
        if f0_mean is not None:
            cmd += ["--setf", f"int_f0_target_mean={f0_mean:.2f}"]
        subprocess.run(cmd, check=True, env=dict(os.environ, LC_ALL="C"), capture_output=True)
        audio, sr = load_audio(raw)
    return resample(audio, sr, SAMPLE_RATE)


def rms(audio: np.ndarray) -> float:
    """Root mean square of the samples."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def level_match(audio: np.ndarray, target_rms: float, peak: float = 0.95) -> np.ndarray:
    """Scale to ``target_rms`` (loudness is then no cue between voices), peak capped at ``peak``."""
    gain = target_rms / max(rms(audio), 1e-9)
    gain = min(gain, peak / max(float(np.max(np.abs(audio))), 1e-9))
    return (audio * gain).astype(np.float32)


def dump_json(path: Path, data: object) -> None:
    """Pretty JSON (numpy scalars converted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(data, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n"
    )
