"""Benchmark one SurgicalTrainer step for the full, cadence and timbre plans.

Usage:
    python benchmarks/train_step.py [--plans full cadence timbre] [--rounds 5] [--warmup 2]
                                    [--threads 2] [--clock process|thread]
                                    [--preset coqui_vits] [--json out.json] [--no-memory]
                                    [--coqui-python PATH | --no-coqui]

Workload: ``VITS(preset)`` with its discriminator, built from a fixed seed, and one batch of 4
utterances of about 3 s (plans: ``full``, ``cadence``, ``timbre``, ``accent`` and
``timbre-mel``, the timbre organs trained on mel + KL without the discriminator): 66150 / 63945 / 61740 / 59535 samples at 22.05 kHz (258 / 249 / 241 /
232 spectrogram frames) and 91 / 87 / 83 / 79 random token ids, the batch of the Coqui numbers
of the Coqui anchor numbers quoted in ``docs/benchmarks.md``. Spectrograms are precomputed (they belong to the
data pipeline). A step is ``SurgicalTrainer.training_step``: forward, losses, backward, AdamW
(and for GAN plans the discriminator update).

Timing: one process holds a model and a trainer per plan and runs their steps round-robin
(``--rounds`` rounds after ``--warmup`` untimed ones), so load changes on a shared machine hit
every plan alike. Reported: median and minimum wall time and CPU time per step, GFLOP per step
(``torch.utils.flop_counter`` on one step), each plan's ratios to the full step, and the spread
of the per-round ratios (each round times every plan back to back, so a round's ratio compares
steps run under the same load). With
``--clock thread --threads 1`` the CPU time is the calling thread's own: no OpenMP worker spins
in it, the steadiest number on a loaded machine. The FLOP ratio does not depend on the machine.

Memory: each plan first runs in its own subprocesses (model, trainer, 2 steps) whose peak RSS
(``ru_maxrss``, reported in MiB) is reported twice: with a cold numba cache (an empty
``NUMBA_CACHE_DIR``: the alignment kernels compile in that process) and with a warm one (the
cache the cold run left). The JSON (``--json``) holds every raw number, the command line and the
machine.

Coqui part (``--preset coqui_vits`` only): a subprocess of ``--coqui-python`` (a Python with
``coqui-tts``; default ``$VITS_SURGERY_COQUI_PYTHON``, else this Python if it imports ``TTS``)
builds Coqui TTS's own ``Vits`` from ``VitsConfig()`` (with its discriminator, seed 0) and times,
on the same batch (our wav, spectrogram, tokens and lengths, handed over in a ``.pt`` file; the
mel target is Coqui's ``spec_to_mel`` of that spectrogram) and the same thread count and clock,
what one iteration of Coqui's trainer runs minus data loading (``format_batch_on_device``, the
spectrogram extraction, is precomputed as on our side): for optimizer 0 (discriminator) and then
1 (generator) ``train_step(batch, criterion[i], i)`` with ``get_criterion()``, ``backward``,
``clip_grad_norm_`` (``grad_clip``), the AdamW ``step`` of ``get_optimizer()[i]`` and
``zero_grad``, then ``model.zero_grad``. Two Coqui variants: ``full`` (all flags off), compared
with our ``full`` plan, and ``freeze-cadence`` (``VitsArgs`` ``freeze_encoder``, ``freeze_PE``,
``freeze_flow_decoder``, ``freeze_waveform_decoder`` set, ``freeze_DP`` off, applied by
``on_epoch_start`` as the trainer does: only the duration predictor and the discriminator
train, but the whole forward, decoder and discriminator still run), compared with our ``cadence``
plan. Its steps join the round-robin (each round runs our plans, then Coqui's variants), so the
per-round ratios ours/Coqui compare steps run under the same load. Without a Coqui Python the
part is skipped with a loud "NOT measured" message (``--no-coqui`` skips it quietly).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import coqui_python, cpu_name  # noqa: E402

LENGTHS = (66150, 63945, 61740, 59535)
TOKENS = (91, 87, 83, 79)
# Coqui variant timed against each of our plans
COQUI_VARIANTS = {"full": "full", "cadence": "freeze-cadence"}
COQUI_FLAGS = {
    "full": {},
    "freeze-cadence": {
        "freeze_encoder": True,
        "freeze_PE": True,
        "freeze_flow_decoder": True,
        "freeze_waveform_decoder": True,
        "freeze_DP": False,
    },
}

# Timing harness run by the Coqui interpreter: builds Coqui's own Vits from VitsConfig() per variant
# and runs what one iteration of Coqui's Trainer runs for a GAN model (without data loading) on the
# batch it is given. Job as JSON in argv; then one JSON command per stdin line, one reply per
# stdout line prefixed with "@coqui " (anything else Coqui prints is ignored).
COQUI_HARNESS = r"""
import json, resource, sys, time
job = json.loads(sys.argv[1])

