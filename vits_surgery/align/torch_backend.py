"""Pure-torch monotonic alignment search: vectorized over the batch, one step per mel frame.

Runs on any device (meant for CUDA, where the log-likelihood already lives). The forward pass
computes the whole token row of each frame, including cells outside the band of valid paths;
those cells are never read by valid cells, so the in-band values (and hence the path) are
bit-identical to the reference kernels.
"""

from __future__ import annotations

import torch

NEG = -1e9


def maximum_path_torch(log_p: torch.Tensor, t_x: torch.Tensor, t_y: torch.Tensor) -> torch.Tensor:
    """MAS with torch ops (see ``vits_surgery.align.search`` for the semantics).

    Args:
        log_p: float ``[B, T_text, T_mel]``.
        t_x: int64 ``[B]`` text lengths on log_p's device (validated: ``t_x <= t_y``).
        t_y: int64 ``[B]`` mel lengths on log_p's device.

    Returns:
        ``[B, T_text, T_mel]`` path, dtype and device of log_p.
    """
    n, t_text, t_mel = log_p.shape
    values = log_p.detach().to(torch.float32).transpose(1, 2).contiguous()  # [B, T_mel, T_text]
    moves = _forward(values)  # [T_mel, B, T_text] bool
    owner = _backtrack(moves, t_x, t_y)  # [B, T_mel] token index per frame
    tokens = torch.arange(t_text, device=log_p.device)
    frames = torch.arange(t_mel, device=log_p.device)
    path = (tokens[None, :, None] == owner[:, None, :]) & (frames[None, None, :] < t_y[:, None, None])
    return path.to(log_p.dtype)


def _forward(values: torch.Tensor) -> torch.Tensor:
    """Forward DP; returns ``moves[j, b, i] = Q[i, j-1] < Q[i-1, j-1]`` (the backtrack test)."""
    n, t_mel, t_text = values.shape
    device = values.device
    neg_col = torch.full((n, 1), NEG, dtype=torch.float32, device=device)
    moves = torch.zeros(t_mel, n, t_text, dtype=torch.bool, device=device)
    # frame 0: Q[0, 0] = log_p[0, 0] + max(0, -1e9); other tokens are out of the band
    start = torch.cat([torch.zeros_like(neg_col), neg_col.expand(n, t_text - 1)], dim=1)  # [B, T_text]
    prev = values[:, 0] + start
    for j in range(1, t_mel):
        shifted = torch.cat([neg_col, prev[:, :-1]], dim=1)  # Q[i-1, j-1]
        stay = prev
        if j < t_text:  # token j can only be reached diagonally
            stay = prev.clone()
            stay[:, j] = NEG
        moves[j] = stay < shifted
        prev = values[:, j] + torch.maximum(shifted, stay)
    return moves


def _backtrack(moves: torch.Tensor, t_x: torch.Tensor, t_y: torch.Tensor) -> torch.Tensor:
    """Token owning each frame, ``[B, T_mel]`` (meaningless beyond ``t_y``)."""
    t_mel, n, _ = moves.shape
    batch = torch.arange(n, device=moves.device)
    idx = t_x - 1
    owner = torch.zeros(t_mel, n, dtype=torch.long, device=moves.device)
    for j in range(t_mel - 1, -1, -1):
        safe = idx.clamp(min=0)
        owner[j] = safe
        move = (moves[j, batch, safe] | (idx == j)) & (idx > 0) & (j < t_y)
        idx = idx - move.long()
    return owner.transpose(0, 1)
