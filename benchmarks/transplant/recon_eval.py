"""Where a timbre transplant loses words: the decoder alone, on the posterior of real speech.

Each test utterance of a speaker goes through the trained voice's posterior encoder and
decoder (no text, no prior, no flow), and the resynthesis is scored like the report
(pocketsphinx WER, median F0). A WER here near the speaker's own says the decoder renders
words well, and a WER lost at inference comes from the prior path (the flow's inverse).

Usage: python benchmarks/transplant/recon_eval.py MODEL_DIR --speaker D [--n 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT, SAMPLE_RATE, read_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--speaker", default="D")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--flow", action="store_true", help="also round-trip through the flow (forward, reverse)")
    args = ap.parse_args()
    import vits_surgery
    from vits_surgery.audio import load_audio, save_wav, spectrogram
    from vits_surgery.evaluate import evaluate_corpus

    torch.set_num_threads(2)
    model = vits_surgery.load(args.model).eval()
    items = read_corpus(args.data / args.speaker / "test", args.n)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        wavs = []
        for it in items:
            audio, sr = load_audio(it.wav)
            spec = spectrogram(torch.as_tensor(audio).view(1, -1), model.config.audio)  # [1, F, T]
            lengths = torch.tensor([spec.shape[-1]])
            gen = torch.Generator().manual_seed(0)
            z, m_q, _, mask = model.encode_audio(spec, lengths, None, generator=gen)
            z = m_q * mask
            if args.flow:
                z = model.flow(model.flow(z, mask).z, mask, reverse=True).z
            out = model.decoder(z)[0, 0].numpy()
            wavs.append(Path(tmp) / f"{it.id}.wav")
            save_wav(wavs[-1], out, SAMPLE_RATE)
        res = evaluate_corpus(wavs, [it.text for it in items])
    print(f"{args.model} on {args.speaker}/test via posterior mean -> decoder: WER {res['wer']:.3f} F0 {res['f0']['median']:.1f}")


if __name__ == "__main__":
    main()
