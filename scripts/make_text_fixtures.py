"""Write the golden token fixtures of tests/test_text.py from the reference implementations.

Two parts, each run in the environment that has the reference package:

    # Coqui TTS 0.28 (a virtual environment with coqui-tts installed): coqui_tokens.json
    COQUI_VENV/bin/python scripts/make_text_fixtures.py coqui

    # Piper 1.8 (a throw-away venv with `pip install piper-tts`): piper_joe.json
    /tmp/piper-venv/bin/python scripts/make_text_fixtures.py piper \\
        --voice-config /path/to/en_US-joe-medium.onnx.json

The reference packages are only run here, never imported by the library or its tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "text"
LJSPEECH = Path(os.environ.get("VITS_SURGERY_SENTENCES", "bench_data/ljspeech_sentences.txt"))
LJSPEECH_LINES = (1, 33, 58, 121, 459, 683, 996, 1042, 1103)
"""1-based lines: abbreviations (Dr. Drs. Mr. Mrs.), quotes, parentheses, colon, hyphen, umlaut."""
EXTRA = (
    "In 1865, Mr. Lincoln had 12,000 men; Dr. Stone paid $12.25 on the 3rd of May.",
    "At 10:30 am, the 1,500 soldiers marched 21 miles - about 33.8 km!",
)
"""Own sentences with numbers, money, ordinals, times and decimals (LJSpeech has no digits)."""
PIPER_TEXTS = (
    "Hello world. How are you? Fine!",
    "Well, I think: yes; no.",
    "The tried and the untried, young and old, were herded together",
    'He said "the end." Then he left.',
    "French quotes — a dash, and an ellipsis... then the end.",
    "Mr. and Mrs. Jones live on St. James St. in the U.S.A.",
)


def sentences() -> list[str]:
    lines = LJSPEECH.read_text(encoding="utf-8").splitlines()
    return [lines[i - 1].strip() for i in LJSPEECH_LINES] + list(EXTRA)


def coqui_cases() -> dict:
    """Tokenizer settings of each case (mirrored by the test with our own configs)."""
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import VitsCharacters

    vits_chars = VitsCharacters().to_config()
    vits_chars.characters_class = "TTS.tts.models.vits.VitsCharacters"
    return {
        "graphemes": VitsConfig(),
        "graphemes_cleaned_bos_eos": VitsConfig(text_cleaner="english_cleaners", enable_eos_bos_chars=True),
        "phonemes_vits_characters": VitsConfig(
            use_phonemes=True, phoneme_language="en-us", text_cleaner="english_cleaners", characters=vits_chars
        ),
        "phonemes_ipa": VitsConfig(use_phonemes=True, phoneme_language="en-us", text_cleaner="english_cleaners"),
    }


def make_coqui() -> None:
    import TTS
    from TTS.tts.utils.text.tokenizer import TTSTokenizer

    texts = sentences()
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.split()
    out: dict = {
        "coqui_tts_version": TTS.__version__,
        "espeak_ng_version": espeak[espeak.index("text-to-speech:") + 1],
        "texts": texts,
        "cases": {},
    }
    for name, config in coqui_cases().items():
        tok, _ = TTSTokenizer.init_from_config(config)
        # text_to_ids passes lang=None to the cleaner (no abbreviation expansion); keep both
        cleaned = [tok.text_cleaner(t, lang=None) if tok.text_cleaner else t for t in texts]
        cleaned_en = [tok.text_cleaner(t, lang="en") if tok.text_cleaner else t for t in texts]
        phonemes = (
            [tok.phonemizer.phonemize(c, separator="", language="en-us") for c in cleaned]
            if tok.use_phonemes else None
        )
        out["cases"][name] = {
            "vocab": tok.characters.vocab,
            "add_blank": tok.add_blank,
            "use_eos_bos": tok.use_eos_bos,
            "cleaned": cleaned,
            "cleaned_en": cleaned_en,
            "phonemes": phonemes,
            "ids": [tok.text_to_ids(t) for t in texts],
        }
    write("coqui_tokens.json", out)


def make_piper(voice_config: Path) -> None:
    import piper
    from piper.phoneme_ids import phonemes_to_ids
    from piper.phonemize_espeak import EspeakPhonemizer

    config = json.loads(voice_config.read_text(encoding="utf-8"))
    voice = config["espeak"]["voice"]
    id_map = config["phoneme_id_map"]
    phonemizer = EspeakPhonemizer()
    items = []
    for text in PIPER_TEXTS:
        sents = phonemizer.phonemize(voice, text)
        items.append({
            "text": text,
            "phonemes": ["".join(s) for s in sents],
            "ids": [phonemes_to_ids(s, id_map=id_map) for s in sents],
        })
    write("piper_joe.json", {
        "piper_version": getattr(piper, "__version__", "1.8"),
        "voice_config": voice_config.name,
        "espeak_voice": voice,
        "items": items,
    })


def write(name: str, data: dict) -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / name
    text = json.dumps(data, ensure_ascii=False, indent=1)
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {path}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("coqui", "piper"))
    parser.add_argument("--voice-config", type=Path, help="Piper voice .onnx.json (piper part)")
    args = parser.parse_args()
    if args.part == "coqui":
        make_coqui()
    else:
        if args.voice_config is None:
            parser.error("the piper part needs --voice-config")
        make_piper(args.voice_config)


if __name__ == "__main__":
    main()
