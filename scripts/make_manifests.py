"""Build key/shape manifests of original-VITS and Piper checkpoints from the reference notes.

The reference notes (``formats.md``, appendices A1-A4 and C1-C2) list every state-dict key and
shape of randomly initialised reference models (jaywalnut310/vits, piper-tts 1.8.0). This script
parses those listings into small JSON files under ``tests/fixtures/manifests/`` that the
converter tests turn into real checkpoint files.

Usage::

    python scripts/make_manifests.py --formats PATH/formats.md [--out tests/fixtures/manifests]

Each manifest is ``{"source": ..., "note": ..., "keys": {key: [shape...]}}``, keys in the
listing's order. Where an appendix states its tensor count (and element count), it is checked.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "manifests"

#: appendix id -> (output file, note, number of keys listed)
APPENDICES: dict[str, tuple[str, str, int]] = {
    "A1": ("vits_ljs_base_G.json", "original VITS ljs_base generator (n_vocab 178)", 838),
    "A2": ("vits_D.json", "original VITS MultiPeriodDiscriminator (D_*.pth, Piper model_d.*)", 111),
    "A3": ("vits_vctk_base_G_additions.json", "vctk_base (109 speakers, gin 256): keys added to A1", 20),
    "A4": ("vits_ljs_nosdp_dp.json", "ljs_nosdp: deterministic dp keys, replacing every dp.* key of A1", 10),
    "C1": ("piper_medium_model_g.json", "Piper 1.8 medium single-speaker model_g.* (num_symbols 256)", 673),
    "C2": ("piper_medium_multispeaker_additions.json", "Piper medium, 4 speakers (gin 512): keys added to C1", 20),
}

#: appendix whose stated totals also count another appendix's keys (C1's header counts model_d = A2)
STATED_WITH = {"C1": "A2"}

_HEADING = re.compile(r"^### (?P<id>[A-Z]\d+)\. ")
_LINE = re.compile(r"^(?P<key>[\w.]+)\s+\[(?P<shape>[\d, ]*)\]$")
_TOTAL = re.compile(r"# (?P<n>\d+) tensors, (?P<el>\d+) elements")


def _sections(text: str) -> dict[str, list[str]]:
    """Appendix id -> lines from its heading to the next heading."""
    out: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            current = m.group("id")
            out[current] = []
        elif line.startswith("## "):
            current = None
        elif current is not None:
            out[current].append(line)
    return out


def parse_listing(lines: list[str], appendix: str) -> tuple[dict[str, list[int]], int | None, int | None]:
    """Keys and shapes of the first fenced block of an appendix, plus its stated totals.

    Raises:
        ValueError: no fenced block, a malformed line inside it, or a repeated key.
    """
    stated_n = stated_el = None
    for line in lines:
        m = _TOTAL.search(line)
        if m and stated_n is None:
            stated_n, stated_el = int(m.group("n")), int(m.group("el"))
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("```"))
        end = next(i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("```"))
    except StopIteration:
        raise ValueError(f"appendix {appendix}: no fenced key listing found") from None
    keys: dict[str, list[int]] = {}
    for line in lines[start + 1 : end]:
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if m is None:
            raise ValueError(f"appendix {appendix}: cannot parse line {line!r}")
        if m.group("key") in keys:
            raise ValueError(f"appendix {appendix}: key {m.group('key')!r} listed twice")
        keys[m.group("key")] = [int(d) for d in m.group("shape").split(",") if d.strip()]
    return keys, stated_n, stated_el


def build(formats: Path, out: Path) -> dict[str, int]:
    """Write every manifest; returns file name -> number of keys.

    Raises:
        ValueError: an appendix is missing or its listing disagrees with its stated totals.
    """
    sections = _sections(formats.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    parsed = {}
    for appendix, (_, _, expected) in APPENDICES.items():
        if appendix not in sections:
            raise ValueError(f"{formats}: appendix {appendix} not found")
        parsed[appendix] = parse_listing(sections[appendix], appendix)
        if len(parsed[appendix][0]) != expected:
            raise ValueError(f"appendix {appendix}: {len(parsed[appendix][0])} keys listed, expected {expected}")
    written: dict[str, int] = {}
    for appendix, (name, note, _) in APPENDICES.items():
        keys, stated_n, stated_el = parsed[appendix]
        counted = [keys] + ([parsed[STATED_WITH[appendix]][0]] if appendix in STATED_WITH else [])
        if stated_n is not None and sum(len(k) for k in counted) != stated_n:
            raise ValueError(f"appendix {appendix}: listing disagrees with its stated {stated_n} tensors")
        elements = sum(math.prod(s) for k in counted for s in k.values())
        if stated_el is not None and elements != stated_el:
            raise ValueError(f"appendix {appendix}: {elements} elements listed, {stated_el} stated")
        body = ",\n".join(f"    {json.dumps(k)}: {json.dumps(s)}" for k, s in keys.items())
        header = f'{{\n  "source": "formats.md appendix {appendix}",\n  "note": {json.dumps(note)},\n'
        (out / name).write_text(header + '  "keys": {\n' + body + "\n  }\n}\n", encoding="utf-8")
        written[name] = len(keys)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", type=Path, required=True, help="path of formats.md (the format reference)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="manifest folder")
    args = parser.parse_args()
    for name, n in build(args.formats, args.out).items():
        print(f"{args.out / name}: {n} keys")


if __name__ == "__main__":
    main()