def say(obj):
    sys.stdout.write("@coqui " + json.dumps(obj) + "\n")
    sys.stdout.flush()

try:
    import importlib.metadata as md
    import torch
    torch.set_num_threads(job["threads"])
    from torch.utils.flop_counter import FlopCounterMode
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import Vits
    from TTS.utils.audio.torch_transforms import spec_to_mel, wav_to_spec
except Exception as err:
    say({"error": f"{type(err).__name__}: {err}"})
    sys.exit(0)

clock = time.thread_time if job["clock"] == "thread" else time.process_time
data = torch.load(job["batch"])

def build(flags):
    config = VitsConfig()
    for key, value in flags.items():
        if not hasattr(config.model_args, key):
            raise AttributeError(f"VitsArgs has no field {key!r}")
        setattr(config.model_args, key, value)
    torch.manual_seed(job["seed"])
    model = Vits.init_from_config(config)
    model.train()
    model.on_epoch_start(None)  # the Trainer's epoch-start callback: applies the freeze flags
    optimizers = model.get_optimizer()
    clip = config.grad_clip
    clips = list(clip) if isinstance(clip, (list, tuple)) else [clip] * len(optimizers)
    return {"model": model, "criteria": model.get_criterion(), "optimizers": optimizers, "clips": clips,
            "config": config}

try:
    variants = {name: build(flags) for name, flags in job["variants"].items()}
    any_v = next(iter(variants.values()))
    model0, ac = any_v["model"], any_v["config"].audio
    if any_v["config"].mixed_precision:
        raise RuntimeError("VitsConfig().mixed_precision is on; this harness runs fp32 only")
    wav, spec, spec_lens = data["wav"], data["spec"], data["spec_lengths"]
    tokens, token_lens = data["tokens"], data["token_lengths"]
    if int(tokens.max()) >= model0.args.num_chars:
        raise ValueError(f"token id {int(tokens.max())} >= Coqui num_chars {model0.args.num_chars}")
    # the mel target format_batch_on_device would build, from our spectrogram (its padding is zero)
    mel = spec_to_mel(spec=spec, n_fft=ac.fft_size, num_mels=ac.num_mels, sample_rate=ac.sample_rate,
                      fmin=ac.mel_fmin, fmax=ac.mel_fmax)
    # data check: Coqui's own spectrogram of our waveform against the spectrogram we hand over (ours
    # was taken before the waveform was cut to T_y * hop samples: only the last 2 frames of the
    # longest item can differ)
    own = wav_to_spec(wav, ac.fft_size, ac.hop_length, ac.win_length, center=False)[..., : spec.shape[-1]]
    own = own * (torch.arange(own.shape[-1])[None, None, :] < spec_lens[:, None, None])
    spec_diff = (own - spec).abs()
    batch = {"tokens": tokens, "token_lens": token_lens, "spec": spec, "spec_lens": spec_lens, "mel": mel,
             "mel_lens": spec_lens, "waveform": wav, "speaker_names": None, "language_names": None,
             "audio_unique_names": None}
except Exception as err:
    say({"error": f"{type(err).__name__}: {err}"})
    sys.exit(0)

def step(v):
    model = v["model"]
    b = model.format_batch(dict(batch))
    for idx, optimizer in enumerate(v["optimizers"]):
        _, loss_dict = model.train_step(b, v["criteria"][idx], idx)
        loss_dict["loss"].backward()
        if v["clips"][idx] and v["clips"][idx] > 0:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, v["clips"][idx])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        {k: float(x) for k, x in loss_dict.items()}  # the trainer detaches the losses for its logs
    model.zero_grad(set_to_none=True)

def count(params):
    return sum(p.numel() for p in params)

