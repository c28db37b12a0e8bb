"""Run the transplants of the benchmark on the donor corpora of ``build_donors.py``.

Usage:
    python benchmarks/transplant/run_transplants.py [--data bench_data/transplant]
        [--runs cadence:D_cad,cadence:D,timbre:D_tim,timbre:D]
        [--cadence-steps 400 --cadence-lr 1e-3] [--timbre-steps 2000 --timbre-lr 2e-4]
        [--batch-size 8] [--duration-source auto|forced|mas] [--device cpu] [--threads 2]

1. The recipient: the Piper joe voice, imported, with the organs its inference graph lacks
   (posterior encoder, SDP posterior flows, discriminator) regrown by
   :func:`vits_surgery.regrow` and saved once to ``<data>/models/joe_regrown``.
2. Each run: a fresh copy of the regrown voice, ``SurgeryPlan.cadence()`` or
   ``SurgeryPlan.timbre()``, a :class:`SurgicalTrainer` on ``<data>/<donor>/train``, written to
   ``<data>/runs/<plan>_<donor>/`` (``run.json`` + ``metrics.jsonl`` from the run logger, the
   final checkpoint, and ``result.json`` with steps, learning rate, batch size, wall time and
   the speaking rate implied by the duration predictor on the test sentences every
   ``--probe-every`` steps, which needs no decoder).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT, dump_json, joe_synthesize, read_corpus  # noqa: E402

logger = logging.getLogger("run_transplants")


# ----------------------------------------------------------------------------- recipient
def regrown_joe(root: Path) -> Path:
    """Path of the regrown joe voice (native format); regrows and saves it the first time."""
    import vits_surgery
    from vits_surgery.convert.piper_voice import find_joe_voice

    path = root / "models" / "joe_regrown"
    if (path / "model.safetensors").is_file():
        return path
    model, report = vits_surgery.load(find_joe_voice()[0], return_report=True)
    t0 = time.time()
    result = vits_surgery.regrow(model, report=report, progress=False)
    logger.info("%s", result.summary())
    vits_surgery.save(model, path)
    dump_json(path / "regrow.json", {**result.to_dict(), "wall_seconds": time.time() - t0})
    return path


# ----------------------------------------------------------------------------- data
class TableTokenizer:
    """Token ids looked up in a ``{text: ids}`` table (``pack_gpu.py``), for machines without a
    phonemizer; the model's own tokenizer settings key the feature cache."""

    def __init__(self, table: dict[str, list[int]], model: Any) -> None:
        from vits_surgery.text import Tokenizer

        base = Tokenizer.from_config(model.config)
        self.table, self.cfg, self.on_unknown = table, base.cfg, base.on_unknown

    def encode(self, text: str) -> list[int]:
        if text not in self.table:
            raise ValueError(f"no token ids for {text!r} in tokens.json")
        return list(self.table[text])


def donor_loader(root: Path, donor: str, model: Any, batch_size: int, seed: int):
    """Length-bucketed loader over ``<root>/<donor>/train`` (features cached under ``<root>/cache``)."""
    from vits_surgery.data import TextAudioDataset, make_loader, read_ljspeech

    items = read_ljspeech(root / donor / "train")
    table = root / donor / "train" / "tokens.json"
    tokenizer = (
        TableTokenizer(json.loads(table.read_text(encoding="utf-8")), model) if table.is_file() else None
    )
    data = TextAudioDataset(
        items, model.config, tokenizer=tokenizer, cache_dir=root / "cache" / donor, max_seconds=30.0
    )
    logger.info("%s: %s", donor, data.report)
    return make_loader(data, batch_size=batch_size, seed=seed)


