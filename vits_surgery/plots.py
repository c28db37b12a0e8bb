"""Figures for listening checkpoints: mel spectrogram, alignment, per-token durations.

matplotlib is imported on first use (``pip install matplotlib``) and only through its
object-oriented API (``matplotlib.figure.Figure`` with an Agg canvas), so no global pyplot
state or GUI backend is touched. :func:`figure_to_array` turns a figure into an ``[H, W, 3]``
uint8 image for TensorBoard. :func:`heatmap_array` draws a matrix without matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "mel_figure",
    "alignment_figure",
    "durations_figure",
    "figure_to_array",
    "heatmap_array",
    "have_matplotlib",
]


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install matplotlib") from exc
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def mel_figure(mel: Any, title: str | None = None, hop_seconds: float | None = None) -> Figure:
    """Log-mel spectrogram image.

    Args:
        mel: [n_mels, T] log-mel (numpy or torch).
        title: figure title.
        hop_seconds: seconds per frame; when given the x axis is in seconds.
    """
    m = _numpy(mel)
    fig = _figure(10, 3)
    ax = fig.add_subplot(1, 1, 1)
    extent = None if hop_seconds is None else (0.0, m.shape[1] * hop_seconds, 0, m.shape[0])
    im = ax.imshow(m, aspect="auto", origin="lower", interpolation="none", extent=extent)
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("seconds" if hop_seconds is not None else "frames")
    ax.set_ylabel("mel band")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def alignment_figure(path: Any, title: str | None = None) -> Figure:
    """Token-to-frame alignment image.

    Args:
        path: [T_x, T_y] alignment (hard path or soft attention).
        title: figure title.
    """
    p = _numpy(path)
    fig = _figure(8, 4)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(p, aspect="auto", origin="lower", interpolation="none")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("decoder frame")
    ax.set_ylabel("token")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def durations_figure(
    durations: Any, labels: Sequence[str] | None = None, title: str | None = None
) -> Figure:
    """Bar chart of frames per token.

    Args:
        durations: [T_x] frames per token.
        labels: one label per token (symbols); ids are shown when None.
        title: figure title.
    """
    d = _numpy(durations).reshape(-1)
    labels = list(labels) if labels is not None else [str(i) for i in range(len(d))]
    if len(labels) != len(d):
        raise ValueError(f"durations_figure got {len(d)} durations but {len(labels)} labels")
    fig = _figure(max(6.0, 0.18 * len(d)), 3)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(np.arange(len(d)), d, width=0.8)
    ax.set_xticks(np.arange(len(d)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_xlim(-0.6, len(d) - 0.4)
    ax.set_ylabel("frames")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an [H, W, 3] uint8 RGB array (the figure is then cleared)."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())  # [H, W, 4]
    image = np.ascontiguousarray(rgba[..., :3])
    fig.clear()
    return image


def heatmap_array(x: Any, height: int | None = None) -> np.ndarray:
    """A matrix as an [H, W, 3] uint8 image without matplotlib (low rows at the bottom).

    Values are min-max scaled and coloured from dark blue through green to yellow.

    Args:
        x: [rows, cols] values.
        height: repeat rows so the image is at least this tall.
    """
    m = _numpy(x)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"heatmap_array needs a non-empty 2-D array, got shape {m.shape}")
    finite = np.isfinite(m)
    lo = float(m[finite].min()) if finite.any() else 0.0
    hi = float(m[finite].max()) if finite.any() else 1.0
    t = np.clip((np.where(finite, m, lo) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)[::-1]  # [rows, cols]
    stops = np.array([[0.27, 0.0, 0.33], [0.13, 0.57, 0.55], [0.99, 0.91, 0.14]])  # dark -> teal -> yellow
    pos = t * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    frac = (pos - i)[..., None]
    rgb = stops[i] * (1 - frac) + stops[i + 1] * frac  # [rows, cols, 3]
    if height is not None and m.shape[0] < height:
        rgb = np.repeat(rgb, int(np.ceil(height / m.shape[0])), axis=0)
    return (rgb * 255).round().astype(np.uint8)
