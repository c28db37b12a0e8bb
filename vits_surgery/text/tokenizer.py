"""Text -> token ids, as each VITS implementation builds its input sequence.

Pipeline: cleaner -> optional phonemizer -> symbols -> ids -> blank interleave / BOS-EOS.

Styles (``TextConfig.style``):

* ``"coqui"``: Coqui ``TTSTokenizer``. With ``add_blank`` the blank id goes between all
  tokens and at both ends (``2n + 1`` ids); with ``use_bos_eos`` BOS/EOS wrap the result.
* ``"vits"``: original VITS ``intersperse(seq, 0)``.
* ``"hf"``: transformers ``VitsTokenizer``: interleave id 0 (a real symbol in MMS vocabularies).
* ``"piper"``: ``^ _ p1 _ p2 _ ... pn _ $`` through the voice's ``phoneme_id_map``, from
  Piper-style phonemes (:func:`vits_surgery.text.phonemize.piper_phonemes`).

A symbol repeated in a table looks up as its last id (original VITS apostrophe -> 176).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .cleaners import PHONEMIZING_CLEANERS, clean
from .symbols import piper_default_phoneme_id_map, symbol_to_id

if TYPE_CHECKING:
    from ..config import TextConfig, VITSConfig

__all__ = ["Tokenizer", "UnknownSymbolError"]

_PIPER_PAD, _PIPER_BOS, _PIPER_EOS = "_", "^", "$"


class UnknownSymbolError(ValueError):
    """A character of the (cleaned / phonemized) text is not in the symbol table."""


class Tokenizer:
    """Turns text into the token ids a VITS text encoder expects.

    Args:
        text_cfg: the ``text`` slice of a :class:`~vits_surgery.config.VITSConfig`.
        on_unknown: ``"error"`` raises :class:`UnknownSymbolError` naming the symbol and
            its position; ``"drop"`` drops it with a warning.

    Example:
        >>> tok = Tokenizer.from_config(preset("tiny"))
        >>> ids = tok.encode("Dr. Smith paid $5.")
    """

    def __init__(self, text_cfg: TextConfig, on_unknown: str = "error") -> None:
        if on_unknown not in ("error", "drop"):
            raise ValueError(f"on_unknown must be 'error' or 'drop', got {on_unknown!r}")
        self.cfg = text_cfg
        self.on_unknown = on_unknown
        if text_cfg.style == "piper":
            pairs = text_cfg.phoneme_id_map
            self.id_map: dict[str, tuple[int, ...]] = (
                {s: tuple(ids) for s, ids in pairs} if pairs else piper_default_phoneme_id_map()
            )
        else:
            if not text_cfg.symbols:
                raise ValueError(
                    f"text.symbols is empty: the {text_cfg.style!r} style needs a symbol table"
                )
            self.id_map = {s: (i,) for s, i in symbol_to_id(text_cfg.symbols).items()}
        self._id_to_symbol = self._inverse()

    # ----------------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, cfg: VITSConfig | TextConfig, on_unknown: str = "error") -> Tokenizer:
        """Build from a whole :class:`VITSConfig` or its :class:`TextConfig`."""
        text_cfg = getattr(cfg, "text", cfg)
        return cls(text_cfg, on_unknown=on_unknown)

    def _inverse(self) -> dict[int, str]:
        inverse: dict[int, str] = {}
        if self.cfg.style != "piper":
            for i, s in enumerate(self.cfg.symbols):
                inverse.setdefault(i, s)
            return inverse
        for s, ids in self.id_map.items():
            if len(ids) == 1:
                inverse.setdefault(ids[0], s)
        return inverse

    def _special_id(self, symbol: str | None, role: str) -> int:
        if symbol is None or symbol not in self.id_map:
            raise ValueError(
                f"text.{role} is {symbol!r}, which is not in the symbol table of this {self.cfg.style!r} tokenizer"
            )
        return self.id_map[symbol][0]

    @property
    def blank_id(self) -> int:
        """Id interleaved between tokens when ``add_blank``."""
        if self.cfg.style in ("vits", "hf"):
            return 0
        if self.cfg.style == "piper":
            return self._special_id(self.cfg.pad or _PIPER_PAD, "pad")
        return self._special_id(self.cfg.blank, "blank")

    @property
    def pad_id(self) -> int:
        """Id used to pad batches (0 for the original VITS, HF and Piper tables)."""
        if self.cfg.style in ("vits", "hf"):
            return 0
        return self._special_id(self.cfg.pad or _PIPER_PAD, "pad")

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids that stand for no symbol of the text: the interleaved blank, BOS and EOS."""
        cfg = self.cfg
        out = {self.blank_id} if cfg.add_blank else set()
        if cfg.style == "piper":
            out |= {self._special_id(cfg.bos or _PIPER_BOS, "bos"), self._special_id(cfg.eos or _PIPER_EOS, "eos")}
        elif cfg.use_bos_eos:
            out |= {self._special_id(cfg.bos, "bos"), self._special_id(cfg.eos, "eos")}
        return frozenset(out)

    @property
    def vocab_size(self) -> int:
        """Rows a text-encoder embedding needs (largest id + 1)."""
        return 1 + max(i for ids in self.id_map.values() for i in ids)

    # ----------------------------------------------------------------------- text -> symbols
    def normalize(self, text: str) -> str:
        """Cleaner, then phonemizer when configured: the string whose characters are symbols.

        For the ``"piper"`` style the result is the Piper phonemes of all sentences joined.
        """
        if self.cfg.style == "piper":
            return "".join("".join(s) for s in self._piper_sentences(text))
        _check_text(text)
        cfg = self.cfg
        text = clean(text, cfg.cleaner)
        if cfg.use_phonemes and cfg.cleaner not in PHONEMIZING_CLEANERS:
            from .phonemize import phonemize

            text = phonemize(text, language=cfg.phoneme_language)
        return text

    # ----------------------------------------------------------------------- symbols -> ids
    def ids_from_symbols(self, symbols: Sequence[str], source: str | None = None) -> list[int]:
        """Map symbols to ids and build the full sequence (blanks, BOS/EOS) for this style.

        Args:
            symbols: one symbol per item (a string is split into characters).
            source: the original text, quoted in error messages.

        Returns:
            The token ids, e.g. ``2n + 1`` of them with ``add_blank`` and no BOS/EOS.

        Raises:
            UnknownSymbolError: a symbol is not in the table and ``on_unknown="error"``.
            ValueError: no symbol is left.
        """
        body: list[tuple[int, ...]] = []
        for pos, sym in enumerate(symbols):
            ids = self.id_map.get(sym)
            if ids is None:
                self._unknown(sym, pos, symbols, source)
                continue
            body.append(ids)
        if not body:
            raise ValueError(f"text {source!r} has no symbol of this tokenizer's table")
        return self._assemble(body)

    def _unknown(self, sym: str, pos: int, symbols: Sequence[str], source: str | None) -> None:
        shown = "".join(symbols) if all(len(s) == 1 for s in symbols) else " ".join(symbols)
        where = f" (from {source!r})" if source is not None and source != shown else ""
        msg = (
            f"unknown symbol {sym!r} (U+{ord(sym[0]):04X}) at position {pos} of {shown!r}{where}; "
            f"it is not in the {self.cfg.style!r} symbol table"
        )
        if self.on_unknown == "error":
            raise UnknownSymbolError(msg)
        warnings.warn(msg + "; dropped", stacklevel=4)

    def _assemble(self, body: list[tuple[int, ...]]) -> list[int]:
        cfg = self.cfg
        if cfg.style == "piper":
            pad = [self.blank_id] if cfg.add_blank else []
            out = [self._special_id(cfg.bos or _PIPER_BOS, "bos"), *pad]
            for ids in body:
                out.extend(ids)
                out.extend(pad)
            out.append(self._special_id(cfg.eos or _PIPER_EOS, "eos"))
            return out
        flat = [i for ids in body for i in ids]
        if cfg.add_blank:
            blank = self.blank_id
            spread = [blank] * (2 * len(flat) + 1)
            spread[1::2] = flat
            flat = spread
        if cfg.use_bos_eos:
            flat = [self._special_id(cfg.bos, "bos"), *flat, self._special_id(cfg.eos, "eos")]
        return flat

    # ----------------------------------------------------------------------- public API
    def encode(self, text: str) -> list[int]:
        """Text -> ids: cleaner, phonemizer (if configured), symbols, blanks / BOS / EOS.

        For the ``"piper"`` style this is the concatenation of the per-sentence sequences
        (each ``^ ... $``), as Piper 1.8 builds its training utterances.

        Raises:
            ValueError: empty text, or nothing left after dropping unknown symbols.
            UnknownSymbolError: see :meth:`ids_from_symbols`.
            PhonemizerError: phonemes are configured but espeak-ng is unavailable.
        """
        if self.cfg.style == "piper":
            return [i for sentence in self._piper_sentences(text) for i in self._piper_ids(sentence, text)]
        return self.ids_from_symbols(list(self.normalize(text)), source=text)

    def encode_sentences(self, text: str) -> list[list[int]]:
        """Piper inference: one id sequence per non-empty sentence (other styles: one)."""
        if self.cfg.style != "piper":
            return [self.encode(text)]
        return [self._piper_ids(s, text) for s in self._piper_sentences(text) if s]

    def _piper_sentences(self, text: str) -> list[list[str]]:
        from .phonemize import piper_phonemes

        _check_text(text)
        return piper_phonemes(clean(text, self.cfg.cleaner), voice=self.cfg.phoneme_language)

    def _piper_ids(self, phonemes: list[str], source: str) -> list[int]:
        return self.ids_from_symbols(phonemes, source=source) if phonemes else self._assemble([])

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> symbol string, dropping blanks (at interleaved positions), BOS and EOS.

        Raises:
            ValueError: an id outside the table.
        """
        ids = [int(i) for i in ids]
        cfg = self.cfg
        if cfg.style == "piper":  # possibly several ^ ... $ sentences
            special = {self.blank_id, self._special_id(cfg.bos or _PIPER_BOS, "bos"),
                       self._special_id(cfg.eos or _PIPER_EOS, "eos")}
            ids = [i for i in ids if i not in special]
        else:
            if cfg.use_bos_eos:
                ids = ids[1:-1]
            if cfg.add_blank:
                ids = ids[1::2]
        out = []
        for pos, i in enumerate(ids):
            if i not in self._id_to_symbol:
                raise ValueError(f"token id {i} at position {pos} is not in the symbol table")
            out.append(self._id_to_symbol[i])
        return "".join(out)


def _check_text(text: object) -> None:
    """Refuse what cannot be tokenized: a non-string, or a string without visible characters."""
    if not isinstance(text, str):
        raise TypeError(f"the tokenizer needs a str, got {type(text).__name__} ({text!r:.80})")
    if not text.strip():
        raise ValueError(f"cannot tokenize empty text ({text!r})")