class DurationProbe:
    """Callback: phones/s implied by the predicted durations on fixed test sentences.

    Runs only the text encoder and the duration predictor (seeded noise), so it is cheap and
    measures the cadence organ alone.
    """

    def __init__(self, texts: list[str], every: int, seed: int = 0) -> None:
        from vits_surgery.evaluate import count_phones

        self.texts, self.every, self.seed = texts, every, seed
        self.phones = count_phones(texts)
        self.history: list[dict[str, float]] = []

    def rate(self, model: Any, tokenizer: Any) -> float:
        """Mean phones/s over the sentences (noise_scale_w of the model's config)."""
        from vits_surgery.evaluate import rate_from_durations

        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        rates = []
        try:
            with torch.no_grad():
                for i, (text, n) in enumerate(zip(self.texts, self.phones, strict=True)):
                    ids = torch.tensor([tokenizer.encode(text)], device=next(model.parameters()).device)
                    enc = model.encode_text(ids, torch.tensor([ids.shape[1]], device=ids.device))
                    gen = torch.Generator(device=ids.device).manual_seed(self.seed + i)
                    d = model.predict_durations(enc, None, model.config.noise_scale_w, 1.0, gen)
                    rates.append(
                        rate_from_durations(n, d[0].cpu(), model.hop_length, model.config.audio.sample_rate)
                    )
        finally:
            for m, flag in flags:
                m.training = flag
        return float(sum(rates) / len(rates))

    def record(self, trainer: Any, step: int, tokenizer: Any) -> None:
        self.history.append({"step": step, "phones_per_second": self.rate(trainer.model, tokenizer)})
        logger.info(
            "step %d: duration-predictor rate %.3f phones/s", step, self.history[-1]["phones_per_second"]
        )


