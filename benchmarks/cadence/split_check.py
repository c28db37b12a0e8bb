"""How the time of an aligned phone is shared among its tokens, heard without any training.

The cadence transplant's ``forced`` targets put each aligned phone's (or word's) time on the
model tokens that spell it: the blank before it, a stress mark, the phone itself. This check
asks what those targets sound like when the recipient speaks them directly, before a duration
predictor has learnt anything: for every test sentence of a donor, the donor's forced-alignment
durations are mapped onto joe's tokens with each share rule, joe synthesizes the sentence
with exactly those durations (``VITS.infer(durations=...)``), and pocketsphinx transcribes it.

Rows per donor:

- ``own``: joe with its own predicted durations (the recipient, same noise draws);
- ``uniform``: the donor's timing, each unit's time shared equally among its tokens;
- ``recipient``: the donor's timing, shared in proportion to joe's own predicted durations
  (noise-free, :func:`vits_surgery.durations.api.recipient_weights`);
- ``words``: the aligner's word times only (its phone times dropped), each word's time
  shared in proportion to joe's own predicted durations;
- ``truth`` (festival donors, whose corpora keep each sentence's segment times): the
  synthesizer's own phone times instead of the aligner's, shared equally. Against ``uniform``
  it says what the aligner's errors cost; against ``own``, what the donor's timing itself costs.

A share rule that costs words here costs them in every transplant trained on it.

Usage::

    python benchmarks/cadence/split_check.py [--data <data>] [--donors F_kal,F_awb] [--n 20]
        [--json docs/results/cadence_split_check.json]

``<data>`` defaults to ``$TRANSPLANT_DATA`` (the corpora of ``benchmarks/transplant/``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transplant"))
from common import DEFAULT_ROOT, SAMPLE_RATE, load_joe, read_corpus  # noqa: E402

# the rows from the forced aligner: donor_durations(weights=..., timing=...)
ALIGNED = {"uniform": ("uniform", "phones"), "recipient": ("recipient", "phones"), "words": ("recipient", "words")}
ROWS = ("truth", *ALIGNED)


def truth_spans(wav: Path, segs_path: Path, text: str, sample_rate: int):
    """Word spans whose phones are the synthesizer's own segment times (festival ``segs``).

    Festival writes phones, not words, so each phone (``pau`` aside) joins the transcript word
    whose forced-aligned span is nearest its midpoint; word edges are then the first and last
    of its true phones. Returns ``(spans, n_samples)``.
    """
    import soundfile as sf

    from vits_surgery.durations.forced import forced_align
    from vits_surgery.durations.segments import PhoneSpan, WordSpan

    audio, sr = sf.read(str(wav), dtype="float32")
    assert sr == sample_rate, (wav, sr)
    aligned = forced_align(audio, sr, text)
    phones, start = [], 0.0
    for label, end in json.loads(segs_path.read_text(encoding="utf-8")):
        if label != "pau":
            phones.append((label.upper(), start, float(end)))
        start = float(end)
    groups: list[list] = [[] for _ in aligned]
    for label, a, b in phones:
        mid = (a + b) / 2
        k = min(range(len(aligned)), key=lambda j: max(aligned[j].start - mid, mid - aligned[j].end, 0.0))
        groups[k].append(PhoneSpan(label, a, b))
    spans = []
    for w, group in zip(aligned, groups, strict=True):
        if not group:  # no true phone nearer this word than another: keep the aligner's span
            spans.append(w)
            continue
        spans.append(WordSpan(w.text, group[0].start, group[-1].end, tuple(group)))
    return spans, audio.shape[0]


def synth(model, ids: list[int], seed: int, durations: torch.Tensor | None = None,
          noise_scale_w: float | None = None):
    """joe's audio for ``ids`` (noise seeded by ``seed``); its own durations unless given, drawn at
    ``noise_scale_w`` (default: the config's)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = model.infer(torch.tensor(ids), generator=gen, noise_scale_w=noise_scale_w,
                          durations=None if durations is None else durations[None])
    return out.audio[0, 0, : int(out.audio_lengths[0])].float().numpy(), out.durations[0].long()