meta = {
    "coqui_tts": md.version("coqui-tts"),
    "coqui_tts_trainer": md.version("coqui-tts-trainer"),
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "num_chars": model0.args.num_chars,
    "spec_max_abs_diff_vs_coqui_wav_to_spec": float(spec_diff.max()),
    "spec_max_abs_diff_vs_coqui_wav_to_spec_but_last_2_frames": float(spec_diff[..., :-2].max()),
    "spec_max_abs": float(spec.abs().max()),
    "variants": {
        name: {
            "flags": job["variants"][name],
            "trainable": count(p for p in v["model"].parameters() if p.requires_grad),
            "trainable_generator": count(p for k, p in v["model"].named_parameters()
                                         if p.requires_grad and not k.startswith("disc.")),
            "trainable_organs": sorted({k.split(".")[0] for k, p in v["model"].named_parameters() if p.requires_grad}),
            "optimizer_params": [count(p for g in o.param_groups for p in g["params"]) for o in v["optimizers"]],
            "grad_clip": v["clips"],
        }
        for name, v in variants.items()
    },
}
say({"ready": meta})
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["cmd"] == "quit":
        break
    try:
        v = variants[cmd["variant"]]
        if cmd["cmd"] == "flops":
            with FlopCounterMode(display=False) as counter:
                step(v)
            say({"gflop": counter.get_total_flops() / 1e9})
        else:
            w0, c0 = time.perf_counter(), clock()
            step(v)
            say({"wall": time.perf_counter() - w0, "cpu": clock() - c0})
    except Exception as err:
        say({"error": f"{type(err).__name__}: {err}"})
        sys.exit(0)
