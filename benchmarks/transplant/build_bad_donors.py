"""Donors the diagnosis must refuse, built from the transplant corpora (run build_donors.py first).

Usage:
    python benchmarks/transplant/build_bad_donors.py [--out bench_data/diag_donors]

- ``D_de``: espeak-ng German reading 30 German sentences at three speeds (a different language).
- ``D_8k``: D_tim's training utterances stored at 8 kHz (a sample rate far below the voice's).
- ``D_clip``: D_tim's training utterances 8x louder, clipped to full scale.
- ``D_short``: D_tim's first 8 training utterances (too little audio).
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_ROOT, read_corpus  # noqa: E402

from vits_surgery.audio import load_audio, resample, save_wav  # noqa: E402

GERMAN = """Der Hund läuft schnell über die grüne Wiese.
Heute Morgen hat es in der ganzen Stadt geregnet.
Meine Schwester wohnt seit vielen Jahren in Hamburg.
Wir fahren am Wochenende mit dem Zug an die See.
Das Buch liegt auf dem Tisch neben der Lampe.
Die Kinder spielen im Garten mit einem roten Ball.
Er trinkt jeden Morgen eine Tasse schwarzen Kaffee.
Im Winter ist es hier oft sehr kalt und dunkel.
Der Bäcker öffnet seinen Laden schon um sechs Uhr.
Sie hat den Brief gestern Abend endlich geschrieben.
Auf dem Markt gibt es frisches Obst und Gemüse.
Der Lehrer erklärt die Aufgabe noch einmal ganz langsam.
Unser Nachbar repariert sein altes Fahrrad in der Garage.
Die Sonne geht im Sommer erst spät am Abend unter.
Wir haben im Restaurant eine große Pizza bestellt.
Das Konzert beginnt pünktlich um acht Uhr abends.
Im Museum hängen viele berühmte Bilder aus Italien.
Der Zug nach München hat leider zwanzig Minuten Verspätung.
Meine Großmutter backt den besten Apfelkuchen der Welt.
Die Katze schläft den ganzen Tag auf dem Sofa.
Nach dem Essen gehen wir noch ein wenig spazieren.
Der Arzt sagt, ich soll mehr Wasser trinken.
Im Herbst fallen die bunten Blätter von den Bäumen.
Die Studenten lernen für die schwierige Prüfung am Montag.
Am Bahnhof warten viele Menschen auf den letzten Bus.
Der Fluss fließt langsam durch das kleine Dorf.
Ich habe meinen Schlüssel wieder einmal verloren.
Die Blumen im Fenster brauchen jeden Tag frisches Wasser.
Das Wetter soll morgen wieder besser werden.
Er liest am liebsten spannende Geschichten über Piraten.""".splitlines()

def write(folder: Path, rows: list) -> None:
    (folder / "wavs").mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.csv", "w") as f:
        for uid, text, audio, sr in rows:
            save_wav(folder / "wavs" / f"{uid}.wav", audio, sr)
            f.write(f"{uid}|{text}|{text}\n")

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_ROOT.parent / "diag_donors")
    ap.add_argument("--corpora", type=Path, default=DEFAULT_ROOT)
    args = ap.parse_args()
    rows = []
    for k in range(3):  # three readings of each sentence at different speeds: ~5 minutes
        for i, text in enumerate(GERMAN):
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / "a.wav"
                subprocess.run(["espeak-ng", "-v", "de", "-s", str(150 + 15 * k), "-w", str(p), text], check=True)
                a, sr = load_audio(p)
            rows.append((f"de{k}_{i:03d}", text, resample(a, sr, 22050) * 0.8, 22050))
    write(args.out / "D_de", rows)
    items = read_corpus(args.corpora / "D_tim" / "train")
    tim = [(it.id, it.text, *load_audio(it.wav)) for it in items]
    write(args.out / "D_8k", [(u, t, resample(a, sr, 8000), 8000) for u, t, a, sr in tim])
    write(args.out / "D_clip", [(u, t, np.clip(a * 8.0, -1, 1), sr) for u, t, a, sr in tim])
    write(args.out / "D_short", tim[:8])


if __name__ == "__main__":
    main()
