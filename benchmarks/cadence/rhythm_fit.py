"""Does a duration predictor fitted to a donor's word timings speak the donor's rhythm on new sentences?

A copy of the recipient's duration predictor is fitted to a foreign donor's forced-alignment
durations (``timing="words"``, the targets a cadence transplant trains on) on the cached
inputs, with the cadence run's optimizer settings (AdamW, betas 0.8 / 0.99, weight decay 0.01,
lr decaying exponentially). Every ``--eval-every`` steps the predictor's noise-free durations
are summed per word and scored with ``rhythm.py``'s tempo-blind word values against the
targets, on training sentences (the first 40: what it memorised) and on the 20 held-out test
sentences (what carries over). No audio is made: this isolates the fit from rendering and
from re-alignment.

Objectives (``--objective``):

- ``nll``: the stochastic predictor's likelihood of every token's duration (the VITS loss, and
  the cached cadence step's objective);
- ``words``: squared error of log word durations from the inference path, the word term alone;
- ``words+gaps``: the same with the pauses between words as units too (``log(frames + 1)``);
- ``both``: ``nll`` + ``words``;
- ``tokens+words``: ``words`` + the same squared log error on every token (the split inside a
  word then follows the targets' shares, the recipient's own).

The regression objectives fit the noise-free inference path (``infer`` with zero noise), which
is differentiable for the stochastic predictor as well.

Regularisers tried on ``nll`` (``--hidden-dropout P``, ``--hidden-noise S``: dropout or
Gaussian noise of S times the batch's std on the cached text hidden states).

Usage::

    python benchmarks/cadence/rhythm_fit.py --donor F_kal --objective nll --steps 400
    python benchmarks/cadence/rhythm_fit.py --donor F_kal --objective words --steps 200 --save runs/fit_F_kal_words

``--save <dir>`` writes the recipient with the fitted predictor to ``<data>/<dir>/final`` (plus a
``result.json`` from the donor's ``cadence_<donor>_words`` run if present), so ``report.py`` and
``rhythm.py`` can render and score it. Targets are cached in ``<data>/eval/rhythm_fit/<donor>.pt``.
For a festival donor (its corpus keeps the synthesizer's segment times) the test sentences are
also scored against the true word times: that separates what the targets lose (the aligner)
from what the fit loses.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "transplant"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import rhythm  # noqa: E402
from common import DEFAULT_ROOT, read_corpus  # noqa: E402

OBJECTIVES = ("nll", "words", "words+gaps", "both", "tokens+words")


def targets(root: Path, donor: str, recipient, tokenizer) -> dict[str, list[dict]]:
    """Per split: token ids, cached text hidden states, word-timing durations and word units."""
    path = root / "eval" / "rhythm_fit" / f"{donor}.pt"
    if path.is_file():
        return torch.load(path)
    from vits_surgery.durations import donor_durations
    from vits_surgery.durations.segments import transcript_words

    out: dict[str, list[dict]] = {}
    for split in ("train", "test"):
        rows = []
        for it in read_corpus(root / donor / split, None if split == "train" else 20):
            (d,) = donor_durations(recipient, [(it.wav, it.text)], source="forced", timing="words")
            if d is None:
                continue
            ids = tokenizer.encode(it.text)
            words = transcript_words(it.text)
            with torch.no_grad():
                enc = recipient.encode_text(torch.tensor(ids)[None], torch.tensor([len(ids)]))
            rows.append({"id": it.id, "ids": ids, "d": d, "words": words, "units": word_units(tokenizer, ids, words),
                         "phones": [rhythm.phone_count(w) for w in words], "hidden": enc.hidden[0].clone()})
        out[split] = rows
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def word_units(tokenizer, ids: list[int], words: list[str]) -> list[int]:
    """The transcript word each token speaks, -1 between words: phones (the library's
    ``token_word_index``), stress / length marks with their phone, a blank with the token after it
    (as ``token_durations`` shares time); separators, punctuation, BOS/EOS and their blanks: -1."""
    from vits_surgery.durations.tokens import classify_tokens, token_word_index

    token_kinds = classify_tokens(tokenizer, ids)
    kinds = token_kinds.kinds
    phone_word = token_word_index(tokenizer, token_kinds, words)
    n = len(kinds)
    out = [w if (w is not None and kinds[k] == "phone") else -1 for k, w in enumerate(phone_word)]
    for k, kind in enumerate(kinds):
        if kind == "next":
            out[k] = next((out[j] for j in range(k + 1, n) if kinds[j] == "phone"), -1)
        elif kind == "prev":
            out[k] = next((out[j] for j in range(k - 1, -1, -1) if kinds[j] == "phone"), -1)
    for k, kind in enumerate(kinds):
        if kind == "blank" and k + 1 < n and kinds[k + 1] in ("phone", "next", "prev"):
            out[k] = out[k + 1]
    return out


def predict_log_durations(model, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T_x] log frames per token on the predictor's noise-free inference path, with gradients."""
    zeros = hidden.new_zeros(hidden.shape[0], 2, hidden.shape[2])
    return (model.duration_predictor.infer(hidden, mask, g=None, noise_scale=0.0, noise=zeros) * mask)[:, 0]


