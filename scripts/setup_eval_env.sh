#!/usr/bin/env bash
# Build the evaluation tools' environment beside the core .venv: lm-evaluation-harness
# (`humpback eval lm-eval`) and alpaca_eval (`humpback eval compare --alpaca-eval`), pinned
# by this project's `lm-eval` and `alpaca-eval` extras (read from pyproject.toml). The
# project itself is not installed here: `humpback` runs these tools as commands, and
# setup.sh builds this venv while another pip installs the project elsewhere.
#
#   scripts/setup_eval_env.sh [VENV_DIR]      (default: .venv-eval)
#
# No torch: lm-eval's API models and alpaca_eval's OpenAI client only need the tokenizer
# (transformers without torch) and the HTTP clients. The Makefile puts VENV_DIR/bin on PATH,
# where `humpback eval` finds lm_eval and alpaca_eval (or set $HUMPBACK_LM_EVAL_BIN and
# $HUMPBACK_ALPACA_EVAL_BIN).
# Measured on the 2-core development machine, 2026-11-30, warm pip cache: 88 CPU seconds
# (pip is one core: about 1.5 minutes on a quiet machine; 15 minutes of wall time at load 15),
# 0.96 GB. setup.sh runs it beside the Axolotl install, so it adds little wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-eval}"
PYTHON="${PYTHON:-python3.11}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --no-compile --upgrade "pip>=24,<27"
"$PYTHON" - <<'PY' > "$VENV/requirements-eval.txt"
import tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print("\n".join(extras["lm-eval"] + extras["alpaca-eval"]))
PY
"$VENV/bin/pip" install --quiet --no-compile -r "$VENV/requirements-eval.txt"
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "torch found in $VENV: nothing here should pull it" >&2
    exit 1
fi
"$VENV/bin/lm_eval" --help >/dev/null
"$VENV/bin/alpaca_eval" --help >/dev/null 2>&1 || true
echo "Evaluation tools ready: $VENV/bin/lm_eval, $VENV/bin/alpaca_eval"
