"""One training step: what it computes (:class:`StepPlan`) and how (:class:`LossPath`).

:class:`StepPlan` derives from the registry's data-flow graph which loss terms reach a
trainable organ (terms with weight 0 are never computed) and which stages need gradients. A
cadence plan runs the text encoder, posterior encoder and flow under ``no_grad``, MAS, and the
duration predictor with gradients; no decoder, no discriminator, no mel.

:class:`LossPath` is the pruned forward and the generator and discriminator losses of one
step plan, as one object. The trainer, Auto-RGN
(:func:`~vits_surgery.surgery.auto.relative_gradient_norms`) and the rejection monitor share
it. **It is the seam where a step's forward is replaced**: a subclass that overrides
:meth:`LossPath.forward` (for example, one that reads cached text-encoder and MAS outputs
for a duration-predictor-only plan) gets the same losses, and the trainer takes it through
``SurgicalTrainer.loss_path_cls``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..audio import amp_to_log, log_mel, spec_to_mel
from ..batch import Batch
from ..loss_terms import READS, LossTerm
from ..losses import (
    discriminator_loss,
    duration_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    kl_loss,
    mel_loss,
    weighted_total,
)
from ..models.commons import slice_segments
from ..models.vits import VITS, TrainNoise, VITSTrainOutput
from .registry import GENERATOR_TERMS, WAVEFORM_TERMS, data_flow, reachable_losses

__all__ = ["StepPlan", "LossPath"]

#: Generator stages in data-flow order.
_STAGES = ("speaker_embedding", "text_encoder", "posterior_encoder", "flow", "duration_predictor", "decoder")


@dataclass(frozen=True)
class StepPlan:
    """What one training step computes.

    Attributes:
        terms: generator loss terms computed (weight != 0 and reaching a trainable organ):
            the built-in ones, then the extra :class:`~vits_surgery.loss_terms.LossTerm` s.
        grad: stage -> whether it runs with gradients.
        decode: whether the decoder runs (a waveform term, or the discriminator trains).
        train_discriminator: whether the discriminator is updated.
        trained: the generator organs that train (for :meth:`describe`).
        loss_terms: the extra terms computed (those of ``terms`` that are not built in).
    """

    terms: tuple[str, ...]
    grad: dict[str, bool]
    decode: bool
    train_discriminator: bool
    trained: tuple[str, ...] = ()
    loss_terms: tuple[LossTerm, ...] = ()

    @classmethod
    def derive(cls, model: nn.Module, resolved: Any) -> StepPlan:
        """Derive from the data-flow graph of ``model.config`` and a resolved plan.

        An extra term reaches what the built-in term it reads like reaches
        (:data:`~vits_surgery.loss_terms.READS`: a ``"waveform"`` term, what ``gen/mel`` reaches).
        """
        config = model.config
        graph, reach = data_flow(config), reachable_losses(config)
        trained = set(resolved.trained_organs)
        weights = resolved.loss_weights
        has_disc = getattr(model, "discriminator", None) is not None
        terms = tuple(
            t
            for t in GENERATOR_TERMS
            if weights[t] != 0
            and any(t in reach.get(o, ()) for o in trained)
            and (has_disc or t in ("gen/kl", "gen/dur", "gen/mel"))
        )
        extra = tuple(
            term
            for term in getattr(resolved, "loss_terms", ())
            if weights.get(term.name, term.weight) != 0
            and any(READS[term.reads] in reach.get(o, ()) for o in trained)
        )
        # the built-in terms whose reach the computed terms take (for gradients and decoding)
        reads = set(terms) | {READS[term.reads] for term in extra}
        grad: dict[str, bool] = {}
        for node in _STAGES:
            parents = [p for p, consumers in graph.items() if node in consumers]
            upstream = node in trained or any(grad.get(p, False) for p in parents)
            grad[node] = upstream and any(t in reads for t in reach.get(node, ()))
        decode = any(t in reads for t in WAVEFORM_TERMS) or resolved.train_discriminator
        terms = terms + tuple(term.name for term in extra)
        return cls(terms, grad, decode, resolved.train_discriminator, tuple(resolved.trained_organs), extra)

    def describe(self) -> str:
        """The plan in words, e.g. ``"grad: duration_predictor; no_grad: text_encoder,
        posterior_encoder, flow; skipped: decoder, discriminator"``.

        ``grad``: stages that run with gradients; ``no_grad``: stages that run without;
        ``skipped``: stages that do not run (the speaker embedding is listed only when it
        trains or feeds a gradient).
        """
        runs = {stage: True for stage in _STAGES}
        runs["decoder"] = self.decode
        runs["duration_predictor"] = "gen/dur" in self.terms
        grad = [s for s in _STAGES if runs[s] and (self.grad.get(s, False) or s in self.trained)]
        no_grad = [s for s in _STAGES if runs[s] and s not in grad and s != "speaker_embedding"]
        skipped = [s for s in _STAGES if not runs[s]]
        if self.train_discriminator:
            grad.append("discriminator")
        elif self.decode and {"gen/adv", "gen/fm"} & set(self.terms):
            no_grad.append("discriminator")
        else:
            skipped.append("discriminator")
        parts = [f"{name}: {', '.join(items)}" for name, items in
                 (("grad", grad), ("no_grad", no_grad), ("skipped", skipped)) if items]
        return "; ".join(parts)


class LossPath:
    """The pruned training forward and the losses of one :class:`StepPlan`.

    Args:
        model: the model (frozen per the plan by the caller).
        step_plan: what the step computes.
        weights: effective loss weights (for :meth:`total`).
        amp: None, "bf16" or "fp16": autocast of the forward (the flow, MAS and losses stay fp32).
        rng: the generator of every training draw (posterior noise, duration noise, segments).

    Override :meth:`forward` to replace how a step computes its :class:`VITSTrainOutput`
    (fields the plan does not need may be None); the losses read only that output.
    """

    def __init__(
        self,
        model: VITS,
        step_plan: StepPlan,
        weights: dict[str, float],
        amp: str | None = None,
        rng: torch.Generator | None = None,
    ) -> None:
        self.model = model
        self.step_plan = step_plan
        self.weights = weights
        self.amp = amp
        self.rng = rng

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return next(self.model.parameters()).device

    def autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager:
        """The step's autocast context (a no-op without ``amp``)."""
        if self.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)

    def forward(self, batch: Batch, noise: TrainNoise | None = None) -> VITSTrainOutput:
        """The pruned training forward: every stage under the grad mode :class:`StepPlan` gives.

        Fields the plan does not need are None (``duration_nll``, ``audio_hat``).
        """
        m, sp, gen = self.model, self.step_plan, self.rng
        noise = noise or TrainNoise()
        with torch.set_grad_enabled(sp.grad["speaker_embedding"]):
            g = m.speaker_vector(batch.speakers)
        with torch.set_grad_enabled(sp.grad["text_encoder"]):
            enc = m.encode_text(batch.tokens, batch.token_lengths)
        with torch.set_grad_enabled(sp.grad["posterior_encoder"]):
            z, m_q, logs_q, y_mask = m.encode_audio(batch.spec, batch.spec_lengths, g, noise.posterior, gen)
        g32 = g.float() if g is not None else None
        m_p, logs_p, x_mask = enc.m_p.float(), enc.logs_p.float(), enc.mask.float()
        with self.autocast(enabled=False):
            with torch.set_grad_enabled(sp.grad["flow"]):
                z_p = m.flow(z.float(), y_mask.float(), g=g32).z
            path = m.align(z_p, m_p, logs_p, x_mask, y_mask.float())
            dur = None
            if "gen/dur" in sp.terms:
                dur = m.duration_nll(enc.hidden.float(), x_mask, path, g32, noise.duration, gen)
            with torch.set_grad_enabled(sp.grad["text_encoder"] and "gen/kl" in sp.terms):
                m_e, logs_e = m.expand_prior(path, m_p, logs_p)
        audio_hat, starts = None, None
        if sp.decode:
            with torch.set_grad_enabled(sp.grad["decoder"]):
                audio_hat, starts = m.decode_segment(z, batch.spec_lengths, g, noise.segment_starts, gen)
        return VITSTrainOutput(
            x_mask=x_mask, y_mask=y_mask, m_p=m_p, logs_p=logs_p, z=z, m_q=m_q, logs_q=logs_q, z_p=z_p,
            path=path, m_p_expanded=m_e, logs_p_expanded=logs_e, duration_nll=dur, audio_hat=audio_hat,
            segment_starts=starts, g=g,
        )

    def real_segment(self, batch: Batch, out: VITSTrainOutput) -> torch.Tensor:
        """The waveform slice [B, 1, S * hop] matching ``out.audio_hat``."""
        hop = self.model.hop_length
        return slice_segments(batch.wav, out.segment_starts * hop, self.model.config.segment_size * hop)

    def mel_target(self, batch: Batch, out: VITSTrainOutput) -> torch.Tensor:
        """Log-mel [B, n_mels, S] of the linear-spectrogram slice (as VITS computes it)."""
        a = self.model.config.audio
        spec = slice_segments(batch.spec, out.segment_starts, self.model.config.segment_size).float()
        return amp_to_log(spec_to_mel(spec, a.sample_rate, a.n_fft, a.n_mels, a.mel_fmin, a.mel_fmax))

    def discriminator_losses(self, batch: Batch, out: VITSTrainOutput) -> dict[str, torch.Tensor]:
        """``disc/real``, ``disc/fake`` on the real slice and the detached generated slice."""
        scores = self.model.discriminator(self.real_segment(batch, out), out.audio_hat.detach())
        return discriminator_loss(scores.real_scores, scores.fake_scores)

    def generator_losses(
        self, batch: Batch, out: VITSTrainOutput, disc_out: Any = None
    ) -> dict[str, torch.Tensor]:
        """The generator terms of :attr:`StepPlan.terms` (unweighted, fp32): the built-in
        ones, then the extra terms (:attr:`StepPlan.loss_terms`) under their names.

        Args:
            disc_out: the discriminator's output on (real, generated) slices; computed here
                when an adversarial term needs it and it is None.
        """
        terms = self.step_plan.terms
        losses: dict[str, torch.Tensor] = {}
        with self.autocast(enabled=False):
            if "gen/kl" in terms:
                losses["gen/kl"] = kl_loss(out.z_p, out.logs_q, out.m_p_expanded, out.logs_p_expanded, out.y_mask)
            if "gen/dur" in terms:
                losses["gen/dur"] = duration_loss(out.duration_nll, out.x_mask)
            if "gen/mel" in terms:
                mel_hat = log_mel(out.audio_hat.float(), self.model.config.audio)
                losses["gen/mel"] = mel_loss(self.mel_target(batch, out), mel_hat)
        if "gen/adv" in terms or "gen/fm" in terms:
            if disc_out is None:
                with torch.no_grad():
                    real = self.model.discriminator(self.real_segment(batch, out))
                fake = self.model.discriminator(out.audio_hat)
                disc_out = (real, fake)
            real, fake = disc_out
            if "gen/adv" in terms:
                losses["gen/adv"] = generator_adversarial_loss(fake.real_scores)
            if "gen/fm" in terms:
                losses["gen/fm"] = feature_matching_loss(real.real_features, fake.real_features)
        with self.autocast(enabled=False):
            for term in self.step_plan.loss_terms:
                if term.name in terms:
                    losses[term.name] = term(self, batch, out).float()
        return losses

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of ``losses``."""
        return weighted_total(losses, self.weights)
