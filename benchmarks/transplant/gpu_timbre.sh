#!/usr/bin/env bash
# Timbre transplants (donors D_tim and D) on one GPU, each under a time limit.
#
# Usage: benchmarks/transplant/gpu_timbre.sh DATA [RESULTS]
#   DATA     folder made by build_donors.py + run_transplants.py --regrow-only: it must hold
#            models/joe_regrown/model.safetensors, D_tim/train, D/train and R/test
#            (metadata.csv + wavs/). Carrying DATA/cache/<donor>/tokens (written by any CPU run
#            on these donors) spares the phonemizer there: token ids are then read, not made.
#   RESULTS  where the changed inference organs (decoder, flow; fp16, < 16 MiB per file) and
#            each run's result.json go; default $OUT (the device tool's return folder) or
#            runs/transplant_gpu. Bring them home with
#            `python benchmarks/transplant/run_transplants.py --import-exported RESULTS`,
#            then `python benchmarks/transplant/report.py`.
# Settings (environment): TIMBRE_STEPS (default 3000), TIMBRE_LR (2e-4), TIMBRE_BATCH (16),
# RUN_LIMIT_S per run (210), DEVICE (cuda), AMP (bf16; "none" for fp32), PYTHON (python3).
# Python needs torch, numpy, scipy, safetensors, numba, soundfile (and phonemizer + espeak-ng
# unless the token cache travels). When a .whl folder travels, its wheels are installed first.
set -euo pipefail
DATA=${1:?usage: gpu_timbre.sh DATA [RESULTS]}
RESULTS=${2:-${OUT:-runs/transplant_gpu}}
STEPS=${TIMBRE_STEPS:-3000}
LR=${TIMBRE_LR:-2e-4}
BATCH=${TIMBRE_BATCH:-16}
LIMIT=${RUN_LIMIT_S:-210}
DEVICE=${DEVICE:-cuda}
AMP=${AMP:-bf16}
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1 PYTHONPATH="$HERE/../..${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
for need in "$DATA/models/joe_regrown/model.safetensors" "$DATA/D_tim/train/metadata.csv" "$DATA/D/train/metadata.csv" "$DATA/R/test/metadata.csv"; do
  [ -e "$need" ] || { echo "missing $need (see the header of $0)" >&2; exit 2; }
done
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
WORK=${WORK:-/tmp/transplant_gpu}   # run folders (checkpoints) stay here; RESULTS gets 7 files
mkdir -p "$RESULTS" "$WORK"
amp_arg=(--amp "$AMP"); [ "$AMP" = none ] && amp_arg=()
status=0
for donor in D_tim D; do
  # training stops by itself after LIMIT seconds and still exports; the timeout is a backstop.
  # no duration probe: a timbre run leaves the duration predictor alone (and it needs the phonemizer).
  timeout "$((LIMIT + 90))" "$PY" "$HERE/run_transplants.py" --data "$DATA" \
    --runs-dir "$WORK/runs" --export "$RESULTS" --runs "timbre:$donor" --time-budget "$LIMIT" \
    --timbre-steps "$STEPS" --timbre-lr "$LR" --batch-size "$BATCH" --device "$DEVICE" \
    "${amp_arg[@]}" --threads 8 --probe-every 0 --log-every 100 2>&1 | tee -a "$RESULTS/gpu_timbre.log" \
    || { echo "timbre:$donor failed (see gpu_timbre.log)" >&2; status=1; }
done
ls -la "$RESULTS"
exit $status
