#!/usr/bin/env bash
# One-time, idempotent set-up on a fresh Debian machine: system packages, a venv in .venv,
# the library with its development extras (torch pinned to the CPU wheel by constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need_apt=""
command -v espeak-ng >/dev/null 2>&1 || need_apt="$need_apt espeak-ng"
command -v flite >/dev/null 2>&1 || need_apt="$need_apt flite"
command -v g++ >/dev/null 2>&1 || need_apt="$need_apt g++"  # torch.compile (regrow compile=True) builds C++ kernels
# chromium: the headless-browser test of the HTML report (tests/test_report.py)
(command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1) || need_apt="$need_apt chromium"
if [ -n "$need_apt" ]; then
  $SUDO apt-get update -q >/dev/null
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $need_apt >/dev/null
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -c constraints.txt -e ".[dev]"
  touch "$stamp"
fi
