"""Prototype: timbre on prior-path latents aligned to the donor's audio.

The decoder is trained on the latents the inference path gives (frozen text encoder, the
donor's durations, prior noise, frozen flow reversed), each matched against the donor's
waveform at the same frames. Usage:

    python benchmarks/transplant/timbre_gta.py --donor D --steps 600 --lr 2e-4 [--tag _gta]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_transplants as rt  # noqa: E402

from vits_surgery.models.commons import generate_path, length_mask  # noqa: E402
from vits_surgery.models.vits import TrainNoise, VITSTrainOutput  # noqa: E402
from vits_surgery.surgery.step import LossPath  # noqa: E402

logger = logging.getLogger("timbre_gta")


class PriorPathLatents(LossPath):
    """The decoder's input is the inference path's latent on the donor's durations."""

    cache = None
    noise_scale = 0.667

    def forward(self, batch, noise: TrainNoise | None = None) -> VITSTrainOutput:
        m, gen = self.model, self.rng
        noise = noise or TrainNoise()
        inputs = self.cache.inputs(batch)
        with torch.no_grad():
            g = m.speaker_vector(batch.speakers)
            enc = m.encode_text(batch.tokens, batch.token_lengths)
            w = inputs.durations[:, 0]  # [B, T_x]
            y_lengths = w.sum(dim=1).long()
            if not torch.equal(y_lengths, batch.spec_lengths.long()):
                raise RuntimeError(f"durations sum {y_lengths.tolist()} != frames {batch.spec_lengths.tolist()}")
            t_y = batch.spec.shape[-1]
            y_mask = length_mask(y_lengths, t_y)
            path = generate_path(w, enc.mask.transpose(1, 2) * y_mask)
            m_e, logs_e = m.expand_prior(path, enc.m_p.float(), enc.logs_p.float())
            eps = torch.randn(m_e.shape, generator=gen)
            z_p = m_e + eps * torch.exp(logs_e) * self.noise_scale
            z = m.flow(z_p, y_mask, g=g, reverse=True).z * y_mask
        with torch.set_grad_enabled(self.step_plan.grad["decoder"]):
            audio_hat, starts = m.decode_segment(z, batch.spec_lengths, g, noise.segment_starts, gen)
        return VITSTrainOutput(
            x_mask=enc.mask, y_mask=y_mask, m_p=enc.m_p, logs_p=enc.logs_p, z=z, m_q=None, logs_q=None,
            z_p=z_p, path=path, m_p_expanded=m_e, logs_p_expanded=logs_e, duration_nll=None,
            audio_hat=audio_hat, segment_starts=starts, g=g,
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=rt.DEFAULT_ROOT)
    ap.add_argument("--donor", default="D")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lr-end", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--source", default="forced")
    ap.add_argument("--organs", default="decoder")
    ap.add_argument("--noise-scale", type=float, default=0.667)
    ap.add_argument("--tag", default="_gta")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe-every", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    ns = argparse.Namespace(
        recipient=None, timbre_organs=args.organs, no_discriminator=True, batch_size=args.batch_size,
        seed=1234, probe_every=args.probe_every, lr_end=args.lr_end, device="cpu", log_every=25, amp=None,
        time_budget=args.time_budget, duration_source=None, runs_dir=None, tag=args.tag, export=None,
        disc_warmup=0,
    )
    from vits_surgery.durations.cache import DurationCache

    run_dir = args.data / "runs" / f"timbre_{args.donor}{args.tag}"
    trainer, probe = rt.make_trainer(args.data, "timbre", args.donor, args.lr, args.steps, run_dir, ns)
    old = trainer.loss_path
    path = PriorPathLatents(old.model, old.step_plan, old.weights, old.amp, old.rng)
    path.cache = DurationCache(trainer.model, args.source)
    path.noise_scale = args.noise_scale
    trainer.loss_path = path
    t0 = time.time()
    from vits_surgery.durations.step import utterance_batches

    for b in utterance_batches(trainer.train_data):
        path.cache.ensure(b)
    logger.info("durations ready in %.1f s: %s", time.time() - t0, dict(path.cache.stats))
    orig = rt.make_trainer

    def reuse(*a, **k):
        return trainer, probe

    rt.make_trainer = reuse
    try:
        res = rt.run_one(args.data, "timbre", args.donor, args.steps, args.lr, ns)
    finally:
        rt.make_trainer = orig
    logger.info("done: %s steps, %.0f s", res["steps"], res["wall_seconds"])


if __name__ == "__main__":
    main()