def share_stats(d: torch.Tensor, kinds) -> dict[str, float]:
    """Fraction of the frames on each token kind (phone, blank, separator, ...)."""
    total = float(d.sum())
    out: dict[str, float] = {}
    for kind in sorted(set(kinds.kinds)):
        out[kind] = sum(float(d[k]) for k, kd in enumerate(kinds.kinds) if kd == kind) / total
    return out


def run_donor(model, tokenizer, data: Path, donor: str, n: int, wanted: tuple[str, ...] = ROWS) -> dict:
    from vits_surgery.audio import num_frames, save_wav
    from vits_surgery.durations import donor_durations
    from vits_surgery.durations.tokens import classify_tokens, token_durations
    from vits_surgery.evaluate import evaluate_corpus

    items = read_corpus(data / donor / "test", n)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        wavs: dict[str, list[Path]] = {k: [] for k in ("own", *ROWS)}
        shares: dict[str, list[dict]] = {k: [] for k in ("own", *ROWS)}
        t0 = time.time()
        for it in items:
            seed = int(it.id.split("-")[-1])
            ids = tokenizer.encode(it.text)
            kinds = classify_tokens(tokenizer, ids)
            audio, own = synth(model, ids, seed)
            targets = {"own": own}
            segs = data / donor / "test" / "segs" / f"{it.id}.json"
            if "truth" in wanted and segs.is_file():  # the synthesizer's own phone times, shared equally as "uniform" does
                spans, n_samples = truth_spans(it.wav, segs, it.text, SAMPLE_RATE)
                cfg = model.config.audio
                frames = num_frames(n_samples, cfg.n_fft, cfg.hop_length)
                targets["truth"] = token_durations(tokenizer, ids, spans, frames, cfg.hop_length / cfg.sample_rate)
            for row in [r for r in ALIGNED if r in wanted]:
                weights, timing = ALIGNED[row]
                (d,) = donor_durations(model, [(it.wav, it.text)], source="forced", weights=weights, timing=timing)
                if d is None:
                    raise SystemExit(f"{donor}/{it.id}: the forced aligner could not align it")
                targets[row] = d
            for name, d in targets.items():
                a = audio if name == "own" else synth(model, ids, seed, d)[0]
                wavs[name].append(Path(tmp) / f"{name}_{it.id}.wav")
                save_wav(wavs[name][-1], a, SAMPLE_RATE)
                shares[name].append(share_stats(d, kinds))
        synth_s = time.time() - t0
        for name in [k for k in wavs if wavs[k]]:
            res = evaluate_corpus(wavs[name], [it.text for it in items], metrics=("rate", "wer"))
            kinds_seen = sorted({k for s in shares[name] for k in s})
            rows[name] = {
                "wer": res["wer"],
                "phones_per_s": res["rate"]["phones_per_second_pooled"],
                "frame_share": {k: sum(s.get(k, 0.0) for s in shares[name]) / len(items) for k in kinds_seen},
            }
    return {"donor": donor, "n": len(items), "synthesis_s": synth_s, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--donors", default="F_kal,F_awb")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"rows besides 'own' (default: {','.join(ROWS)})")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_joe()
    out = {"command": "python benchmarks/cadence/split_check.py " + " ".join(sys.argv[1:]), "donors": []}
    for donor in args.donors.split(","):
        r = run_donor(model, tokenizer, args.data, donor, args.n, tuple(args.rows.split(",")))
        out["donors"].append(r)
        print(f"\n{donor} ({r['n']} test sentences)")
        print("| durations | WER | phones/s | frame share: phone / blank / separator / mark |")
        print("|---|---|---|---|")
        for name, row in r["rows"].items():
            fs = row["frame_share"]
            print(f"| {name} | {row['wer']:.3f} | {row['phones_per_s']:.2f} | {fs.get('phone', 0):.2f} / {fs.get('blank', 0):.2f} / "
                  f"{fs.get('separator', 0):.2f} / {fs.get('next', 0) + fs.get('prev', 0):.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
