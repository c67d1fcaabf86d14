#!/usr/bin/env bash
# Set up everything a fresh clone needs, idempotently:
#   .venv            the project (editable) with its dev, report, parquet and ray extras
#                    (Ray: the --engine ray tests start a local Ray instance)
#   .venv-axolotl    Axolotl 0.19 on CPU torch, with the project installed into it, as a
#                    user would have it (Axolotl pins transformers, pydantic, ... exactly)
#   .venv-eval       lm-evaluation-harness and alpaca_eval for `humpback eval` (no torch)
#   $HUMPBACK_HOME   the embedded vLLM server's own venv and the converted demo model
#   chromium         for the report's real-browser test (Debian package; root only)
# Re-running skips what is done (a stamp per step, keyed by the files it depends on).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
export PYTHON
export HUMPBACK_HOME=${HUMPBACK_HOME:-$PWD/.humpback}
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Every pip here runs with --no-compile: byte-compiling all of torch, vLLM and Axolotl is
# half of setup's CPU time, for modules a run never imports. What a run does import is
# compiled once, on first import, so bytecode writing must be on (some images turn it off).
unset PYTHONDONTWRITEBYTECODE
# setuptools announces every editable install with a boxed note ("Editable installation.
# Please be careful with folders ..."): information, not a problem; keep it off the screen.
export PYTHONWARNINGS="ignore:Editable installation"

want_server=1
want_axolotl=1
want_eval=1
want_browser=0
for arg in "$@"; do
  case "$arg" in
    --no-server) want_server=0 ;;
    --no-axolotl) want_axolotl=0 ;;
    --no-eval) want_eval=0 ;;
    --browser) want_browser=1 ;;
  esac
done

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
# Run a command, hiding pip's notes about absent local index folders; keep its exit code.
quiet_pip() { "$@" 2>&1 | { grep -v "^WARNING: Location '" || true; }; return "${PIPESTATUS[0]}"; }
t0=$(date +%s)
say() { printf '[setup %4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*" >&2; }
# Wait for a venv built in the background (its output in VENV.setup.log); stamp it when
# it succeeded, else show the end of its log and stop.
wait_venv() {
  local pid=$1 venv=$2 hash=$3
  if wait "$pid"; then
    echo "$hash" > "$venv/.humpback-setup"
    rm -f "$venv.setup.log"
    say "$venv ready"
  else
    tail -25 "$venv.setup.log" >&2
    say "building $venv failed (log: $venv.setup.log)"
    exit 1
  fi
}

# .venv-axolotl needs nothing else here (it installs this package from the source tree):
# start it first, in the background, since it is the longest step (torch + Axolotl).
axo_hash=$(cat pyproject.toml scripts/setup_axolotl_env.sh | sha256sum | cut -c1-16)
axo_pid=
if [ "$want_axolotl" = 1 ] && ! stamp_ok .venv-axolotl/.humpback-setup "$axo_hash"; then
  say "creating .venv-axolotl in the background (torch 2.13.0 CPU + axolotl 0.19.0; a few minutes)"
  quiet_pip bash scripts/setup_axolotl_env.sh .venv-axolotl > .venv-axolotl.setup.log 2>&1 &
  axo_pid=$!
fi

# .venv-eval is independent of the rest: build it in the background while Axolotl and the
# vLLM server install (pip is mostly one core; the machine has two), and wait for it at the end.
eval_hash=$(cat pyproject.toml scripts/setup_eval_env.sh | sha256sum | cut -c1-16)
eval_pid=
if [ "$want_eval" = 1 ] && ! stamp_ok .venv-eval/.humpback-setup "$eval_hash"; then
  say "creating .venv-eval in the background (lm-evaluation-harness 0.4.13 + alpaca_eval 0.6.6, no torch)"
  quiet_pip bash scripts/setup_eval_env.sh .venv-eval > .venv-eval.setup.log 2>&1 &
  eval_pid=$!
fi

# The embedded vLLM server's venv and the demo model: its installer needs nothing but the
# standard library, so it starts at once, beside the other venvs (each mostly pip on one core).
server_pid=
if [ "$want_server" = 1 ]; then
  say "embedded vLLM server venv and demo model under $HUMPBACK_HOME (in the background)"
  "$PYTHON" -m humpback_plugin.vllm.install > .humpback-install.log 2>&1 &
  server_pid=$!
fi

deps_hash=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if ! stamp_ok .venv/.humpback-setup "$deps_hash"; then
  say "creating .venv with $($PYTHON --version): the project and its dev tools"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  quiet_pip .venv/bin/pip install -q --no-compile --upgrade "pip>=24,<27"
  quiet_pip .venv/bin/pip install -q --no-compile -e ".[dev,report,parquet,ray]"
  echo "$deps_hash" > .venv/.humpback-setup
  say ".venv ready"
else
  say ".venv is up to date"
fi

[ -z "$axo_pid" ] || wait_venv "$axo_pid" .venv-axolotl "$axo_hash"

if [ -n "$server_pid" ]; then
  if wait "$server_pid"; then
    tail -4 .humpback-install.log >&2
    rm -f .humpback-install.log
    say "embedded vLLM server ready"
  else
    tail -25 .humpback-install.log >&2
    say "installing the embedded vLLM server failed (log: .humpback-install.log)"
    exit 1
  fi
fi

if [ "$want_browser" = 1 ] && ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's chromium for the report's browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    say "chromium missing and cannot be installed here (not root / no apt-get)"
  fi
fi
[ -z "$eval_pid" ] || wait_venv "$eval_pid" .venv-eval "$eval_hash"
say "setup done"
