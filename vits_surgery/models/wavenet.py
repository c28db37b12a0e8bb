"""Non-causal WaveNet stack (``WN``) shared by the posterior encoder and the coupling flow.

Each layer is a dilated convolution followed by the gated activation
``tanh(a) * sigmoid(b)`` (optionally conditioned on a speaker vector), dropout, and a 1x1
convolution that splits into a residual part (added to the running input) and a skip part
(summed into the output). The last layer has no residual part: it outputs skip channels
only. Sub-module names (``in_layers``, ``res_skip_layers``, ``cond_layer``) are Coqui TTS'
so its checkpoints load without renames; every convolution is weight-normed.
"""

from __future__ import annotations

import torch
from torch import nn

from .commons import fused_add_tanh_sigmoid_multiply, get_padding, weight_norm

__all__ = ["WN"]


class WN(nn.Module):
    """Gated, dilated, non-causal WaveNet with residual and skip connections.

    Args:
        hidden_channels: H, the width of the residual stream.
        kernel_size: kernel of the dilated convolutions (odd).
        dilation_rate: layer ``i`` uses dilation ``dilation_rate ** i``.
        n_layers: number of layers L.
        gin_channels: width of the conditioning vector ``g``; 0 = unconditioned (no
            ``cond_layer``).
        p_dropout: dropout on the gated activations.
    """

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        p_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"WN kernel_size must be odd, got {kernel_size}")
        if n_layers < 1:
            raise ValueError(f"WN n_layers must be >= 1, got {n_layers}")
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.gin_channels = gin_channels
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        self.dropout = nn.Dropout(p_dropout)
        for i in range(n_layers):
            dilation = dilation_rate**i
            conv = nn.Conv1d(
                hidden_channels,
                2 * hidden_channels,
                kernel_size,
                dilation=dilation,
                padding=get_padding(kernel_size, dilation),
            )
            self.in_layers.append(weight_norm(conv))
            # every layer but the last emits residual + skip; the last emits skip only
            out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(weight_norm(nn.Conv1d(hidden_channels, out, 1)))
        if gin_channels > 0:
            self.cond_layer = weight_norm(nn.Conv1d(gin_channels, 2 * hidden_channels * n_layers, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        """Run the stack.

        Args:
            x: [B, H, T] input (zero at padded positions).
            mask: [B, 1, T] float mask.
            g: [B, gin, 1] conditioning, or None.

        Returns:
            [B, H, T] sum of the skip outputs, zero at padded positions.

        Raises:
            ValueError: ``g`` is given but the stack was built with ``gin_channels=0``.
        """
        h = self.hidden_channels
        cond = self._condition(g)  # [B, 2HL, 1] or None
        output = torch.zeros_like(x)  # [B, H, T]
        for i, (in_layer, res_skip_layer) in enumerate(
            zip(self.in_layers, self.res_skip_layers, strict=True)
        ):
            x_in = in_layer(x)  # [B, 2H, T]
            g_l = cond[:, 2 * h * i : 2 * h * (i + 1)] if cond is not None else torch.zeros_like(x_in)
            acts = self.dropout(fused_add_tanh_sigmoid_multiply(x_in, g_l, h))  # [B, H, T]
            res_skip = res_skip_layer(acts)  # [B, 2H, T] (last layer: [B, H, T])
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :h]) * mask
                output = output + res_skip[:, h:]
            else:
                output = output + res_skip
        return output * mask

    def _condition(self, g: torch.Tensor | None) -> torch.Tensor | None:
        if g is None:
            return None
        if self.gin_channels == 0:
            raise ValueError(
                f"WN got a conditioning tensor of shape {tuple(g.shape)} but was built with gin_channels=0"
            )
        return self.cond_layer(g)
