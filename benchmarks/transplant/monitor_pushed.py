"""A timbre transplant pushed too far, watched by the RejectionMonitor.

Usage:
    python benchmarks/transplant/monitor_pushed.py --donor D [--lr 2e-3] [--steps 300]
        [--every 25] [--patience 3] [--sentences 8] [--donor-heldout 4] [--tol METRIC=VALUE ...]
        [--batch-size 4] [--out DIR] [--data bench_data/transplant] [--device cpu] [--threads 2]

The run: the regrown joe voice (``run_transplants.regrown_joe``), a decoder-only plan without
the discriminator (``SurgeryPlan(train=("decoder",), train_discriminator=False,
loss_weights={"gen/adv": 0, "gen/fm": 0})``), a constant learning rate on
``<data>/<donor>/train`` with batch ``--batch-size``. A :class:`RejectionMonitor` measures every
``--every`` steps on the first ``--sentences`` recipient test utterances
(``<data>/R/test``): their recordings for ``recipient/mel``, their texts synthesized for the
artifact indicators and ``intelligibility/wer`` (pocketsphinx). The speaker similarity to the
recipient is recorded without a tolerance (a timbre transplant should lower it); ``--tol
metric=value`` overrides the others. The best checkpoint is ranked by the donor loss on the
first ``--donor-heldout`` utterances of ``<data>/<donor>/test``. The monitor stops the run after
``--patience`` evaluations in a row with a violation and keeps the best passing checkpoint in
``<out>/best`` (``<out>/run`` holds the final one).

Writes ``<out>/monitor.json`` (every evaluation: step, metrics, violations, donor loss; the
best step and folder, why the run stopped, wall seconds) and ``<out>/monitor.png`` (WER and
recipient mel against the step, violations marked, the best step drawn as a vertical line).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT, dump_json  # noqa: E402
from run_transplants import donor_loader, regrown_joe  # noqa: E402

logger = logging.getLogger("monitor_pushed")

PLAN_NAME = "decoder-only timbre, no discriminator"


def heldout_batches(root: Path, speaker: str, model: Any, n: int, batch_size: int) -> tuple[list, list[str]]:
    """(batches, texts) of the first ``n`` test utterances of ``speaker`` (sorted by id)."""
    from vits_surgery.data import TextAudioDataset, make_loader, read_ljspeech

    items = sorted(read_ljspeech(root / speaker / "test"), key=lambda it: it.id)[:n]
    data = TextAudioDataset(
        items,
        model.config,
        cache_dir=root / "cache" / speaker,
        max_seconds=30.0,
        on_bad="error",
    )
    batches = list(make_loader(data, batch_size=batch_size, shuffle=False))
    return batches, [it.text for it in items]


def plot(
    history: list[dict], best_step: int | None, path: Path, limits: dict[str, float] | None = None
) -> None:
    """WER and recipient mel against the step; violations as red crosses, the best step as a
    line, each metric's limit (``limits``) as a dotted line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    panels = [("intelligibility/wer", "WER"), ("recipient/mel", "recipient mel L1")]
    axes = fig.subplots(len(panels), 1, sharex=True)
    for ax, (key, label) in zip(axes, panels, strict=True):
        rows = [r for r in history if key in r["metrics"]]
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["metrics"][key] for r in rows], marker="o", markersize=3, color="tab:blue")
        bad = [r for r in rows if any(v.startswith(key) for v in r["violations"])]
        if bad:
            ax.scatter(
                [r["step"] for r in bad],
                [r["metrics"][key] for r in bad],
                marker="x",
                color="tab:red",
                zorder=3,
                label="beyond tolerance",
            )
        if (limits or {}).get(key) is not None:
            ax.axhline(limits[key], color="tab:gray", linestyle=":", label="tolerance limit")
        if best_step is not None:
            ax.axvline(best_step, color="tab:green", linestyle="--", label=f"best (step {best_step})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if not rows:
            ax.text(0.5, 0.5, f"{key} not measured", ha="center", va="center", transform=ax.transAxes)
        ax.legend(loc="best", fontsize=8)
    axes[-1].set_xlabel("step")
    axes[0].set_title("RejectionMonitor on a timbre transplant pushed too far")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def limits(monitor: Any) -> dict[str, float]:
    """metric -> the value beyond which it violates (from the baseline and the tolerance)."""
    from vits_surgery.surgery.monitor import _HIGHER_IS_BETTER, _RELATIVE

    out = {}
    for key, base in (monitor.baseline or {}).items():
        tol = monitor.tolerances.get(key)
        if tol is None:
            continue
        if key in _RELATIVE:
            out[key] = base * (1 + tol)
        else:
            out[key] = base - tol if key in _HIGHER_IS_BETTER else base + tol
    return out


def tolerance(spec: str) -> tuple[str, float | None]:
    """``metric=value`` or ``metric=none`` (record without checking)."""
    key, sep, value = spec.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--tol wants metric=value or metric=none, got {spec!r}")
    return key.strip(), None if value.strip().lower() == "none" else float(value)


def run(args: argparse.Namespace) -> dict:
    import vits_surgery
    from vits_surgery import RejectionMonitor, SurgeryPlan, SurgicalTrainer
    from vits_surgery.surgery.train_config import TrainConfig

    out: Path = args.out
    model = vits_surgery.load(args.recipient or regrown_joe(args.data))
    plan = SurgeryPlan(
        train=("decoder",), train_discriminator=False, loss_weights={"gen/adv": 0, "gen/fm": 0}
    )
    loader = donor_loader(args.data, args.donor, model, args.batch_size, args.seed)
    heldout, texts = heldout_batches(args.data, "R", model, args.sentences, args.batch_size)
    donor_val = None
    if args.donor_heldout > 0:
        donor_val, _ = heldout_batches(args.data, args.donor, model, args.donor_heldout, args.batch_size)
    monitor = RejectionMonitor(
        heldout,
        sentences=texts,
        every=args.every,
        patience=args.patience,
        tolerances=args.tol,
        donor_batches=donor_val,
        intelligibility=True,
        out_dir=out,
        save_best=True,
        seed=args.seed,
    )
    config = TrainConfig(
        lr=args.lr,
        lr_decay=1.0,
        seed=args.seed,
        device=args.device,
        save_every=0,
        keep_last=1,
        log_every=args.every,
        progress=False,
    )
    trainer = SurgicalTrainer(
        model, plan, train_data=loader, out_dir=out / "run", config=config, callbacks=[monitor]
    )
    t0 = time.time()
    trainer.fit(args.steps)
    wall = time.time() - t0
    history = [r.to_dict() for r in monitor.history]
    result = {
        "donor": args.donor,
        "plan": PLAN_NAME,
        "lr": args.lr,
        "lr_schedule": "constant",
        "batch_size": args.batch_size,
        "steps_asked": args.steps,
        "steps_run": trainer.step,
        "every": args.every,
        "patience": args.patience,
        "sentences": texts,
        "tolerances": monitor.tolerances,
        "limits": limits(monitor),
        "donor_heldout": args.donor_heldout,
        "baseline": monitor.baseline,
        "history": history,
        "best_step": monitor.best_step,
        "best_path": str(monitor.best_path) if monitor.best_path is not None else None,
        "stopped": trainer.stop_reason,
        "intelligibility_seconds": monitor.intelligibility_seconds,
        "wall_seconds": wall,
        "device": args.device,
        "threads": args.threads,
    }
    dump_json(out / "monitor.json", result)
    plot(history, monitor.best_step, out / "monitor.png", limits(monitor))
    logger.info(
        "%d steps in %.0f s; best step %s; stopped: %s; wrote %s",
        trainer.step,
        wall,
        monitor.best_step,
        trainer.stop_reason or "no (ran every step)",
        out / "monitor.json",
    )
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--donor", required=True, help="donor corpus under <data> (e.g. D or D_tim)")
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--lr", type=float, default=2e-3, help="constant learning rate")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25, help="monitor period in steps")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--sentences", type=int, default=8, help="recipient test sentences the monitor uses")
    ap.add_argument(
        "--donor-heldout",
        type=int,
        default=4,
        help="donor test utterances (<data>/<donor>/test) that rank the best checkpoint by donor loss; "
        "0 = the mean training loss ranks (then the recipient itself is never the best)",
    )
    ap.add_argument(
        "--tol",
        type=tolerance,
        action="append",
        default=[],
        help="monitor tolerance override metric=value or metric=none, repeatable "
        "(speaker/similarity is none unless given: a timbre transplant should lower it)",
    )
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None, help="default <data>/runs/monitor_pushed_<donor>")
    ap.add_argument("--recipient", type=Path, default=None, help="a saved voice instead of the regrown joe")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    args.tol = {"speaker/similarity": None, **dict(args.tol)}
    if args.out is None:
        args.out = args.data / "runs" / f"monitor_pushed_{args.donor}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
