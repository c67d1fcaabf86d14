"""Multiple-choice accuracy through lm-evaluation-harness against a served model.

lm-eval (``lm_eval``, 0.4.13) is an optional tool with its own dependencies (datasets,
scikit-learn, transformers for the tokenizer; no torch for API models), so it runs as its
own process, found as, in order: ``$HUMPBACK_LM_EVAL_BIN``, ``lm_eval`` on ``PATH`` (``make
setup`` builds ``.venv-lmeval`` and the Makefile puts it there), beside this Python, or
``python -m lm_eval`` when it is importable here. Without it: :class:`ToolMissing`, saying
how to install it.

The model is lm-eval's ``local-completions``: the server's ``/v1/completions`` with
``echo`` and ``logprobs`` (loglikelihood of each choice), requests sent as token ids
(``tokenized_requests=True``) from a Hugging Face tokenizer read from a local folder (the
model's own; nothing from the hub: ``HF_HUB_OFFLINE=1``). A LoRA adapter is evaluated by
its served name. Tasks come from local JSONL files (:mod:`.lm_tasks`) or from folders of
your own task YAMLs (MMLU, ...). ``--use_cache`` keeps every answered request in SQLite in
the work folder, so a killed run re-asks only what is missing; the summary is written
atomically at the end, nothing before.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from humpback_plugin.core import event_loop
from humpback_plugin.core.client import ClientConfig, normalize_base_url
from humpback_plugin.core.config import LmEvalConfig
from humpback_plugin.core.console import say
from humpback_plugin.core.errors import ToolFailed, ToolMissing, UsageError
from humpback_plugin.core.jsonl_io import write_json_atomic
from humpback_plugin.stages.eval.lm_tasks import write_tasks

BIN_ENV = "HUMPBACK_LM_EVAL_BIN"
INSTALL_HINT = (
    "lm-evaluation-harness is not installed. Install it with\n"
    "    pip install 'humpback-plugin[lm-eval]'\n"
    "(into this environment, or a separate one: `bash scripts/setup_eval_env.sh "
    ".venv-eval`, which `make setup` runs; then put .venv-eval/bin on PATH or set "
    f"${BIN_ENV} to its lm_eval)"
)
SUMMARY_NAME = "summary.json"
LOG_NAME = "lm_eval.log"


def find_lm_eval(executable: str = "lm_eval") -> list[str]:
    """The command that starts lm-eval here, or :class:`ToolMissing`."""
    wanted = os.environ.get(BIN_ENV) or executable
    found = shutil.which(wanted)
    if found is None:
        beside = Path(sys.executable).parent / wanted
        found = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None
    if found is not None:
        return [found]
    if os.environ.get(BIN_ENV):
        raise ToolMissing(f"${BIN_ENV}={wanted} is not an executable lm_eval. {INSTALL_HINT}")
    if importlib.util.find_spec("lm_eval") is not None:
        return [sys.executable, "-m", "lm_eval"]
    raise ToolMissing(INSTALL_HINT)


def model_args(base_url: str, model: str, tokenizer: str, settings: LmEvalConfig) -> dict[str, Any]:
    """lm-eval's ``local-completions`` arguments (no API key: it reads the environment)."""
    return {
        "base_url": f"{normalize_base_url(base_url)}/completions",
        "model": model,
        "tokenizer": tokenizer,
        "tokenizer_backend": "huggingface",
        "tokenized_requests": True,
        "num_concurrent": settings.num_concurrent,
        "max_length": settings.max_length,
        "max_retries": 5,
    }


def build_command(
    exe: list[str],
    args: dict[str, Any],
    task_names: list[str],
    include_path: Path,
    output_path: Path,
    cache_path: Path,
    settings: LmEvalConfig,
) -> list[str]:
    cmd = [
        *exe,
        "run",
        "--model",
        "local-completions",
        "--model_args",
        json.dumps(args),  # JSON: paths may hold ',' or '='
        "--tasks",
        *task_names,
        "--include_path",
        str(include_path),
        "--num_fewshot",
        str(settings.num_fewshot),
        "--batch_size",
        str(settings.batch_size),
        "--output_path",
        str(output_path),
        "--use_cache",
        str(cache_path),
        "--log_samples",
    ]
    if settings.limit is not None:
        cmd += ["--limit", str(settings.limit)]
    return cmd


def tool_env(api_key: str | None, work: Path) -> dict[str, str]:
    """lm-eval's environment: offline, local servers not proxied, the key (never printed)."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)  # it may live in a venv of its own
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.setdefault("HF_DATASETS_CACHE", str(work / "hf_datasets_cache"))
    env["NO_PROXY"] = ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    env["no_proxy"] = env["NO_PROXY"]
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if api_key:
        env["OPENAI_API_KEY"] = api_key
    else:
        env.pop("OPENAI_API_KEY", None)
    return env


def _prepare_tasks(settings: LmEvalConfig, work: Path) -> tuple[Path, list[str], dict[str, Any]]:
    """The folder lm-eval reads tasks from: our YAMLs plus copies of the user's folders."""
    tasks_dir = work / "tasks"
    if tasks_dir.exists():
        shutil.rmtree(tasks_dir)
    written = write_tasks(settings.tasks, tasks_dir)
    for i, folder in enumerate(settings.include_paths):
        source = Path(folder).expanduser()
        if not source.is_dir():
            raise UsageError(f"lm-eval include path {source} is not a folder of task YAMLs")
        shutil.copytree(source, tasks_dir / f"include_{i}_{source.name}")
    names = [*settings.tasks, *settings.task_names]
    if not names:
        raise UsageError("no lm-eval task: name a JSONL file (--task NAME=FILE) or --task-name")
    return tasks_dir, names, written


