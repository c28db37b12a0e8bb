"""How close donor durations come to the truth: boundaries within one frame and within 50 ms.

Usage:
    python benchmarks/cadence/alignment_accuracy.py [--sentences benchmarks/cadence/sentences.txt]
        [--n 40] [--voices kal,ked,slt_hts,joe_cad] [--routes forced,mas] [--work bench_data/align_bench]
        [--json docs/results/alignment_accuracy.json]

Ground truth:

* festival voices (``kal`` = kal_diphone, ``ked`` = ked_diphone, ``slt_hts`` =
  cmu_us_slt_arctic_hts) synthesize each sentence and write their own segment timings
  (``utt.save.segs``) and word spans (first and last segment of each word);
* ``joe_cad``: the joe voice at ``length_scale`` 1.35, whose per-token durations are exact.

Routes: ``textgrid`` (the festival truth written as an MFA-style TextGrid and read back: the
loss of the token mapping alone, festival voices only), ``forced`` (pocketsphinx forced alignment mapped onto joe's tokens, the library's
``donor_durations(source="forced")``) and ``mas`` (MAS through joe's regrown posterior encoder
and flow, as the VITS training path does; the regrowth is loaded from the regrow cache or made).

Scored on the final per-token durations (what the duration predictor learns): the start and
end of every word (word span = the blank before its first token to its last phone or length mark),
with the pause boundaries (word edges next to a pause of >= 50 ms) also counted apart, and
phone boundaries inside words whose tokens pair one-to-one with the festival phones. For
``forced`` the raw aligner output (10 ms frames) is scored too. Only utterances whose
festival words equal the transcript words are scored.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from vits_surgery.durations.phones import arpa_to_ipa, match_sequences  # noqa: E402
from vits_surgery.durations.segments import WordSpan, normalize_word, transcript_words  # noqa: E402
from vits_surgery.durations.tokens import PHONE, classify_tokens, token_word_index  # noqa: E402

logger = logging.getLogger("alignment_accuracy")
FESTIVAL_VOICES = {"kal": "kal_diphone", "ked": "ked_diphone", "slt_hts": "cmu_us_slt_arctic_hts"}
PAUSE_S = 0.05
TOL_S = 0.05


# ----------------------------------------------------------------------------- ground truth
def _scheme_string(text: str) -> str:
    return text.replace("\\", " ").replace('"', "'")


def festival_corpus(voice: str, sentences: list[str], out: Path) -> None:
    """Synthesize with festival ``voice``: ``<k>.wav``, ``<k>.segs`` and ``<k>.words`` (one process)."""
    out.mkdir(parents=True, exist_ok=True)
    if all((out / f"{k}.words").is_file() for k in range(len(sentences))):
        return
    lines = [f"(voice_{voice})"]
    for k, text in enumerate(sentences):
        base = out / str(k)
        lines += [
            f'(set! u (Utterance Text "{_scheme_string(text)}"))',
            "(utt.synth u)",
            f"(utt.save.wave u \"{base}.wav\" 'riff)",
            f'(utt.save.segs u "{base}.segs")',
            f'(set! fd (fopen "{base}.words" "w"))',
            '(mapcar (lambda (w) (format fd "%s %f %f\\n" (item.name w) '
            '(item.feat w "R:SylStructure.daughter1.daughter1.segment_start") '
            '(item.feat w "R:SylStructure.daughtern.daughtern.segment_end"))) (utt.relation.items u \'Word))',
            "(fclose fd)",
        ]
    script = out / "synth.scm"
    script.write_text("\n".join(lines) + "\n")
    subprocess.run(["festival", "-b", str(script)], check=True, capture_output=True, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})


def festival_truth(base: Path) -> tuple[list[WordSpan], list[tuple[float, float]]]:
    """Words (with phones) and pauses of one festival utterance."""
    segs, start = [], 0.0
    for line in base.with_suffix(".segs").read_text().splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] == "#":
            continue
        end = float(parts[0])
        segs.append((parts[2], start, end))
        start = end
    pauses = [(a, b) for lab, a, b in segs if lab == "pau" and b - a >= PAUSE_S]
    words = []
    for line in base.with_suffix(".words").read_text().splitlines():
        name, a, b = line.rsplit(" ", 2)
        a, b = float(a), float(b)
        phones = tuple((lab, s, e) for lab, s, e in segs if lab != "pau" and s >= a - 1e-4 and e <= b + 1e-4)
        words.append(WordSpan(normalize_word(name), a, b, phones))
    return words, pauses


def write_textgrid(path: Path, words: list[WordSpan], length: float) -> Path:
    """The festival truth as an MFA-style TextGrid (tiers ``words`` and ``phones``)."""
    from praatio import textgrid

    tg = textgrid.Textgrid()
    tg.addTier(textgrid.IntervalTier("words", [(w.start, w.end, w.text) for w in words], 0, length))
    phones = [(a, b, lab.upper()) for w in words for lab, a, b in w.phones if b > a]
    tg.addTier(textgrid.IntervalTier("phones", phones, 0, length))
    tg.save(str(path), format="long_textgrid", includeBlankSpaces=True)
    return path


# ----------------------------------------------------------------------------- scoring
def word_spans_from_durations(tokenizer, ids, durations, words: list[str], frame_s: float) -> list[tuple[float, float]]:
    """(start, end) seconds of each word from per-token frame counts."""
    kinds = classify_tokens(tokenizer, ids)
    owner = token_word_index(tokenizer, kinds, words)
    edges = np.concatenate([[0], np.cumsum(np.asarray(durations))]) * frame_s
    out = []
    for w in range(len(words)):
        pos = [k for k, o in enumerate(owner) if o == w]
        if not pos:
            out.append((float("nan"), float("nan")))
            continue
        first, last = pos[0], pos[-1]
        if first > 0 and kinds.kinds[first - 1] == "next":
            first -= 1
        if first > 0 and kinds.kinds[first - 1] == "blank":
            first -= 1
        while last + 2 < len(ids) and kinds.kinds[last + 1] == "blank" and kinds.kinds[last + 2] == "prev":
            last += 2
        out.append((float(edges[first]), float(edges[last + 1])))
    return out


def phone_starts_from_durations(tokenizer, ids, durations, truth: list[WordSpan], frame_s: float) -> list[tuple[float, float]]:
    """(predicted, true) start of every non-initial phone of the words whose tokens pair one-to-one."""
    kinds = classify_tokens(tokenizer, ids)
    owner = token_word_index(tokenizer, kinds, [w.text for w in truth])
    edges = np.concatenate([[0], np.cumsum(np.asarray(durations))]) * frame_s
    pairs = []
    for w, span in enumerate(truth):
        pos = [k for k, o in enumerate(owner) if o == w and kinds.kinds[k] == PHONE]
        if len(pos) < 2 or len(span.phones) < 2:
            continue
        a, who = [], []
        for p, (lab, _, _) in enumerate(span.phones):
            chars = list(arpa_to_ipa(lab.upper()))
            a += chars
            who += [p] * len(chars)
        idx = [who[j] for j in match_sequences(a, [kinds.symbols[k] for k in pos])]
        if sorted(set(idx)) != list(range(len(span.phones))):
            continue
        for p in range(1, len(span.phones)):
            k = pos[idx.index(p)]
            if k > 0 and kinds.kinds[k - 1] == "next":
                k -= 1
            if k > 0 and kinds.kinds[k - 1] == "blank":
                k -= 1
            pairs.append((float(edges[k]), span.phones[p][1]))
    return pairs


def score(pred: list[float], true: list[float], frame_s: float) -> dict:
    signed = np.asarray(pred, float) - np.asarray(true, float)
    signed = signed[np.isfinite(signed)]
    err = np.abs(signed)
    if not len(err):
        return {"n": 0}
    return {
        "n": int(len(err)),
        "within_1_frame": float(np.mean(err <= frame_s)),
        "within_50ms": float(np.mean(err <= TOL_S)),
        "median_error_ms": float(np.median(err) * 1000),
        "mean_signed_error_ms": float(np.mean(signed) * 1000),
    }


def boundary_lists(spans, truth_words: list[WordSpan], pauses) -> dict[str, tuple[list, list]]:
    pw, tw, pp, tp = [], [], [], []
    pause_edges = [p[0] for p in pauses] + [p[1] for p in pauses]
    for (a, b), t in zip(spans, truth_words, strict=False):
        for x, y in ((a, t.start), (b, t.end)):
            pw.append(x)
            tw.append(y)
            if any(abs(y - e) < 1e-3 for e in pause_edges):
                pp.append(x)
                tp.append(y)
    return {"word": (pw, tw), "pause": (pp, tp)}


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=Path, default=Path(__file__).with_name("sentences.txt"))
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--voices", default="kal,ked,slt_hts,joe_cad")
    ap.add_argument("--routes", default="forced,mas")
    ap.add_argument("--work", type=Path, default=REPO / "bench_data" / "align_bench")
    ap.add_argument("--json", type=Path, default=REPO / "docs/results/alignment_accuracy.json")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    sentences = [s.strip() for s in args.sentences.read_text().splitlines() if s.strip()][: args.n]
    routes = args.routes.split(",")

    import vits_surgery
    from vits_surgery.audio import load_audio, num_frames, resample
    from vits_surgery.convert.piper_voice import find_joe_voice
    from vits_surgery.durations.api import DonorUtterance, mas_durations, recipient_weights
    from vits_surgery.durations.forced import AlignmentError, forced_align
    from vits_surgery.durations.textgrid import read_textgrid
    from vits_surgery.durations.tokens import token_durations
    from vits_surgery.text import Tokenizer

    model, report = vits_surgery.load(find_joe_voice()[0], return_report=True)
    model.eval()
    regrow_note = None
    if "mas" in routes:
        from vits_surgery.regrowth import regrow

        grown = regrow(model, organs=("posterior_encoder", "duration_posterior"), report=report)
        regrow_note = {"cached": grown.cached, "wall_time_s": grown.wall_time}
        model.eval()
    tok = Tokenizer.from_config(model.config)
    cfg = model.config.audio
    sr, frame_s = cfg.sample_rate, cfg.hop_length / cfg.sample_rate

    results: dict = {"voices": {}}
    if args.json.is_file():  # routes run separately (e.g. mas later) merge into one file
        results = json.loads(args.json.read_text())
    results.update(n_sentences=len(sentences), frame_ms=frame_s * 1000, tolerance_ms=TOL_S * 1000)
    for voice in args.voices.split(","):
        t0 = time.time()
        items = []  # (text, audio at sr, truth words, pauses)
        if voice == "joe_cad":
            for k, text in enumerate(sentences):
                ids = tok.encode(text)
                with torch.no_grad():
                    out = model.infer(torch.tensor(ids), generator=torch.Generator().manual_seed(k), length_scale=1.35)
                audio = out.audio[0, 0, : int(out.audio_lengths[0])].numpy()
                dur = out.durations[0].long().tolist()
                words = transcript_words(text)
                spans = word_spans_from_durations(tok, ids, dur, words, frame_s)
                truth = [WordSpan(w, a, b) for w, (a, b) in zip(words, spans, strict=False)]
                edges = np.concatenate([[0], np.cumsum(dur)]) * frame_s
                pauses = [(truth[i].end, truth[i + 1].start) for i in range(len(truth) - 1)
                          if truth[i + 1].start - truth[i].end >= PAUSE_S]
                items.append((text, audio, truth, pauses, dur, edges))
        else:
            folder = args.work / voice
            festival_corpus(FESTIVAL_VOICES[voice], sentences, folder)
            for k, text in enumerate(sentences):
                truth, pauses = festival_truth(folder / str(k))
                if [w.text for w in truth] != transcript_words(text):
                    logger.info("%s %d: festival words differ from the transcript; skipped", voice, k)
                    continue
                audio, asr = load_audio(folder / f"{k}.wav")
                tg = write_textgrid(folder / f"{k}.TextGrid", truth, len(audio) / asr)
                items.append((text, resample(audio, asr, sr), truth, pauses, tg, None))
        synth_s = time.time() - t0
        audio_s = sum(len(it[1]) for it in items) / sr
        vres: dict = results["voices"].get(voice, {})
        vres.update(utterances=len(items), audio_seconds=audio_s, synthesis_seconds=synth_s)
        logger.info("%s: %d utterances, %.1f s of audio", voice, len(items), audio_s)
        for route in routes:
            lists: dict[str, tuple[list, list]] = {"word": ([], []), "pause": ([], []), "phone": ([], []),
                                                   "aligner_word": ([], [])}
            failed, t1, c1 = 0, time.time(), time.process_time()
            if route == "textgrid" and voice == "joe_cad":
                continue  # its truth is per token already
            for text, audio, truth, pauses, tg, _ in items:
                ids = tok.encode(text)
                n = num_frames(len(audio), cfg.n_fft, cfg.hop_length)
                if route == "forced":
                    try:
                        spans = forced_align(audio, sr, text)
                    except AlignmentError:
                        failed += 1
                        continue
                    dur = token_durations(tok, ids, spans, n, frame_s, recipient_weights(model, ids))
                    for s, t in zip(spans, truth, strict=False):
                        lists["aligner_word"][0].extend([s.start, s.end])
                        lists["aligner_word"][1].extend([t.start, t.end])
                elif route == "textgrid":
                    w = recipient_weights(model, ids)
                    dur = token_durations(tok, ids, read_textgrid(tg), n, frame_s, w)
                else:
                    dur = mas_durations(model, DonorUtterance("", text, ids, audio.astype(np.float32), n))
                words = transcript_words(text)
                pred = word_spans_from_durations(tok, ids, dur.tolist(), words, frame_s)
                for key, (p, t) in boundary_lists(pred, truth, pauses).items():
                    lists[key][0].extend(p)
                    lists[key][1].extend(t)
                if truth[0].phones:
                    for p, t in phone_starts_from_durations(tok, ids, dur.tolist(), truth, frame_s):
                        lists["phone"][0].append(p)
                        lists["phone"][1].append(t)
            wall = time.time() - t1
            vres[route] = {key: score(p, t, frame_s) for key, (p, t) in lists.items() if p}
            cpu = time.process_time() - c1
            vres[route].update(failed=failed, wall_seconds=wall, cpu_seconds=cpu,
                               seconds_per_audio_minute=wall / max(audio_s / 60, 1e-9),
                               cpu_seconds_per_audio_minute=cpu / max(audio_s / 60, 1e-9),
                               load_average=os.getloadavg()[0])
            logger.info("%s / %s: %s", voice, route, json.dumps(vres[route]))
        results["voices"][voice] = vres
    results["machine"] = {"cpu": _cpu(), "python": platform.python_version(), "torch": torch.__version__,
                          "threads": args.threads}
    if regrow_note is not None:
        results["regrow"] = regrow_note
    results.setdefault("commands", []).append("python benchmarks/cadence/alignment_accuracy.py " + " ".join(sys.argv[1:]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:  # noqa: BLE001
        return platform.processor()


if __name__ == "__main__":
    main()