def word_and_token_loss(logw: torch.Tensor, d: torch.Tensor, units: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``tokens+words``: mean squared log error per token (prediction ``exp(logw) + 0.5``, the
    inference's rounding on average; target clamped to half a frame) + :func:`word_terms`."""
    err = (torch.log(torch.exp(logw) + 0.5) - torch.log(d.clamp_min(0.5))) ** 2
    return torch.where(mask > 0, err, 0.0).sum() / mask.sum() + word_terms(logw, d, units)


def word_frames(d: torch.Tensor, row: dict) -> np.ndarray:
    s = np.zeros(len(row["words"]))
    for k, w in enumerate(row["units"]):
        if w >= 0:
            s[w] += float(d[k])
    return np.maximum(s, 1e-3)


def profile(model, rows: list[dict]) -> tuple[dict, dict, float]:
    """Word values of the model's noise-free durations and of the targets; total frames ratio."""
    out, tgt, num, den = {}, {}, 0.0, 0.0
    with torch.no_grad():
        for r in rows:
            h = r["hidden"][None]
            mask = torch.ones(1, 1, h.shape[-1])
            d = torch.ceil(torch.exp(predict_log_durations(model, h, mask)[0]))
            for store, dur in ((out, d), (tgt, r["d"])):
                wf = word_frames(dur, r)
                store[r["id"]] = {"words": r["words"], "values": rhythm.word_values(wf, r["phones"]).tolist(),
                                  "pause_fraction": 0.0, "final_lengthening": rhythm.final_lengthening(wf, r["phones"])}
            num += float(d.sum())
            den += float(r["d"].sum())
    return out, tgt, num / den


def score(model, base: dict, rows: list[dict], truth: dict | None = None) -> dict:
    """Distance and closure to the targets (and, given ``truth`` profiles, to the synthesizer's
    own word times: ``truth_distance``, ``truth_closure``); ``base``: the recipient's profiles of
    ``rows`` (:func:`profile`), the closures' reference."""
    mine, tgt, frames = profile(model, rows)
    d_base = rhythm.compare(base, tgt)["distance"]
    c = rhythm.compare(mine, tgt)
    out = {"distance": c["distance"], "closure": rhythm.closure(d_base, c["distance"]),
           "corr_within": c["corr_within"], "frames_over_target": frames}
    if truth:
        t_base = rhythm.compare(base, truth)["distance"]
        out.update(truth_distance=rhythm.compare(mine, truth)["distance"],
                   truth_closure=rhythm.closure(t_base, rhythm.compare(mine, truth)["distance"]))
    return out


def truth_profiles(root: Path, donor: str, rows: list[dict]) -> dict[str, dict]:
    """Word values from the synthesizer's own segment times (festival donors keep them in
    ``<donor>/test/segs``; ``split_check.truth_spans`` assigns phones to words), for the test
    sentences whose words match; empty for other donors."""
    from common import SAMPLE_RATE
    from split_check import truth_spans

    items = {it.id: it for it in read_corpus(root / donor / "test")}
    out = {}
    for r in rows:
        segs = root / donor / "test" / "segs" / f"{r['id']}.json"
        if not segs.is_file():
            continue
        spans, _ = truth_spans(items[r["id"]].wav, segs, items[r["id"]].text, SAMPLE_RATE)
        if [s.text for s in spans] != r["words"]:
            continue
        wd = np.maximum([s.end - s.start for s in spans], 1e-3)
        out[r["id"]] = {"words": r["words"], "values": rhythm.word_values(wd, r["phones"]).tolist(),
                        "pause_fraction": 0.0, "final_lengthening": 0.0}
    return out


def word_terms(logw: torch.Tensor, d: torch.Tensor, units: torch.Tensor, plus: float = 0.0) -> torch.Tensor:
    """Mean over the batch's units (``units >= 0``; words, or words and pauses) of the squared log
    error of their lengths plus ``plus`` frames (a unit's predicted length: the sum over its
    tokens of ``exp(logw) + 0.5`` frames)."""
    keep = units >= 0
    n_words = int(units.max()) + 1
    index = torch.where(keep, units, torch.full_like(units, n_words))
    pred = torch.zeros(units.shape[0], n_words + 1).scatter_add(1, index, (torch.exp(logw) + 0.5) * keep) + plus
    tgt = torch.zeros_like(pred).scatter_add(1, index, d * keep) + plus
    used = torch.zeros_like(pred).scatter_add(1, index, keep.float())[:, :n_words] > 0
    return ((torch.log(pred[:, :n_words].clamp_min(1e-3)) - torch.log(tgt[:, :n_words].clamp_min(0.5)))[used] ** 2).mean()


def gap_units(units: list[int], n_words: int) -> list[int]:
    """Word units with each run of between-word tokens as one more unit."""
    out, nxt, prev = [], n_words, 0
    for u in units:
        if u >= 0:
            out.append(u)
        else:
            if prev >= 0 or not out:
                nxt += 1
            out.append(nxt - 1)
        prev = u
    return out


def batch_of(rows: list[dict], objective: str):
    n = max(r["hidden"].shape[-1] for r in rows)
    h = torch.zeros(len(rows), rows[0]["hidden"].shape[0], n)
    mask, d = torch.zeros(len(rows), 1, n), torch.zeros(len(rows), 1, n)
    units = torch.full((len(rows), n), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        t = r["hidden"].shape[-1]
        h[b, :, :t], mask[b, 0, :t], d[b, 0, :t] = r["hidden"], 1, r["d"].float()
        u = gap_units(r["units"], len(r["words"])) if objective == "words+gaps" else r["units"]
        units[b, :t] = torch.tensor(u)
    return h, mask, d, units


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--donor", default="F_kal")
    ap.add_argument("--objective", choices=OBJECTIVES, default="words")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-end", type=float, default=0.1, help="fraction of --lr reached at the last step")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--hidden-dropout", type=float, default=0.0)
    ap.add_argument("--hidden-noise", type=float, default=0.0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", default=None, help="folder under <data> for the fitted voice")
    ap.add_argument("--init", default=None,
                    help="start from this voice (a folder under <data> with final/), e.g. a trained run; "
                         "with --steps 0 it is only scored")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    import vits_surgery
    from vits_surgery.losses import duration_loss
    from vits_surgery.text import Tokenizer

    recipient = vits_surgery.load(args.data / "models" / "joe_regrown").eval()
    tokenizer = Tokenizer.from_config(recipient.config)
    data = targets(args.data, args.donor, recipient, tokenizer)
    train, test = data["train"], data["test"]
    model = vits_surgery.load(args.data / args.init / "final").eval() if args.init else copy.deepcopy(recipient)
    dp = model.duration_predictor
    opt = torch.optim.AdamW(dp.parameters(), lr=args.lr, betas=(0.8, 0.99), eps=1e-9, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, args.lr_end ** (1 / max(1, args.steps)))
    gen = torch.Generator().manual_seed(1234 + args.seed)
    history, t0 = [], time.time()
    truth = truth_profiles(args.data, args.donor, test)
    base_train, _, _ = profile(recipient, train[:40])  # the recipient's, once: the closures' reference
    base_test, tgt_test, _ = profile(recipient, test)
    if truth:  # how far the targets themselves are from the donor's true word times
        t_base = rhythm.compare(base_test, truth)["distance"]
        t_tgt = rhythm.compare(tgt_test, truth)["distance"]
        print(f"truth ({len(truth)} test sentences): recipient {t_base:.3f}, targets {t_tgt:.3f} "
              f"(closure {rhythm.closure(t_base, t_tgt):+.2f})", flush=True)

    def evaluate(step: int) -> None:
        dp.eval()
        row = {"step": step, "seconds": time.time() - t0, "train": score(model, base_train, train[:40]),
               "test": score(model, base_test, test, truth)}
        history.append(row)
        tr, te = row["train"], row["test"]
        print(f"step {step:4d} ({row['seconds']:.0f} s)  train: dist {tr['distance']:.3f} closure {tr['closure']:+.2f}"
              f"  |  test: dist {te['distance']:.3f} closure {te['closure']:+.2f} c_in {te['corr_within']:.3f}"
              f" frames/target {te['frames_over_target']:.3f}"
              + (f"  |  vs truth: dist {te['truth_distance']:.3f} closure {te['truth_closure']:+.2f}" if truth else ""),
              flush=True)

    evaluate(0)
    if args.steps == 0:
        args.save = None

    for step in range(1, args.steps + 1):
        dp.train()
        idx = torch.randint(len(train), (args.batch_size,), generator=gen).tolist()
        h, mask, d, units = batch_of([train[i] for i in idx], args.objective)
        if args.hidden_dropout > 0:
            h = torch.nn.functional.dropout(h, args.hidden_dropout)
        if args.hidden_noise > 0:
            h = h + args.hidden_noise * h.std() * torch.randn_like(h)
        loss = h.new_zeros(())
        if args.objective in ("nll", "both"):
            loss = loss + duration_loss(model.duration_nll_of(h, mask, d, None, None, gen), mask)
        if args.objective == "tokens+words":
            loss = loss + word_and_token_loss(predict_log_durations(model, h, mask), d[:, 0], units, mask[:, 0])
        if args.objective in ("words", "both"):  # the word term alone
            loss = loss + word_terms(predict_log_durations(model, h, mask), d[:, 0], units)
        if args.objective == "words+gaps":  # pauses too (units from gap_units): log(frames + 1) on every unit
            loss = loss + word_terms(predict_log_durations(model, h, mask), d[:, 0], units, plus=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step)

    if args.save:
        out = args.data / args.save
        model.eval()
        vits_surgery.save(model, out / "final")
        run = args.data / "runs" / f"cadence_{args.donor}_words" / "result.json"
        info = json.loads(run.read_text()) if run.is_file() else {"plan": "cadence", "donor": args.donor}
        info.update(steps=args.steps, lr=args.lr, cadence=None, probe=[], last_logs={},
                    fit={"objective": args.objective, "script": "benchmarks/cadence/rhythm_fit.py"})
        (out / "result.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
        print("saved", out / "final")
    if args.json:
        args.json.write_text(json.dumps({"command": "python benchmarks/cadence/rhythm_fit.py " + " ".join(sys.argv[1:]),
                                         "donor": args.donor, "objective": args.objective, "history": history},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
