"""Per-token donor durations for a cadence transplant, from one of three sources."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .segments import WordSpan
from .tokens import token_durations

__all__ = ["SOURCES", "DonorUtterance", "choose_source", "donor_durations", "mas_durations", "recipient_weights"]

logger = logging.getLogger(__name__)

#: The duration sources :func:`donor_durations` accepts.
SOURCES = ("auto", "forced", "textgrid", "mas")


@dataclass
class DonorUtterance:
    """What a duration source needs of one utterance (model rate, model tokens)."""

    id: str
    text: str
    tokens: list[int]
    audio: np.ndarray  # [N] float32 at the model's sample rate
    n_frames: int
    spec: torch.Tensor | None = None  # [F, n_frames], when already computed


def _from_dataset(dataset: Any) -> Iterable[DonorUtterance]:
    for i in range(len(dataset)):
        s = dataset[i]
        yield DonorUtterance(s.id, s.text, s.tokens.tolist(), s.wav[0].numpy(), int(s.spec.shape[-1]), s.spec)


def _from_items(model: Any, items: Iterable[Any]) -> Iterable[DonorUtterance]:
    from ..audio import load_audio, num_frames, resample
    from ..text import Tokenizer

    cfg = model.config.audio
    tokenizer = Tokenizer.from_config(model.config)
    for item in items:
        path, text = (item.audio_path, item.text) if hasattr(item, "audio_path") else (item[0], item[1])
        uid = getattr(item, "id", "") or Path(path).stem
        audio, sr = load_audio(path)
        if sr != cfg.sample_rate:
            audio = resample(audio, sr, cfg.sample_rate)
        n = num_frames(len(audio), cfg.n_fft, cfg.hop_length)
        yield DonorUtterance(uid, text, tokenizer.encode(text), np.asarray(audio, dtype=np.float32), n)


@torch.no_grad()
def recipient_weights(model: Any, tokens: Sequence[int]) -> torch.Tensor:
    """The recipient's own predicted durations [T] (frames, not rounded, no noise)."""
    from .cache import predicted_durations

    x = torch.tensor([list(tokens)], dtype=torch.long)
    return predicted_durations(model, model.encode_text(x, torch.tensor([x.shape[1]])))[0].double()


def _one_batch(model: Any, utt: DonorUtterance) -> Any:
    """``utt`` as a one-item :class:`~vits_surgery.batch.Batch` (CPU)."""
    from ..audio import spectrogram
    from ..batch import Batch

    spec = utt.spec
    if spec is None:
        spec = spectrogram(torch.from_numpy(utt.audio).unsqueeze(0), model.config.audio)[0]
    wav = torch.from_numpy(utt.audio).view(1, 1, -1)
    return Batch(tokens=torch.tensor([utt.tokens], dtype=torch.long), token_lengths=torch.tensor([len(utt.tokens)]),
                 spec=spec.unsqueeze(0), spec_lengths=torch.tensor([spec.shape[-1]]),
                 wav=wav, wav_lengths=torch.tensor([wav.shape[-1]]), texts=[utt.text], ids=[utt.id])


@torch.no_grad()
def mas_durations(model: Any, utt: DonorUtterance) -> torch.Tensor:
    """MAS through the model's own posterior encoder (mean) and flow: [T] long frames."""
    from .mas import posterior_durations

    return posterior_durations(model, _one_batch(model, utt))[0]


def choose_source(model: Any, utterances: Sequence[DonorUtterance], max_utterances: int = 12) -> str:
    """``"mas"`` or ``"forced"`` for these donor utterances, as the ``"auto"`` source decides
    (:class:`~vits_surgery.durations.cache.AutoDurations`: the prior-fit gap on the first
    ``max_utterances``; ``"mas"`` with a warning when pocketsphinx is not installed)."""
    from .cache import AutoDurations

    auto = AutoDurations(max_utterances=max_utterances)
    return auto.decide(model, (_one_batch(model, u) for u in utterances[:max_utterances]))


def _textgrid_for(textgrids: Any, utt: DonorUtterance, index: int) -> Path:
    if isinstance(textgrids, Mapping):
        return Path(textgrids[utt.id])
    if isinstance(textgrids, (str, Path)):
        return Path(textgrids) / f"{utt.id}.TextGrid"
    return Path(list(textgrids)[index])


def _word_spans(utt: DonorUtterance, source: str, sample_rate: int, textgrids: Any, index: int,
                language: str) -> list[WordSpan]:
    if source == "forced":
        from .forced import forced_align

        return forced_align(utt.audio, sample_rate, utt.text, language=language)
    from .textgrid import read_textgrid

    return read_textgrid(_textgrid_for(textgrids, utt, index))


