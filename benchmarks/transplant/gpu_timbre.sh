#!/usr/bin/env bash
# Timbre transplants (donors D_tim and D) on one GPU, side by side, each under a time limit.
#
# Usage: benchmarks/transplant/gpu_timbre.sh DATA [RESULTS]
#   DATA     folder made by build_donors.py + run_transplants.py --regrow-only: it must hold
#            models/joe_regrown/model.safetensors, D_tim/train and D/train (metadata.csv +
#            audio; pack_gpu.py makes such a folder small enough to travel). Carrying DATA/cache/<donor>/tokens (written by any CPU run
#            on these donors) spares the phonemizer there: token ids are then read, not made.
#   RESULTS  where the changed inference organs (decoder, flow; fp16, < 16 MiB per file) and
#            each run's result.json go; default $OUT (the device tool's return folder) or
#            runs/transplant_gpu. Bring them home with
#            `python benchmarks/transplant/run_transplants.py --import-exported RESULTS`,
#            then `python benchmarks/transplant/report.py`.
# Settings (environment): TIMBRE_STEPS (default 3000), TIMBRE_LR (2e-4), TIMBRE_BATCH (16),
# RUN_LIMIT_S per run (210), DISC_WARMUP steps of the discriminator alone (200), DEVICE (cuda),
# AMP (bf16; "none" for fp32), PYTHON (python3).
# Python needs torch, numpy, scipy, safetensors, numba, soundfile (and phonemizer + espeak-ng
# unless the token cache travels). When a .whl folder travels, its wheels are installed first.
set -euo pipefail
DATA=${1:?usage: gpu_timbre.sh DATA [RESULTS]}
RESULTS=${2:-${OUT:-runs/transplant_gpu}}
STEPS=${TIMBRE_STEPS:-3000}
LR=${TIMBRE_LR:-2e-4}
BATCH=${TIMBRE_BATCH:-16}
LIMIT=${RUN_LIMIT_S:-210}
WARMUP=${DISC_WARMUP:-200}
DEVICE=${DEVICE:-cuda}
AMP=${AMP:-bf16}
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1 PYTHONPATH="$HERE/../..${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
for need in "$DATA/models/joe_regrown/model.safetensors" "$DATA/D_tim/train/metadata.csv" "$DATA/D/train/metadata.csv"; do
  [ -e "$need" ] || { echo "missing $need (see the header of $0)" >&2; exit 2; }
done
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
WORK=${WORK:-/tmp/transplant_gpu}   # run folders (checkpoints) stay here; RESULTS gets 7 files
mkdir -p "$RESULTS" "$WORK"
amp_arg=(--amp "$AMP"); [ "$AMP" = none ] && amp_arg=()
# Both donors train at the same time on the one GPU (a VITS step of this size leaves most of an
# H100/H200 idle); each stops by itself after LIMIT seconds of training and still exports, the
# timeout is a backstop. No duration probe: a timbre run leaves the duration predictor alone.
pids=()
for donor in D_tim D; do
  timeout "$((LIMIT + 150))" "$PY" "$HERE/run_transplants.py" --data "$DATA" \
    --runs-dir "$WORK/runs" --export "$RESULTS" --runs "timbre:$donor" --time-budget "$LIMIT" \
    --timbre-steps "$STEPS" --timbre-lr "$LR" --batch-size "$BATCH" --device "$DEVICE" \
    --disc-warmup "$WARMUP" "${amp_arg[@]}" --threads 4 --probe-every 0 --log-every 100 \
    > "$WORK/gpu_timbre_$donor.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "run $i failed (see gpu_timbre_*.log)" >&2; status=1; }
done
for donor in D_tim D; do  # one log file back (the device tool returns at most 8 files)
  { echo "===== timbre:$donor"; cat "$WORK/gpu_timbre_$donor.log"; } >> "$RESULTS/gpu_timbre.log"
  tail -n 8 "$WORK/gpu_timbre_$donor.log"
done
ls -la "$RESULTS"
exit $status