say({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
"""


def _batch(config):
    import numpy as np
    import torch

    from vits_surgery import audio
    from vits_surgery.batch import Batch

    rng = np.random.default_rng(0)
    hop = config.audio.hop_length
    frames = [audio.num_frames(n, config.audio.n_fft, hop) for n in LENGTHS]
    t_y = max(frames)
    wav = torch.zeros(len(LENGTHS), 1, max(LENGTHS))
    for i, n in enumerate(LENGTHS):
        wav[i, 0, :n] = torch.from_numpy((0.1 * rng.standard_normal(n)).astype("float32"))
    spec = audio.spectrogram(wav, config.audio)[..., :t_y]  # [B, F, T_y]
    wav = wav[..., : t_y * hop]  # the Batch contract: N = T_y * hop
    spec_lengths = torch.tensor(frames)
    spec = spec * (torch.arange(t_y)[None, None, :] < spec_lengths[:, None, None])
    tokens = torch.zeros(len(TOKENS), max(TOKENS), dtype=torch.long)
    for i, n in enumerate(TOKENS):
        tokens[i, :n] = torch.from_numpy(rng.integers(1, config.text_encoder.n_vocab, n))
    return Batch(tokens, torch.tensor(TOKENS), spec, spec_lengths, wav, spec_lengths * hop)


def _trainer(plan_name: str, preset_name: str, device: str = "cpu", amp: str | None = None):
    import torch

    from vits_surgery.config import preset
    from vits_surgery.models.vits import VITS
    from vits_surgery.surgery.plan import SurgeryPlan
    from vits_surgery.surgery.trainer import SurgicalTrainer, TrainConfig

    plans = {
        "full": SurgeryPlan.full,
        "cadence": SurgeryPlan.cadence,
        "timbre": SurgeryPlan.timbre,
        "accent": SurgeryPlan.accent,
        # the timbre organs on mel + KL alone: no discriminator, no adversarial terms
        "timbre-mel": lambda: SurgeryPlan(
            train=SurgeryPlan.timbre().train,
            train_discriminator=False,
            loss_weights={"gen/adv": 0.0, "gen/fm": 0.0},
            name="timbre-mel",
        ),
    }
    torch.manual_seed(0)
    model = VITS(preset(preset_name))
    config = TrainConfig(progress=False, seed=0, save_every=0, log_every=0, device=device, amp=amp)
    return SurgicalTrainer(model, plans[plan_name](), out_dir=os.devnull, config=config)


class CoquiProcess:
    """The Coqui harness in a subprocess of ``python``: one training step per request."""

    def __init__(self, python: str, job: dict, env: dict[str, str]):
        self.python = python
        self._stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: Coqui may log a lot
        self.proc = subprocess.Popen(
            [python, "-c", COQUI_HARNESS, json.dumps(job)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )

    def receive(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@coqui "):
                reply = json.loads(line[len("@coqui ") :])
                if "error" in reply:
                    raise RuntimeError(f"{self.python}: {reply['error']}")
                return reply
        self.proc.wait()
        self._stderr.seek(0)
        raise RuntimeError(f"{self.python} exited ({self.proc.returncode}): {self._stderr.read()[-2000:]}")

    def request(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def close(self) -> dict:
        """Ends the harness; its peak RSS (both Coqui models) when it ends cleanly."""
        out = {}
        if self.proc.poll() is None:
            try:
                out = self.request(cmd="quit")
            except (RuntimeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return out


def time_plans(args: argparse.Namespace, coqui_py: str | None = None) -> tuple[dict[str, dict], dict]:
    """Round-robin timing of every plan in this process, and of the Coqui variants in the harness
    run by ``coqui_py`` (each round: our plans, then Coqui's). Returns our results and the Coqui
    part (``{"error": ...}`` when it could not run)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    trainers = {name: _trainer(name, args.preset) for name in args.plans}
    batch = _batch(next(iter(trainers.values())).model.config)
    clock = time.thread_time if args.clock == "thread" else time.process_time
    coqui: dict = {}
    harness = None
    tmp = tempfile.TemporaryDirectory(prefix="train-step-batch-")
    variants = [COQUI_VARIANTS[name] for name in args.plans if name in COQUI_VARIANTS]
    if coqui_py is not None:
        path = Path(tmp.name) / "batch.pt"
        torch.save(
            {
                k: getattr(batch, k)
                for k in ("tokens", "token_lengths", "spec", "spec_lengths", "wav", "wav_lengths")
            },
            path,
        )
        job = {
            "batch": str(path),
            "threads": args.threads,
            "clock": args.clock,
            "seed": 0,
            "variants": {v: COQUI_FLAGS[v] for v in variants},
        }
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        try:
            harness = CoquiProcess(coqui_py, job, env)
            coqui = {"python": coqui_py, "variants": {v: {"variant": v, "wall": [], "cpu": []} for v in variants}}
        except OSError as err:  # no such interpreter
            coqui = {"error": f"{coqui_py}: {err}"}

    def coqui_failed(err: Exception) -> None:
        nonlocal harness
        coqui.clear()
        coqui["error"] = str(err)
        harness.close()
        harness = None

    def coqui_step(variant: str, cmd: str) -> dict:
        time.sleep(0.1)  # let the idle OpenMP workers of the other process go to sleep
        reply = harness.request(cmd=cmd, variant=variant)
        time.sleep(0.1)
        return reply

    try:
        if harness is not None:
            try:
                ready = harness.receive()["ready"]
                coqui.update({k: v for k, v in ready.items() if k != "variants"})
                for v in variants:
                    coqui["variants"][v].update(ready["variants"][v])
            except RuntimeError as err:
                coqui_failed(err)
        out: dict[str, dict] = {}
        for name, trainer in trainers.items():
            with FlopCounterMode(display=False) as counter:  # the first warm-up step
                trainer.training_step(batch)
            out[name] = {
                "plan": name,
                "wall": [],
                "cpu": [],
                "gflop": counter.get_total_flops() / 1e9,
                "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
                "terms": list(trainer.step_plan.terms),
            }
        if harness is not None:
            try:
                for v in variants:  # Coqui's first warm-up step, FLOP-counted too
                    coqui["variants"][v]["gflop"] = coqui_step(v, "flops")["gflop"]
            except RuntimeError as err:
                coqui_failed(err)
        for r in range(args.warmup - 1 + args.rounds):
            for name, trainer in trainers.items():
                w0, c0 = time.perf_counter(), clock()
                trainer.training_step(batch)
                if r >= args.warmup - 1:
                    out[name]["wall"].append(time.perf_counter() - w0)
                    out[name]["cpu"].append(clock() - c0)
            if harness is not None:
                try:
                    for v in variants:
                        reply = coqui_step(v, "step")
                        if r >= args.warmup - 1:
                            coqui["variants"][v]["wall"].append(reply["wall"])
                            coqui["variants"][v]["cpu"].append(reply["cpu"])
                except RuntimeError as err:
                    coqui_failed(err)
            print(f"round {r + 1} done", file=sys.stderr)
        if harness is not None:
            coqui.update(harness.close())
            harness = None
    finally:
        if harness is not None:
            harness.close()
        tmp.cleanup()
    return out, coqui


def peak_rss(args: argparse.Namespace) -> dict:
    """Model, trainer and 2 steps of one plan; peak RSS in MiB (``ru_maxrss`` is in KiB on Linux)."""
    import torch

    torch.set_num_threads(args.threads)
    trainer = _trainer(args.memory, args.preset)
    after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    batch = _batch(trainer.model.config)
    for _ in range(2):
        trainer.training_step(batch)
    return {
        "after_build_mib": after_build,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _ratios(r: dict, full: dict, key: str) -> list[float]:
    """Per-round ratio full / plan of one clock (the rounds run every plan back to back)."""
    return [f / x for f, x in zip(full[key], r[key], strict=True)]


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def _row(r: dict, full: dict) -> str:
    def ratio(key: str, fn) -> str:
        return "1" if r is full else f"1/{fn(full[key]) / fn(r[key]):.1f}"

    terms = ", ".join(t.split("/")[1] for t in r["terms"]) + (" (+D)" if "gen/adv" in r["terms"] else "")
    rss = r.get("rss")
    memory = f"{rss['cold']['peak_mib']:.0f} / {rss['warm']['peak_mib']:.0f} MiB" if rss else "not measured"
    return (
        f"| {r['plan']} | {statistics.median(r['wall']):.3f} / {min(r['wall']):.3f} | "
        f"{statistics.median(r['cpu']):.3f} / {min(r['cpu']):.3f} | {r['gflop']:.0f} | "
        f"{ratio('wall', statistics.median)} / {ratio('wall', min)} | "
        f"{ratio('cpu', statistics.median)} / {ratio('cpu', min)} | 1/{full['gflop'] / r['gflop']:.1f} | "
        f"{r['trainable'] / 1e6:.2f} M | {terms} | {memory} |"
    )


def _ratio_row(r: dict, full: dict) -> str:
    return (
        f"| {r['plan']} | 1/{_spread(_ratios(r, full, 'wall'))} | 1/{_spread(_ratios(r, full, 'cpu'))} | "
        f"{len(r['wall'])} |"
    )


COQUI_LABELS = {
    "full": "full vs Coqui full step",
    "freeze-cadence": "cadence vs Coqui freeze-flag cadence (only DP + disc trainable)",
}


def coqui_comparisons(results: dict[str, dict], coqui: dict) -> list[dict]:
    """Ours / Coqui for each of our plans that has a Coqui counterpart (ratio < 1: ours is faster)."""
    rows = []
    for plan, variant in COQUI_VARIANTS.items():
        if plan not in results or variant not in coqui.get("variants", {}):
            continue
        ours, theirs = results[plan], coqui["variants"][variant]
        row = {"ours": plan, "coqui": variant, "rounds": len(ours["wall"])}
        for key in ("wall", "cpu"):
            row[f"ours_{key}_median"] = statistics.median(ours[key])
            row[f"ours_{key}_min"] = min(ours[key])
            row[f"coqui_{key}_median"] = statistics.median(theirs[key])
            row[f"coqui_{key}_min"] = min(theirs[key])
            row[f"ratio_{key}_median"] = row[f"ours_{key}_median"] / row[f"coqui_{key}_median"]
            row[f"ratio_{key}_min"] = row[f"ours_{key}_min"] / row[f"coqui_{key}_min"]
            row[f"ratio_{key}_per_round"] = [o / c for o, c in zip(ours[key], theirs[key], strict=True)]
        row["ratio_gflop"] = ours["gflop"] / theirs["gflop"]
        row["ours_trainable"], row["coqui_trainable"] = ours["trainable"], theirs["trainable"]
        rows.append(row)
    return rows


def _coqui_row(c: dict, coqui: dict) -> str:
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    theirs = coqui["variants"][c["coqui"]]
    return (
        f"| {COQUI_LABELS[c['coqui']]} | {c['ours_wall_median']:.3f} / {c['ours_wall_min']:.3f} | "
        f"{c['coqui_wall_median']:.3f} / {c['coqui_wall_min']:.3f} | "
        f"{c['ratio_wall_median']:.2f} / {c['ratio_wall_min']:.2f} | "
        f"{c['ours_cpu_median']:.3f} / {c['ours_cpu_min']:.3f} | {c['coqui_cpu_median']:.3f} / {c['coqui_cpu_min']:.3f} | "
        f"{c['ratio_cpu_median']:.2f} / {c['ratio_cpu_min']:.2f} | {spread(c['ratio_wall_per_round'])} | "
        f"{spread(c['ratio_cpu_per_round'])} | {c['ratio_gflop']:.2f} ({theirs['gflop']:.0f} Coqui) | "
        f"{c['ours_trainable'] / 1e6:.2f} M / {c['coqui_trainable'] / 1e6:.2f} M |"
    )


def _memory(name: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    """Peak RSS of one plan with a cold, then a warm numba cache (separate processes)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        for state in ("cold", "warm"):
            cmd = [sys.executable, __file__, "--memory", name, "--threads", str(args.threads), "--preset", args.preset]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**env, "NUMBA_CACHE_DIR": cache})
            out[state] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="+", default=["full", "cadence", "timbre"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("process", "thread"), default="process")
    parser.add_argument("--preset", default="coqui_vits")
    parser.add_argument("--json", default=None, help="write raw results here")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument(
        "--coqui-python",
        default=os.environ.get("VITS_SURGERY_COQUI_PYTHON"),
        help="Python with coqui-tts for the Coqui part (default $VITS_SURGERY_COQUI_PYTHON, "
        "else this Python if it imports TTS)",
    )
    parser.add_argument("--no-coqui", action="store_true", help="skip the Coqui part")
    parser.add_argument("--memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(peak_rss(args)))
        return
    if "full" not in args.plans:
        args.plans.insert(0, "full")
    coqui_py = None
    coqui_missing = None
    if not args.no_coqui:
        if args.preset != "coqui_vits":
            coqui_missing = f"the Coqui part compares the coqui_vits preset only, not {args.preset}"
        else:
            coqui_py = coqui_python(args.coqui_python)
            if coqui_py is None:
                coqui_missing = (
                    "Coqui TTS is not importable here and no --coqui-python was given "
                    "(a Python with coqui-tts installed)"
                )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    load_start = os.getloadavg()[0]
    rss = {}
    if not args.no_memory:  # first, while this process is small: Linux keeps ru_maxrss across exec
        rss = {name: _memory(name, args, env) for name in args.plans}
    results, coqui = time_plans(args, coqui_py)
    if coqui_missing:
        coqui = {"error": coqui_missing}
    if "error" in coqui:
        print(f"\n!!! Coqui part NOT measured: {coqui['error']}; our side only !!!\n", file=sys.stderr)
    comparisons = coqui_comparisons(results, coqui) if "variants" in coqui else []
    for name in rss:
        results[name]["rss"] = rss[name]
    import torch

    machine = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
    }
    print(
        f"torch {torch.__version__}, {machine['cpu']} ({machine['logical_cpus']} logical CPUs), "
        f"{args.threads} thread(s), {args.clock} CPU clock, preset {args.preset}, batch 4 x ~3 s, "
        f"{args.warmup} warm-up + {args.rounds} timed rounds; 1-min load average {load_start:.1f} at start, "
        f"{machine['load_average_1min']['end']:.1f} at end"
    )
    print()
    print(
        "| plan | wall s/step (median / min) | CPU s/step (median / min) | GFLOP/step | "
        "vs full: wall | CPU | GFLOP | trainable | terms | peak RSS (cold / warm numba cache) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.plans:
        print(_row(results[name], results["full"]))
    print()
    print("| plan | per-round ratio to full, wall: median (range) | CPU: median (range) | rounds |")
    print("|---|---|---|---|")
    for name in args.plans:
        if name != "full":
            print(_ratio_row(results[name], results["full"]))
    if comparisons:
        print()
        print(
            f"Coqui TTS {coqui['coqui_tts']} (trainer {coqui['coqui_tts_trainer']}, torch {coqui['torch']}, "
            f"{coqui['threads']} thread(s)) in {coqui['python']}: its Vits(VitsConfig()) train_step for "
            "optimizer 0 (disc) and 1 (gen), backward, clip, AdamW; same batch, same rounds. Ratios are "
            "ours / Coqui (< 1: ours faster)."
        )
        print()
        print(
            "| step | ours wall s (median / min) | Coqui wall s (median / min) | ours/Coqui wall (median / min) | "
            "ours CPU s (median / min) | Coqui CPU s (median / min) | ours/Coqui CPU (median / min) | "
            "per-round ours/Coqui wall: median (range) | CPU: median (range) | ours/Coqui GFLOP | "
            "trainable ours / Coqui |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for c in comparisons:
            print(_coqui_row(c, coqui))
    elif not args.no_coqui:
        print()
        print(f"| Coqui | not measured: {coqui.get('error', 'no Coqui counterpart among the plans')} |")
    if args.json:
        payload = {
            "command": [Path(sys.executable).name, *sys.argv],
            "machine": machine,
            "plans": results,
            "coqui": None if args.no_coqui else coqui,
            "coqui_comparisons": comparisons,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main()