def donor_durations(
    model: Any,
    data: Any,
    source: str = "auto",
    *,
    textgrids: str | Path | Mapping[str, str | Path] | Sequence[str | Path] | None = None,
    weights: str = "recipient",
    min_frames: int = 1,
    language: str = "en-us",
    timing: str = "words",
) -> list[torch.Tensor | None]:
    """Integer frames per model token for each donor utterance.

    Contract: entry ``i`` belongs to utterance ``i`` of ``data`` (dataset order) and is a
    ``LongTensor [T_text]`` aligned with that utterance's token ids (the dataset's
    ``Sample.tokens``, or ``Tokenizer.encode(text)`` for plain items), every count
    ``>= min_frames``, summing exactly to the utterance's spectrogram frame count
    (``Sample.spec.shape[-1]``, i.e. :func:`vits_surgery.audio.num_frames` of the audio at
    the model's rate). An utterance the aligner cannot align gives ``None`` (logged); a
    consumer skips it.

    Sources:

    * ``"auto"`` (default): ``"mas"`` for a donor that sounds like the recipient, ``"forced"``
      for another voice, chosen by the prior-fit gap on the first utterances
      (:func:`choose_source`); ``"mas"`` when pocketsphinx is not installed (with a warning).
    * ``"forced"``: speaker-independent forced alignment (pocketsphinx's English acoustic
      model, :func:`~vits_surgery.durations.forced.forced_align`): word and phone segments,
      pauses on separator tokens (:mod:`~vits_surgery.durations.tokens`). Right for a donor the
      recipient never heard. English only.
    * ``"textgrid"``: the same mapping from TextGrids the user already holds (e.g. Montreal
      Forced Aligner output, :func:`~vits_surgery.durations.textgrid.read_textgrid`).
    * ``"mas"``: monotonic alignment search through the recipient's own posterior encoder and
      flow (the VITS training path). Exact for the recipient's own voice; misplaces
      boundaries for a foreign voice.

    Args:
        model: the recipient :class:`~vits_surgery.VITS` (its config gives tokenizer, hop and
            sample rate; its duration predictor gives ``weights``, its posterior the ``"mas"``
            route).
        data: a :class:`~vits_surgery.data.TextAudioDataset`, or a sequence of
            :class:`~vits_surgery.data.Utterance` or ``(audio_path, text)`` pairs.
        source: ``"auto"``, ``"forced"``, ``"textgrid"`` or ``"mas"``.
        textgrids: for ``"textgrid"``: a folder holding ``<utterance id>.TextGrid``, a mapping
            id -> file, or one file per utterance in order.
        weights: how a word's or phone's time is shared among its tokens (phonemes, stress
            marks, blanks): ``"recipient"`` in proportion to the recipient's own predicted
            durations, ``"uniform"`` equally.
        min_frames: the fewest frames any token gets.
        language: espeak-ng voice that pronounces words missing from the aligner's dictionary.
        timing: for ``"forced"``: ``"words"`` keeps the aligner's word and pause times and drops
            its phone times (its least reliable output; as the cached cadence step does),
            ``"phones"`` keeps them. TextGrids keep their phones.

    Returns:
        One ``LongTensor [T_text]`` (or ``None``) per utterance.

    Raises:
        ValueError: unknown ``source`` / ``weights``, or ``"textgrid"`` without ``textgrids``.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if timing not in ("words", "phones"):
        raise ValueError(f"timing must be 'words' or 'phones', got {timing!r}")
    if weights not in ("recipient", "uniform"):
        raise ValueError(f"weights must be 'recipient' or 'uniform', got {weights!r}")
    if source == "textgrid" and textgrids is None:
        raise ValueError("source='textgrid' needs textgrids= (a folder, a mapping or a list of files)")
    from ..text import Tokenizer

    tokenizer = Tokenizer.from_config(model.config)
    cfg = model.config.audio
    frame_seconds = cfg.hop_length / cfg.sample_rate
    utterances = _from_dataset(data) if hasattr(data, "entries") and hasattr(data, "lengths") else _from_items(model, data)
    was_training = model.training
    model.eval()
    if source == "auto":
        utterances = list(utterances)
        source = choose_source(model, utterances)
        logger.info("donor durations: source auto chose %r", source)
    out: list[torch.Tensor | None] = []
    t0, failed = time.time(), 0
    try:
        for i, utt in enumerate(utterances):
            if source == "mas":
                out.append(mas_durations(model, utt))
                continue
            from .forced import AlignmentError

            try:
                spans = _word_spans(utt, source, cfg.sample_rate, textgrids, i, language)
                if source == "forced" and timing == "words":
                    spans = [WordSpan(w.text, w.start, w.end) for w in spans]
            except AlignmentError as err:
                logger.warning("%s: %s; no durations for this utterance", utt.id, err)
                out.append(None)
                failed += 1
                continue
            w = recipient_weights(model, utt.tokens) if weights == "recipient" else None
            out.append(token_durations(tokenizer, utt.tokens, spans, utt.n_frames, frame_seconds, w, min_frames))
    finally:
        model.train(was_training)
    logger.info("donor durations (%s): %d utterances in %.1f s, %d not aligned", source, len(out),
                time.time() - t0, failed)
    return out