def check_served(client_config: ClientConfig) -> None:
    """Fail before lm-eval starts when the server is down or does not serve the model."""

    async def check() -> None:
        async with client_config.make_client() as client:
            await client.preflight()

    event_loop.run(check())


def _run_all(runs: list[tuple[list[str], dict[str, str], Path]]) -> list[float]:
    """Run the commands at once, each with its log; returns each one's seconds. Interrupted:
    every lm-eval (each in its own session, with its workers) is taken down with us."""
    started = time.monotonic()
    procs = []
    try:
        for cmd, env, log_path in runs:
            say(f"  $ {' '.join(cmd)}   (log: {log_path})")
            with open(log_path, "ab") as log:
                procs.append(
                    subprocess.Popen(
                        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        elapsed: dict[int, float] = {}
        while len(elapsed) < len(procs):
            for i, proc in enumerate(procs):
                if i not in elapsed and proc.poll() is not None:
                    elapsed[i] = time.monotonic() - started
            time.sleep(0.5)
    except BaseException:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
        raise
    for i, (proc, (_, _, log_path)) in enumerate(zip(procs, runs, strict=True)):
        if proc.returncode != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
            raise ToolFailed(
                f"lm-eval exited with {proc.returncode} after {elapsed[i]:.0f}s; "
                f"tail of {log_path}:\n{tail}"
            )
    return [elapsed[i] for i in range(len(procs))]


def read_results(output_path: Path) -> dict[str, Any]:
    """The newest ``results_*.json`` lm-eval wrote under ``output_path``."""
    found = sorted(output_path.glob("**/results_*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ToolFailed(f"lm-eval finished but wrote no results under {output_path}")
    return json.loads(found[-1].read_text(encoding="utf-8")) | {"_path": str(found[-1])}


def task_scores(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Accuracy (and its standard error) per task from lm-eval's results file."""
    scores = {}
    samples = results.get("n-samples") or {}
    for task, metrics in (results.get("results") or {}).items():
        row: dict[str, Any] = {}
        for metric in ("acc", "acc_norm"):
            value = metrics.get(f"{metric},none")
            if isinstance(value, int | float):
                row[metric] = round(float(value), 4)
                stderr = metrics.get(f"{metric}_stderr,none")
                row[f"{metric}_stderr"] = (
                    round(stderr, 4) if isinstance(stderr, int | float) else None
                )
        row["items"] = (samples.get(task) or {}).get("effective")
        scores[task] = row
    return scores


def run_lm_eval(
    output_dir: str | os.PathLike,
    *,
    client_config: ClientConfig,
    settings: LmEvalConfig,
    tokenizer: str,
    preflight: bool = True,
) -> dict[str, Any]:
    """Run every task against ``client_config.model``; writes ``summary.json`` (accuracy
    per task) in ``output_dir`` and returns it."""
    return run_lm_eval_many(
        [(output_dir, client_config)], settings=settings, tokenizer=tokenizer, preflight=preflight
    )[0]


def run_lm_eval_many(
    jobs: list[tuple[str | os.PathLike, ClientConfig]],
    *,
    settings: LmEvalConfig,
    tokenizer: str,
    preflight: bool = True,
) -> list[dict[str, Any]]:
    """:func:`run_lm_eval` for several models at once, one lm-eval each: against GPU servers
    each mostly waits on its server (on 2 CPU cores shared with the servers, three at once
    were slower than one after another); a summary per ``(output_dir, model)``."""
    exe = find_lm_eval(settings.executable)
    tokenizer_path = Path(tokenizer).expanduser()
    if not (tokenizer_path / "tokenizer_config.json").is_file() and (
        os.sep in tokenizer or tokenizer.startswith(".")
    ):
        raise UsageError(
            f"tokenizer {tokenizer}: no tokenizer_config.json there; give the model's folder "
            "(--tokenizer), the hub is not used"
        )
    runs, prepared = [], []
    for output_dir, client_config in jobs:
        work = Path(output_dir)
        work.mkdir(parents=True, exist_ok=True)
        tasks_dir, names, written = _prepare_tasks(settings, work)
        if preflight:
            check_served(client_config)
        args = model_args(client_config.base_urls[0], client_config.model, tokenizer, settings)
        cmd = build_command(
            exe, args, names, tasks_dir, work / "results", work / "cache" / "requests", settings
        )
        (work / "cache").mkdir(exist_ok=True)
        runs.append((cmd, tool_env(client_config.api_key, work), work / LOG_NAME))
        prepared.append((work, client_config, written))
    summaries = []
    for (work, client_config, written), elapsed in zip(prepared, _run_all(runs), strict=True):
        results = read_results(work / "results")
        summary = {
            "stage": "eval_lm_eval",
            "model": client_config.model,
            "base_url": client_config.base_urls[0],
            "tasks": task_scores(results),
            "task_files": written,
            "limit": settings.limit,
            "num_fewshot": settings.num_fewshot,
            "tokenizer": str(tokenizer),
            "lm_eval_version": results.get("lm_eval_version"),
            "results_file": results["_path"],
            "log": str(work / LOG_NAME),
            "elapsed_s": round(elapsed, 1),
        }
        write_json_atomic(work / SUMMARY_NAME, summary)
        summaries.append(summary)
    return summaries
