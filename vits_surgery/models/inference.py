"""Inference-only copies of a VITS model: :func:`optimize_for_inference`.

The copy computes what :meth:`VITS.infer` computes (within float32 rounding: 1e-5 on the
waveform is tested) in less time on a CPU. What changes, and why:

* **Weight norm is folded** into plain weights: a weight-normed layer otherwise recomputes
  ``g * v / ||v||`` at every call (the flow and every decoder convolution).
* **The decoder runs channels-last**: its 1-D convolutions run as ``[B, C, 1, T]``
  channels-last 2-D convolutions, whose oneDNN kernels are up to 5x faster than the 1-D
  ones on the long, narrow tensors of the last upsampling stages (e.g. 32 channels x 110k
  samples); the weights are stored once in that layout (the state-dict shapes are
  unchanged). Temporaries are updated in place (LeakyReLU before an upsampling layer,
  residual sums, the multi-receptive-field average), which saves allocating and filling a
  large tensor per operation and gives the same floats (IEEE addition is commutative).
* **Narrow, long decoder stages run in time chunks** of about 1 MB per tensor (e.g. 8192
  samples at 32 channels), each read with the halo its residual blocks reach (45 samples
  each side for Piper's), so the stage's dozen intermediate tensors stay in the CPU cache
  instead of streaming through memory; every output sample sees exactly the inputs it sees
  unchunked. On the joe voice this takes another third off the decoder's time.
* **No zero tensors**: an unconditioned WaveNet adds no all-zero speaker term, and a
  mean-only coupling layer in reverse skips its zero log-scale, ``exp`` and log-determinant.
* ``infer`` and ``voice_conversion`` run under :func:`torch.inference_mode`.
* Optionally (``compile=True``) the decoder, which takes most of the time, is compiled with
  :func:`torch.compile` (dynamic shapes, so most sentence lengths reuse one graph). Its
  fused kernels round differently (waveforms agree to 1e-4), and on a CPU it was not faster
  than the channels-last decoder (docs/benchmarks.md, "Inference").

The transform is one-way and never touches its argument: it returns a new model (without the
discriminator, which inference does not use) and the original keeps training as before.
Unmerged LoRA adapters are merged into the copy's weights at their current strength.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .commons import own_weight_norm_classes, remove_weight_norms
from .decoder import Generator, ResBlock1, ResBlock2
from .flow import FlowOutput, ResidualCouplingLayer
from .vits import VITS, InferenceOutput
from .wavenet import WN

__all__ = ["optimize_for_inference", "InferenceVITS", "compiler_available"]

logger = logging.getLogger(__name__)

_CHANNELS_LAST = torch.channels_last
#: The decoder runs a stage in time chunks of this many elements (channels x samples, 1 MB of
#: float32) when the stage is narrow and long: its tensors then stay in the CPU cache.
CHUNK_ELEMENTS = 2**18
#: Widest stage computed in chunks (wider ones are compute-bound; chunking did not help them).
CHUNK_MAX_CHANNELS = 64


class InferenceVITS(VITS):
    """A VITS made by :func:`optimize_for_inference`: inference only.

    :meth:`infer` and :meth:`voice_conversion` run under :func:`torch.inference_mode`; the
    training forward refuses to run (train the model the copy was made from).
    """

    def infer(self, *args, **kwargs) -> InferenceOutput:
        """:meth:`VITS.infer` under :func:`torch.inference_mode` (same arguments)."""
        with torch.inference_mode():
            return super().infer(*args, **kwargs)

    def voice_conversion(self, *args, **kwargs) -> torch.Tensor:
        """:meth:`VITS.voice_conversion` under :func:`torch.inference_mode` (same arguments)."""
        with torch.inference_mode():
            return super().voice_conversion(*args, **kwargs)

    def forward(self, *args, **kwargs):
        """Refused: the copy has folded weights and no discriminator."""
        raise RuntimeError(
            "this model is an inference-only copy made by optimize_for_inference(); "
            "train the model it was made from instead"
        )


# ----------------------------------------------------------------------------- decoder
def _conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv`` applied to a channels-last ``[B, C_in, 1, T]`` tensor: ``[B, C_out, 1, T']``."""
    return F.conv2d(
        x,
        conv.weight.unsqueeze(2),
        conv.bias,
        (1, conv.stride[0]),
        (0, conv.padding[0]),
        (1, conv.dilation[0]),
        conv.groups,
    )


