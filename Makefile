# The two commands of the README's quick start:
#   make demo   set up, then run the whole Humpback loop on the embedded default
#   make test   set up, then run lint and the whole test suite (real vLLM, real Axolotl)
SHELL := /bin/bash
export HUMPBACK_HOME ?= $(CURDIR)/.humpback
export AXOLOTL_DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export WANDB_MODE := disabled
export OMP_NUM_THREADS ?= 2
# Setup installs without byte-compiling (scripts/setup.sh): a run compiles what it imports
# once, which needs bytecode writing on.
unexport PYTHONDONTWRITEBYTECODE
# .venv-eval last: its lm_eval and alpaca_eval, never its python or humpback.
export PATH := $(CURDIR)/.venv/bin:$(CURDIR)/.venv-axolotl/bin:$(PATH):$(CURDIR)/.venv-eval/bin
# Named outright: Axolotl's venv has an lm_eval of its own, without the API extra (tenacity).
export HUMPBACK_LM_EVAL_BIN ?= $(CURDIR)/.venv-eval/bin/lm_eval
export HUMPBACK_ALPACA_EVAL_BIN ?= $(CURDIR)/.venv-eval/bin/alpaca_eval
RUN_DIR ?= runs/demo

.PHONY: setup demo test lint unit bench clean

setup:
	bash scripts/setup.sh

demo: setup
	humpback run --demo $(RUN_DIR)

test: 
	bash scripts/setup.sh --browser
	$(MAKE) lint
	HUMPBACK_REQUIRE_REAL=1 HUMPBACK_REQUIRE_SHARED=$(if $(wildcard ../shared/data),1,) \
	  python -m pytest -q -rs --durations=15

lint:
	ruff check .
	ruff format --check .

unit:
	python -m pytest -q -m "not vllm and not axolotl and not browser"

bench: setup
	python bench/bench_segment.py
	python bench/bench_extraction.py
	python bench/bench_generation.py
	python bench/bench_judge.py
	python bench/bench_client.py

clean:
	rm -rf .venv .humpback runs