class VoiceProbe:
    """Callback: median F0 and resemblyzer cosine to the recipient's and the donor's centroids.

    Synthesizes a few test sentences (seed = sentence index, as the report does); the centroids
    come from ``<data>/eval/ref_<speaker>.npy`` (written by ``report.py``; without them only F0
    is measured).
    """

    def __init__(self, root: Path, donor: str, every: int, n: int = 4) -> None:
        import numpy as np

        self.items = read_corpus(root / "R" / "test", n)
        self.every, self.history = every, []
        self.refs = {
            k: np.load(root / "eval" / f"ref_{k}.npy")
            for k in ("R", donor)
            if (root / "eval" / f"ref_{k}.npy").is_file()
        }

    def record(self, trainer: Any, step: int, tokenizer: Any) -> None:
        from vits_surgery.evaluate import f0_stats, similarity_to, speaker_embeddings

        model = trainer.model
        flags = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            audios = [
                joe_synthesize(model, tokenizer, it.text, int(it.id.split("-")[-1]))[0] for it in self.items
            ]
        finally:
            for m, flag in flags:
                m.training = flag
        wavs = [(a, model.config.audio.sample_rate) for a in audios]
        row = {"step": step, "f0_median": f0_stats(wavs).median}
        if self.refs:
            emb = speaker_embeddings(wavs)
            row.update(
                {f"similarity_{k}": float(similarity_to(emb, ref).mean()) for k, ref in self.refs.items()}
            )
        self.history.append(row)
        logger.info("step %d: %s", step, " ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "step"))


class OutOfTime(Exception):
    """Raised by the time-budget callback to end ``fit`` early (the run is kept)."""


def _callbacks(run_dir: Path, probe: Any, tokenizer: Any, budget_s: float | None) -> list[Any]:
    from vits_surgery.surgery.callbacks import Callback, RunLogger

    class _Probe(Callback):
        def on_fit_start(self, trainer: Any) -> None:
            self.t0 = time.time()
            if probe is not None:
                probe.record(trainer, trainer.step, tokenizer)

        def on_step_end(self, trainer: Any, step: int, logs: dict[str, float]) -> None:
            if probe is not None and step % probe.every == 0:
                probe.record(trainer, step, tokenizer)
            if budget_s is not None and time.time() - self.t0 > budget_s:
                raise OutOfTime(f"time budget of {budget_s:.0f} s spent at step {step}")

    return [RunLogger(run_dir, every=5), _Probe()]


def _metrics(run_dir: Path, every: int = 25) -> list[dict[str, float]]:
    """Every ``every``-th step of ``metrics.jsonl`` (loss curves for result.json)."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in rows if r["step"] % every == 0]


# ----------------------------------------------------------------------------- one run
def with_discriminator(model: Any) -> Any:
    """The model itself, or a copy with a fresh discriminator when it has none."""
    from vits_surgery.models.vits import VITS

    if model.discriminator is not None:
        return model
    logger.warning("the recipient has no discriminator: a fresh one trains from scratch")
    fresh = VITS(model.config, with_discriminator=True)
    missing = fresh.load_state_dict(model.state_dict(), strict=False).missing_keys
    if any(not k.startswith("discriminator.") for k in missing):
        raise RuntimeError(f"generator weights missing after the copy: {missing}")
    return fresh.eval()


def make_plan(plan_name: str, args: argparse.Namespace) -> Any:
    """``SurgeryPlan.cadence()``, or ``SurgeryPlan.timbre()`` / its variant from the options."""
    from vits_surgery import SurgeryPlan

    if plan_name == "cadence":
        return SurgeryPlan.cadence()
    preset = SurgeryPlan.timbre()
    kwargs: dict[str, Any] = {"train": preset.train, "name": preset.name}
    if args.timbre_organs:
        kwargs["train"] = tuple(args.timbre_organs.split(","))
    if args.no_discriminator:  # mel + KL only: no adversarial terms, no discriminator
        kwargs.update(train_discriminator=False, loss_weights={"gen/adv": 0.0, "gen/fm": 0.0})
    if getattr(args, "stft_weight", 0):
        from vits_surgery import MultiResolutionSTFTLoss

        kwargs["loss_terms"] = [MultiResolutionSTFTLoss(weight=args.stft_weight)]
    if getattr(args, "lr_scale", None):
        kwargs["lr_scale"] = {k: float(v) for k, v in (x.split("=") for x in args.lr_scale.split(","))}
    return SurgeryPlan(**kwargs)


def make_trainer(
    root: Path, plan_name: str, donor: str, lr: float, steps: int, run_dir: Path, args: argparse.Namespace
):
    """(trainer, probe) for one run on a fresh copy of the regrown recipient."""
    import vits_surgery
    from vits_surgery import SurgicalTrainer
    from vits_surgery.surgery.train_config import TrainConfig
    from vits_surgery.text import Tokenizer

    model = vits_surgery.load(args.recipient or regrown_joe(root))
    plan = make_plan(plan_name, args)
    if plan.train_discriminator is not False and plan_name == "timbre":
        model = with_discriminator(model)
    tokenizer = Tokenizer.from_config(model.config)
    loader = donor_loader(root, donor, model, args.batch_size, args.seed)
    probe = None
    if args.probe_every > 0 and plan_name == "cadence":
        probe = DurationProbe([it.text for it in read_corpus(root / "R" / "test")], args.probe_every)
    elif args.probe_every > 0:
        probe = VoiceProbe(root, donor, args.probe_every)
    config = TrainConfig(
        lr=lr,
        lr_decay=TrainConfig.decay_to(args.lr_end, max(1, steps)),
        seed=args.seed,
        device=args.device,
        save_every=0,
        keep_last=1,
        log_every=args.log_every,
        progress=False,
        amp=args.amp,
    )
    callbacks = _callbacks(run_dir, probe, tokenizer, args.time_budget)
    trainer = SurgicalTrainer(
        model, plan, train_data=loader, out_dir=run_dir, config=config, callbacks=callbacks
    )
    if plan_name == "cadence" and args.duration_source is not None:
        from vits_surgery.durations.step import CadenceStep

        if trainer.cadence is None:
            raise SystemExit(f"--duration-source {args.duration_source}: this plan takes the full path (MAS)")
        trainer.cadence = CadenceStep.for_trainer(trainer, source=args.duration_source)
    return trainer, probe


def run_one(root: Path, plan_name: str, donor: str, steps: int, lr: float, args: argparse.Namespace) -> dict:
    """Train one transplant; returns (and writes) its ``result.json``."""
    import vits_surgery

    run_dir = (args.runs_dir or root / "runs") / f"{plan_name}_{donor}{args.tag}"
    trainer, probe = make_trainer(root, plan_name, donor, lr, steps, run_dir, args)
    t0, stopped = time.time(), None
    warmup = {}
    if plan_name == "timbre" and args.disc_warmup > 0 and trainer.resolved.train_discriminator:
        warmup = warm_up_discriminator(trainer, args.disc_warmup, run_dir / "disc_warmup")
    try:
        logs = trainer.fit(max_steps=steps)
    except OutOfTime as exc:
        logs, stopped = {}, str(exc)
        logger.warning("%s on %s: %s", plan_name, donor, exc)
    wall = time.time() - t0
    final = run_dir / "final"
    vits_surgery.save(trainer.model.cpu(), final)
    result = {
        "plan": plan_name,
        "donor": donor,
        "plan_detail": json.loads(trainer.plan.to_json()),
        "steps": trainer.step,
        "lr": lr,
        "lr_end": lr * args.lr_end,
        "batch_size": args.batch_size,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "amp": args.amp,
        "wall_seconds": wall,
        "seconds_per_step": wall / max(1, trainer.step),
        "stopped_early": stopped,
        "disc_warmup": warmup,
        "trainable_parameters": trainer.resolved.num_trainable(),
        "cadence": trainer.cadence.describe() if getattr(trainer, "cadence", None) is not None else None,
        "last_logs": logs,
        "probe": probe.history if probe else [],
        "metrics": _metrics(run_dir),
        "model": str(final),
    }
    dump_json(run_dir / "result.json", result)
    if args.export is not None:
        export_trained(trainer.model, plan_name, args.export / run_dir.name, result)
    logger.info("%s on %s: %d steps in %.0f s", plan_name, donor, trainer.step, wall)
    return result


def warm_up_discriminator(trainer: Any, steps: int, out_dir: Path) -> dict:
    """Train only the discriminator of ``trainer.model`` for ``steps`` steps on the same donor data
    and with the same training settings.

    For a recipient that travelled without its discriminator: the fresh one first learns to
    tell the donor's speech from the frozen recipient's reconstructions, so the decoder's first
    adversarial gradients are not noise. Returns steps, wall time and the last losses.
    """
    from vits_surgery import SurgeryPlan, SurgicalTrainer

    plan = SurgeryPlan(train=(), train_discriminator=True, name="discriminator warm-up")
    warm = SurgicalTrainer(
        trainer.model, plan, train_data=trainer.train_data, out_dir=out_dir, config=trainer.config
    )
    t0 = time.time()
    logs = warm.fit(max_steps=steps)
    from vits_surgery.surgery.freeze import apply_resolved

    apply_resolved(
        trainer.model, trainer.resolved, frozen_eval=trainer.plan.frozen_eval
    )  # the main plan again
    info = {
        "steps": warm.step,
        "seconds": time.time() - t0,
        "last_logs": {k: v for k, v in logs.items() if k.startswith("disc/")},
    }
    logger.info("discriminator warm-up: %s", info)
    return info


# ----------------------------------------------------------------------------- GPU hand-over
#: Organs a plan changes that inference uses (the posterior encoder and the discriminator only train).
INFERENCE_ORGANS = {"cadence": ("duration_predictor",), "timbre": ("decoder", "flow")}


def export_trained(model: Any, plan_name: str, prefix: Path, result: dict) -> list[Path]:
    """Write the inference organs a run changed, one fp16 safetensors file each (< 16 MiB), and its result.

    ``<prefix>.<organ>.safetensors`` and ``<prefix>.result.json``: small enough to come back
    from a device machine; :func:`import_exported` turns them into a run folder again.
    """
    from safetensors.torch import save_file

    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for organ in INFERENCE_ORGANS[plan_name]:
        tensors = {
            k: v.detach().to("cpu", torch.float16).contiguous()
            for k, v in getattr(model, organ).state_dict().items()
        }
        paths.append(prefix.with_name(f"{prefix.name}.{organ}.safetensors"))
        save_file(tensors, str(paths[-1]))
    dump_json(prefix.with_name(f"{prefix.name}.result.json"), result)
    return paths


def import_exported(root: Path, folder: Path, recipient: Path | None = None) -> list[Path]:
    """Rebuild ``<root>/runs/<name>/final`` from files :func:`export_trained` wrote (cast to fp32)
    onto ``recipient`` (default: the regrown joe voice)."""
    from safetensors.torch import load_file

    import vits_surgery

    done = []
    for res_path in sorted(folder.glob("*.result.json")):
        name = res_path.name[: -len(".result.json")]
        result = json.loads(res_path.read_text())
        model = vits_surgery.load(recipient or regrown_joe(root))
        for organ in INFERENCE_ORGANS[result["plan"]]:
            tensors = load_file(str(folder / f"{name}.{organ}.safetensors"))
            getattr(model, organ).load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
        run_dir = root / "runs" / name
        vits_surgery.save(model, run_dir / "final")
        result.update(model=str(run_dir / "final"), imported_from=str(folder), exported_dtype="float16")
        dump_json(run_dir / "result.json", result)
        done.append(run_dir)
    return done


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--runs", default="cadence:D_cad,cadence:D,timbre:D_tim,timbre:D")
    ap.add_argument("--cadence-steps", type=int, default=400)
    ap.add_argument("--cadence-lr", type=float, default=1e-3)
    ap.add_argument("--timbre-steps", type=int, default=2000)
    ap.add_argument("--timbre-lr", type=float, default=2e-4)
    ap.add_argument("--timbre-organs", default=None, help="comma-separated organs (default: the preset's)")
    ap.add_argument("--no-discriminator", action="store_true", help="timbre with mel + KL only")
    ap.add_argument("--stft-weight", type=float, default=0.0, help="timbre: add the multi-resolution STFT term")
    ap.add_argument("--lr-scale", default=None, help="timbre: organ=scale,... learning-rate multipliers")
    ap.add_argument(
        "--disc-warmup",
        type=int,
        default=0,
        help="timbre: first train the discriminator alone for this many steps",
    )
    ap.add_argument(
        "--lr-end",
        type=float,
        default=1.0,
        help="decay each run's lr exponentially to this fraction of it by its last step (1 = constant)",
    )
    ap.add_argument("--tag", default="", help="suffix of the run folder names")
    ap.add_argument(
        "--duration-source",
        choices=["auto", "forced", "mas"],
        default=None,
        help="cadence runs: the donor durations' source (default: the library's, auto)",
    )
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--probe-every",
        type=int,
        default=50,
        help="probe period in steps: duration rate (cadence) or F0 + similarity (timbre); 0 = none",
    )
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default=None, choices=[None, "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time-budget", type=float, default=None, help="stop a run after this many seconds")
    ap.add_argument("--runs-dir", type=Path, default=None, help="run folders go here (default <data>/runs)")
    ap.add_argument(
        "--export", type=Path, default=None, help="also write the changed inference organs (fp16) here"
    )
    ap.add_argument(
        "--import-exported", type=Path, default=None, help="rebuild runs from an --export folder and exit"
    )
    ap.add_argument(
        "--recipient",
        type=Path,
        default=None,
        help="a saved voice to use instead of <data>/models/joe_regrown",
    )
    ap.add_argument("--regrow-only", action="store_true", help="only make <data>/models/joe_regrown")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.import_exported is not None:
        for run_dir in import_exported(args.data, args.import_exported, args.recipient):
            logger.info("imported %s", run_dir)
        return
    if args.recipient is None:
        regrown_joe(args.data)
    if args.regrow_only:
        return
    for spec in args.runs.split(","):
        plan_name, _, donor = spec.partition(":")
        if plan_name not in ("cadence", "timbre") or not donor:
            raise SystemExit(f"bad run {spec!r}: use cadence:<donor> or timbre:<donor>")
        steps = args.cadence_steps if plan_name == "cadence" else args.timbre_steps
        lr = args.cadence_lr if plan_name == "cadence" else args.timbre_lr
        run_one(args.data, plan_name, donor, steps, lr, args)


if __name__ == "__main__":
    main()