def _conv_transpose(up: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """``up`` applied to a channels-last ``[B, C_in, 1, T]`` tensor: ``[B, C_out, 1, T * stride]``."""
    return F.conv_transpose2d(
        x,
        up.weight.unsqueeze(2),
        up.bias,
        (1, up.stride[0]),
        (0, up.padding[0]),
        (0, up.output_padding[0]),
        up.groups,
        (1, up.dilation[0]),
    )


def _resblock(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A HiFi-GAN residual block on a channels-last ``[B, C, 1, T]`` tensor (``x`` is not modified)."""
    if isinstance(block, ResBlock1):
        for c1, c2 in zip(block.convs1, block.convs2, strict=True):
            xt = _conv(c1, F.leaky_relu(x, block.slope))
            xt = _conv(c2, F.leaky_relu_(xt, block.slope))
            x = xt.add_(x)  # x + c2(...)
        return x
    for c in block.convs:
        x = _conv(c, F.leaky_relu(x, block.slope)).add_(x)
    return x


def _decoder_convs(dec: Generator) -> Iterator[nn.Module]:
    yield dec.conv_pre
    yield from dec.ups
    for block in dec.resblocks:
        yield from (block.convs1 if isinstance(block, ResBlock1) else block.convs)
        if isinstance(block, ResBlock1):
            yield from block.convs2
    yield dec.conv_post


class ChannelsLastGenerator(Generator):
    """:class:`~vits_surgery.models.decoder.Generator` computing in channels-last ``[B, C, 1, T]``.

    Made by class swap from a generator whose weight norm is folded (see
    :func:`optimize_for_inference`); same interface and outputs.
    """

    @classmethod
    def convert(cls, dec: Generator) -> bool:
        """Swap ``dec`` to this class and store its weights channels-last; False (and no change)
        when a layer is not a plain zero-padded convolution without hooks."""
        convs = list(_decoder_convs(dec))
        for conv in convs:
            plain = type(conv) in (nn.Conv1d, nn.ConvTranspose1d) and isinstance(conv.weight, nn.Parameter)
            if not plain or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                return False
            if conv._forward_hooks or conv._forward_pre_hooks:
                return False
        if any(type(b) not in (ResBlock1, ResBlock2) for b in dec.resblocks):
            return False
        with torch.no_grad():
            for conv in convs:
                w4 = conv.weight.detach().unsqueeze(2).contiguous(memory_format=_CHANNELS_LAST)
                conv.weight = nn.Parameter(w4.squeeze(2), requires_grad=conv.weight.requires_grad)
        dec.__class__ = cls
        return True

    def forward(self, z: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Synthesize a waveform.

        Args:
            z: [B, C, T] latent frames.
            g: [B, gin, 1] speaker vector, or None.

        Returns:
            [B, 1, T * hop] waveform in [-1, 1].
        """
        x = _conv(self.conv_pre, z.unsqueeze(2).contiguous(memory_format=_CHANNELS_LAST))  # [B, ch0, 1, T]
        if g is not None:
            if self.gin_channels == 0:
                raise ValueError(
                    f"Generator got a speaker vector of shape {tuple(g.shape)} but was built with gin_channels=0"
                )
            x.add_(self.cond_layer(g).unsqueeze(2))  # [B, ch0, 1, 1] broadcast over T
        last = len(self.ups) - 1
        for i, up in enumerate(self.ups):
            x = _conv_transpose(up, F.leaky_relu_(x, self.cfg.leaky_slope))  # [B, ch0 / 2^(i+1), 1, T_i]
            width = CHUNK_ELEMENTS // x.shape[1]
            if x.shape[1] <= CHUNK_MAX_CHANNELS and x.shape[-1] > 2 * width:
                x = self._stage_in_chunks(i, x, width, tail=i == last)
            else:
                x = self._stage(i, x, tail=i == last)
        return x.squeeze(2).contiguous()  # [B, 1, T * hop]

    def _stage(self, i: int, x: torch.Tensor, tail: bool) -> torch.Tensor:
        """Multi-receptive-field fusion of stage ``i`` on ``[B, C, 1, T]`` (``x`` is not modified);
        with ``tail`` also the final LeakyReLU, ``conv_post`` and ``tanh`` (``[B, 1, 1, T]``)."""
        n = self.num_kernels
        acc = _resblock(self.resblocks[i * n], x)
        for j in range(1, n):
            acc.add_(_resblock(self.resblocks[i * n + j], x))
        acc.div_(n)
        if not tail:
            return acc
        return torch.tanh_(_conv(self.conv_post, F.leaky_relu_(acc, self.cfg.final_leaky_slope)))

    def _stage_in_chunks(self, i: int, x: torch.Tensor, width: int, tail: bool) -> torch.Tensor:
        """:meth:`_stage` computed ``width`` samples at a time, each chunk read with the halo of
        samples its convolutions reach on either side, so every output sample sees exactly the
        inputs it sees unchunked while the working set stays in the CPU cache."""
        halo = self._halo(i) + (self.conv_post.padding[0] if tail else 0)
        t = x.shape[-1]
        out = None
        for start in range(0, t, width):
            stop = min(start + width, t)
            lo, hi = max(0, start - halo), min(t, stop + halo)
            y = self._stage(i, x[..., lo:hi], tail)  # [B, C', 1, hi - lo]
            if out is None:
                out = x.new_empty(x.shape[0], y.shape[1], 1, t).contiguous(memory_format=_CHANNELS_LAST)
            out[..., start:stop] = y[..., start - lo : stop - lo]
        return out

    def _halo(self, i: int) -> int:
        """Samples the residual blocks of stage ``i`` reach on either side of an output sample."""
        n = self.num_kernels
        reach = 0
        for block in self.resblocks[i * n : (i + 1) * n]:
            convs = (
                list(block.convs1) + list(block.convs2) if isinstance(block, ResBlock1) else list(block.convs)
            )
            reach = max(reach, sum(c.dilation[0] * (c.kernel_size[0] - 1) // 2 for c in convs))
        return reach


# ----------------------------------------------------------------------------- flow
class UnconditionedFastWN(WN):
    """:class:`~vits_surgery.models.wavenet.WN` that adds no all-zero term when ``g`` is None."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`WN.forward`; see there."""
        if g is not None:
            return super().forward(x, mask, g=g)
        h = self.hidden_channels
        output = None
        for i, (in_layer, res_skip_layer) in enumerate(
            zip(self.in_layers, self.res_skip_layers, strict=True)
        ):
            x_in = in_layer(x)  # [B, 2H, T]
            acts = self.dropout(torch.tanh(x_in[:, :h]) * torch.sigmoid(x_in[:, h:]))  # [B, H, T]
            res_skip = res_skip_layer(acts)  # [B, 2H, T] (last layer: [B, H, T])
            skip = res_skip[:, h:] if i < self.n_layers - 1 else res_skip
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :h]) * mask
            output = skip if output is None else output + skip
        return output * mask


class MeanOnlyReverseCoupling(ResidualCouplingLayer):
    """:class:`~vits_surgery.models.flow.ResidualCouplingLayer` whose mean-only reverse pass
    skips the zero log-scale (``exp(0)`` and a zero log-determinant)."""

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False
    ) -> FlowOutput:
        """Same as :meth:`ResidualCouplingLayer.forward`; see there."""
        if not (reverse and self.mean_only):
            return super().forward(x, mask, g=g, reverse=reverse)
        x0, x1 = torch.split(x, self.half_channels, dim=1)  # [B, C/2, T] each
        h = self.enc(self.pre(x0) * mask, mask, g=g)  # [B, H, T]
        m = self.post(h) * mask  # [B, C/2, T]
        return FlowOutput(torch.cat([x0, (x1 - m) * mask], dim=1), x.new_zeros(x.shape[0]))


# ----------------------------------------------------------------------------- entry point
def compiler_available() -> str | None:
    """Path of the C++ compiler :func:`torch.compile` needs on a CPU (``$CXX``, ``g++``,
    ``c++`` or ``clang++``), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def _copy_without_discriminator(model: VITS) -> VITS:
    """Deep copy of ``model`` minus its discriminator; weight-normed layers get classes of
    their own (:func:`~vits_surgery.models.commons.own_weight_norm_classes`), so folding the
    copy leaves the original intact."""
    memo = {id(model.discriminator): None} if model.discriminator is not None else {}
    fast = copy.deepcopy(model, memo)
    own_weight_norm_classes(fast)
    return fast


def optimize_for_inference(model: VITS, compile: bool = False) -> InferenceVITS:
    """A faster, inference-only copy of ``model``; ``model`` itself is not changed.

    The copy folds weight norm, runs the decoder channels-last, skips all-zero terms, runs
    :meth:`~InferenceVITS.infer` under :func:`torch.inference_mode` and is in ``eval()`` (see
    the module docstring). Its parameters keep their ``requires_grad`` flags: inference mode
    makes them cost nothing, and :func:`torch.matmul` picks its kernel by them, so keeping
    them keeps the text encoder's rounding identical to the original's. Its waveforms equal the
    original's to float32 rounding (1e-5 is tested, at zero noise and with a seeded
    ``generator``). It has no discriminator and refuses the training forward; keep training
    (and saving, for training) the original. Unmerged LoRA adapters are merged into the copy.

    Args:
        model: the model to copy (any device and dtype; left untouched).
        compile: also compile the decoder with :func:`torch.compile` (dynamic shapes). The
            first call then takes tens of seconds to minutes, outputs agree to 1e-4 rather
            than 1e-5, and on a CPU this needs a C++ compiler.

    Returns:
        The optimized copy, an :class:`InferenceVITS` (a :class:`VITS` subclass).

    Raises:
        TypeError: ``model`` is not a VITS.
        RuntimeError: ``compile=True`` on a CPU model and no C++ compiler was found.

    Example:
        >>> fast = optimize_for_inference(vits_surgery.load("voice.onnx"))
        >>> audio = fast.infer(tokens).audio
    """
    if not isinstance(model, VITS):
        raise TypeError(f"optimize_for_inference() needs a VITS model, got {type(model).__name__}")
    device = next(model.parameters()).device
    if compile and device.type == "cpu" and compiler_available() is None:
        raise RuntimeError(
            "compile=True needs a C++ compiler for torch.compile on a CPU, and none was found "
            "(install g++ or set CXX); call optimize_for_inference(model) without compile"
        )
    fast = _copy_without_discriminator(model)
    _merge_adapters(fast)
    folded = remove_weight_norms(fast)
    fast.eval()
    for param in fast.parameters():
        param.grad = None  # requires_grad is kept: torch.matmul picks its kernel by it
    fast.__class__ = InferenceVITS
    swapped = _swap_fast_organs(fast)
    logger.info(
        "optimize_for_inference: folded weight norm on %d layers; fast paths: %s",
        folded,
        ", ".join(swapped) or "none",
    )
    if compile:
        fast.decoder.compile(dynamic=True)
    return fast


def _merge_adapters(model: VITS) -> None:
    from .lora import merge_adapters

    merge_adapters(model, "the optimize_for_inference copy")


def _swap_fast_organs(model: VITS) -> list[str]:
    swapped = []
    for module in model.modules():
        if type(module) is WN and not (module._forward_hooks or module._forward_pre_hooks):
            module.__class__ = UnconditionedFastWN
            swapped.append("WN")
        elif type(module) is ResidualCouplingLayer and not (
            module._forward_hooks or module._forward_pre_hooks
        ):
            module.__class__ = MeanOnlyReverseCoupling
            swapped.append("coupling")
    if type(model.decoder) is Generator and ChannelsLastGenerator.convert(model.decoder):
        swapped.append("channels-last decoder")
    return sorted(set(swapped))
