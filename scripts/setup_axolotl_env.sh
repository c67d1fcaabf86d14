#!/usr/bin/env bash
# Build the Axolotl environment the `axolotl` tests and real fine-tuning use, beside the
# core .venv so Axolotl's many pins never touch it.
#
#   scripts/setup_axolotl_env.sh [VENV_DIR]      (default: .venv-axolotl)
#
# Axolotl 0.19.0 is the last release for Python 3.11 (0.20+ needs 3.12). torch is pinned in
# the same pip call: a bare `torch` resolves to a multi-GB CUDA build. On a GPU machine
# install the CUDA torch 2.13.0 wheel instead (pip's default index) and add
# `axolotl[flash-attn,deepspeed]` as needed.
# Measured on 2 CPU cores with a warm pip cache: 83 s alone (177 s byte-compiling), 4.3 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-axolotl}"
PYTHON="${PYTHON:-python3.11}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --no-compile --upgrade pip
"$VENV/bin/pip" install --quiet --no-compile "torch==2.13.0" "axolotl==0.19.0"
"$VENV/bin/pip" install --quiet --no-compile -e .
"$VENV/bin/axolotl" --version
echo "Axolotl ready: $VENV/bin/axolotl (tests find it there, or set HUMPBACK_AXOLOTL_BIN)"
