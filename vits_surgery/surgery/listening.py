"""Listening checkpoints: fixed sentences synthesized at step 0 and every N steps.

:class:`ListeningCallback` renders the same sentences with the same random draws at every
checkpoint, so two checkpoints differ only by what training changed. Each checkpoint writes
``out_dir/samples/step_{step:07d}/{i:02d}.wav`` and, with TensorBoard, logs per sentence the
audio, a log-mel image, the alignment image and a per-token duration bar chart.

It is a plain callback (``SurgicalTrainer(..., callbacks=[cb])``): ``on_fit_start`` renders the
baseline when the trainer's ``step`` is 0 (before any update), ``on_step_end(step)`` renders
when ``step % every == 0`` (a step is rendered at most once), and ``on_fit_end`` closes the
TensorBoard writer. Standalone, ``ListeningCallback.sample(model, step, tokenizer=None)``
renders and returns the samples.

The model is taken from ``trainer.model``, the tokenizer from ``trainer.tokenizer`` when the
trainer has one, else ``Tokenizer(model.config.text)``. Synthesis runs through
:meth:`VITS.infer` under ``torch.inference_mode()`` with the model in ``eval()``; afterwards
every submodule gets back its previous ``training`` flag (frozen organs stay in eval).
Under ``torch.distributed`` only rank 0 renders.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .callbacks import Callback
from .freeze import preserved

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

SurgicalTrainer = Any  # callbacks observe a trainer; they do not import it

__all__ = ["ListeningCallback", "TensorBoardLogger", "get_writer", "close_writer", "synthesize"]

logger = logging.getLogger(__name__)

_WRITERS: dict[str, Any] = {}


def get_writer(log_dir: str | Path) -> Any:
    """A shared ``torch.utils.tensorboard.SummaryWriter`` for ``log_dir`` (one per folder).

    Raises:
        ImportError: tensorboard is not installed (the message says how to install it).
    """
    key = str(Path(log_dir).resolve())
    if key not in _WRITERS:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(
                "TensorBoard logging needs the tensorboard package: pip install tensorboard "
                "(or pass tensorboard=False)"
            ) from exc
        _WRITERS[key] = SummaryWriter(log_dir=key)
    return _WRITERS[key]


def close_writer(log_dir: str | Path) -> bool:
    """Flush and close the shared writer of ``log_dir``; False when none is open."""
    writer = _WRITERS.pop(str(Path(log_dir).resolve()), None)
    if writer is None:
        return False
    writer.close()
    return True


def _is_main_process() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def synthesize(
    model: nn.Module,
    tokens: list[int],
    seed: int,
    speaker: int | None = None,
    max_frames: int | None = None,
    **infer_kwargs: Any,
) -> dict[str, torch.Tensor]:
    """One sentence through ``model.infer`` with a fresh ``torch.Generator`` seeded ``seed``.

    Runs under ``torch.inference_mode()`` in eval mode and restores every submodule's
    train/eval flag afterwards.

    Returns:
        ``audio`` [N] float32 on CPU, ``durations`` [T_x], ``path`` [T_x, T_y] (valid part).
    """
    generator = torch.Generator().manual_seed(int(seed))
    with preserved(model), torch.inference_mode():
        model.eval()
        out = model.infer(
            torch.tensor([tokens], dtype=torch.long), speaker=speaker,
            generator=generator, max_frames=max_frames, **infer_kwargs,
        )
        n = int(out.audio_lengths[0])
        t_y = int(out.y_mask[0].sum())
        audio = out.audio[0, 0, :n].float().cpu()
        durations = out.durations[0, : len(tokens)].float().cpu()
        path = out.path[0, : len(tokens), :t_y].float().cpu()
    return {"audio": audio.clone(), "durations": durations.clone(), "path": path.clone()}


class ListeningCallback(Callback):
    """Synthesize fixed sentences at step 0 (baseline) and every ``every`` steps.

    Args:
        sentences: texts to render (the same at every checkpoint).
        every: render when ``step % every == 0`` (step 0 is the baseline).
        out_dir: run folder; WAVs go to ``out_dir/samples/step_XXXXXXX/NN.wav``, TensorBoard
            events to ``out_dir/tensorboard``.
        seed: sentence ``i`` uses a generator seeded ``seed + i`` at every checkpoint.
        noise_scale, noise_scale_w, length_scale: inference settings (None: the model config's).
        speaker: speaker id for multi-speaker models (default 0).
        tensorboard: also log to TensorBoard (needs the tensorboard package).
        max_seconds: cap on each rendered sentence (an untrained duration predictor can ask
            for very long outputs).
    """

    def __init__(
        self,
        sentences: list[str],
        every: int,
        out_dir: str | Path,
        seed: int = 1234,
        noise_scale: float | None = None,
        noise_scale_w: float | None = None,
        length_scale: float | None = None,
        speaker: int | None = None,
        tensorboard: bool = True,
        max_seconds: float = 20.0,
    ) -> None:
        if not sentences:
            raise ValueError("ListeningCallback needs at least one sentence")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.sentences = list(sentences)
        self.every = int(every)
        self.out_dir = Path(out_dir)
        self.seed = int(seed)
        self.infer_kwargs = {"noise_scale": noise_scale, "noise_scale_w": noise_scale_w, "length_scale": length_scale}
        self.speaker = speaker
        self.tensorboard = tensorboard
        self.max_seconds = float(max_seconds)
        self.rendered: dict[int, dict[str, Any]] = {}
        if tensorboard:
            get_writer(self.tb_dir)  # fail early with the install hint

    @property
    def tb_dir(self) -> Path:
        """TensorBoard log folder."""
        return self.out_dir / "tensorboard"

    def step_dir(self, step: int) -> Path:
        """Folder of the WAVs of ``step``."""
        return self.out_dir / "samples" / f"step_{step:07d}"

    # ------------------------------------------------------------------ hooks
    def __call__(self, trainer: SurgicalTrainer, step: int) -> dict[str, Any]:
        """The deprecated ``listener(trainer, step)`` protocol: :meth:`sample` on ``trainer.model``."""
        return self.sample(trainer.model, step, getattr(trainer, "tokenizer", None))

    def on_fit_start(self, trainer: SurgicalTrainer) -> None:
        if int(getattr(trainer, "step", 0) or 0) == 0:
            self.sample(trainer.model, 0, getattr(trainer, "tokenizer", None))

    def on_step_end(self, trainer: SurgicalTrainer, step: int, logs: dict[str, float]) -> None:
        if step % self.every == 0:
            self.sample(trainer.model, step, getattr(trainer, "tokenizer", None))

    def on_fit_end(self, trainer: SurgicalTrainer) -> None:
        if self.tensorboard:
            close_writer(self.tb_dir)

    # ------------------------------------------------------------------ rendering
    def sample(self, model: nn.Module, step: int, tokenizer: Any | None = None) -> dict[str, Any]:
        """Render every sentence for ``step`` (once; a repeated call returns the same result).

        Args:
            model: a :class:`~vits_surgery.models.vits.VITS` (anything with ``infer`` and ``config``).
            step: training step (0 = baseline).
            tokenizer: ``encode(text) -> list[int]``; default ``Tokenizer(model.config.text)``.

        Returns:
            ``{"step", "dir", "sample_rate", "texts", "tokens", "paths", "audio", "durations",
            "alignments"}``: per sentence the WAV path, audio [N], durations [T_x] and
            alignment [T_x, T_y]. Empty (``{}``) on ranks other than 0.
        """
        if step in self.rendered:
            return self.rendered[step]
        if not _is_main_process():
            return {}
        cfg = model.config
        tokenizer = tokenizer if tokenizer is not None else _tokenizer_for(cfg)
        sr, hop = cfg.audio.sample_rate, cfg.audio.hop_length
        max_frames = max(1, math.ceil(self.max_seconds * sr / hop))
        speaker = self.speaker if self.speaker is not None else (0 if getattr(cfg, "n_speakers", 0) else None)
        result: dict[str, Any] = {
            "step": step, "dir": self.step_dir(step), "sample_rate": sr, "texts": list(self.sentences),
            "tokens": [], "paths": [], "audio": [], "durations": [], "alignments": [],
        }
        index = self.out_dir / "samples" / "sentences.json"
        if not index.is_file():  # the report captions its players with these
            index.parent.mkdir(parents=True, exist_ok=True)
            index.write_text(json.dumps(list(self.sentences), ensure_ascii=False), encoding="utf-8")
        for i, text in enumerate(self.sentences):
            tokens = _encode(tokenizer, text, i)
            out = synthesize(model, tokens, self.seed + i, speaker, max_frames, **self.infer_kwargs)
            path = self._write_wav(self.step_dir(step) / f"{i:02d}.wav", out["audio"], sr)
            for key, value in (("tokens", tokens), ("paths", path), ("audio", out["audio"]),
                               ("durations", out["durations"]), ("alignments", out["path"])):
                result[key].append(value)
        if self.tensorboard:
            self._log_tensorboard(result, cfg, tokenizer)
        self.rendered[step] = result
        logger.info("listening checkpoint %d: %d sentences in %s", step, len(self.sentences), result["dir"])
        return result

    @staticmethod
    def _write_wav(path: Path, audio: torch.Tensor, sample_rate: int) -> Path:
        from ..audio import save_wav

        if not torch.isfinite(audio).all():
            logger.warning("%s: synthesized audio has NaN/inf samples; writing them as 0", path)
            audio = torch.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
        return save_wav(path, audio, sample_rate)

    def _log_tensorboard(self, result: dict[str, Any], cfg: Any, tokenizer: Any) -> None:
        from .. import plots
        from ..audio import log_mel

        writer = get_writer(self.tb_dir)
        step, sr = result["step"], result["sample_rate"]
        use_mpl = plots.have_matplotlib()
        if not use_mpl:
            logger.warning("matplotlib is not installed (pip install matplotlib): logging plain heat maps only")
        for i, audio in enumerate(result["audio"]):
            tag = f"listen/{i:02d}"
            writer.add_audio(f"{tag}/audio", audio.clamp(-1, 1).unsqueeze(0), step, sample_rate=sr)
            mel = log_mel(torch.nan_to_num(audio).unsqueeze(0), cfg.audio)[0] if audio.numel() > cfg.audio.n_fft else None
            images = {"alignment": result["alignments"][i]}
            if mel is not None:
                images["mel"] = mel
            for name, matrix in images.items():
                if use_mpl:
                    fig = plots.mel_figure(matrix, hop_seconds=cfg.audio.hop_length / sr) if name == "mel" \
                        else plots.alignment_figure(matrix)
                    img = plots.figure_to_array(fig)
                else:
                    img = plots.heatmap_array(matrix, height=128)
                writer.add_image(f"{tag}/{name}", img, step, dataformats="HWC")
            if use_mpl:
                labels = _labels(cfg, result["tokens"][i])
                fig = plots.durations_figure(result["durations"][i], labels, title=result["texts"][i][:80])
                writer.add_image(f"{tag}/durations", plots.figure_to_array(fig), step, dataformats="HWC")
            if step == 0:
                writer.add_text(f"{tag}/text", result["texts"][i], step)
        writer.flush()


class TensorBoardLogger(Callback):
    """Log every step's scalars (``logs``) to TensorBoard under ``out_dir/tensorboard``.

    Args:
        out_dir: run folder (shares its SummaryWriter with :class:`ListeningCallback`).
        every: log when ``step % every == 0``.
    """

    def __init__(self, out_dir: str | Path, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.out_dir = Path(out_dir)
        self.every = int(every)
        get_writer(self.tb_dir)  # fail early with the install hint

    @property
    def tb_dir(self) -> Path:
        """TensorBoard log folder."""
        return self.out_dir / "tensorboard"

    @property
    def writer(self) -> Any:
        """The shared writer of :attr:`tb_dir` (opened again after a fit closed it)."""
        return get_writer(self.tb_dir)

    def on_step_end(self, trainer: SurgicalTrainer, step: int, logs: dict[str, float]) -> None:
        if step % self.every or not _is_main_process():
            return
        for key, value in logs.items():
            value = float(value)
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)

    def on_fit_end(self, trainer: SurgicalTrainer) -> None:
        close_writer(self.tb_dir)


def _tokenizer_for(cfg: Any) -> Any:
    from ..text import Tokenizer

    return Tokenizer(cfg.text)


def _encode(tokenizer: Any, text: str, index: int) -> list[int]:
    tokens = list(tokenizer.encode(text))
    if not tokens:
        raise ValueError(f"listening sentence {index} ({text!r}) gives no tokens")
    return tokens


def _labels(cfg: Any, tokens: list[int]) -> list[str]:
    """Symbol per token id (``_`` for the blank), or the ids when the table is unknown."""
    symbols = getattr(cfg.text, "symbols", ())
    blank = getattr(cfg.text, "blank", None)
    out = []
    for t in tokens:
        sym = symbols[t] if 0 <= t < len(symbols) else str(t)
        out.append("_" if sym == blank else sym)
    return out
