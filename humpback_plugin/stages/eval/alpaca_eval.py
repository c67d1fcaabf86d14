"""Hand the same outputs to the ``alpaca_eval`` package, judged by a local model.

``alpaca_eval evaluate`` (0.6.6) reads an annotator config (prompt, decoding, parser) and
an OpenAI client config; :func:`write_configs` writes both next to our own comparison so
that AlpacaEval's weighted judge ("m" or "M" at one token, its probability from
``top_logprobs``) asks the local judge instead of OpenAI; the token is constrained to the
two labels with vLLM's ``structured_outputs`` (alpaca_eval drops a pair whose token is
neither, silently: measured with SmolLM2, 2 of 3 pairs without the constraint). The judge
prompt is ours (in ``alpaca_eval``'s ChatML template format); alpaca_eval itself randomises
the order of the two outputs. The API key goes to the process as ``OPENAI_API_KEY``, never
into a file.

:func:`command` is the exact command line (printed when the package is absent);
:func:`run_alpaca_eval` runs it when ``alpaca_eval`` is installed (``$HUMPBACK_ALPACA_EVAL_BIN``,
``PATH`` or beside this Python) and reads its leaderboard.
"""

from __future__ import annotations

import csv
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from humpback_plugin.core.client import normalize_base_url
from humpback_plugin.core.errors import ToolFailed, ToolMissing
from humpback_plugin.core.jsonl_io import atomic_writer

BIN_ENV = "HUMPBACK_ALPACA_EVAL_BIN"
ANNOTATOR = "humpback_local_judge"
INSTALL_HINT = (
    "alpaca_eval is not installed: pip install alpaca-eval==0.6.6 (into any environment; "
    f"put its alpaca_eval on PATH or set ${BIN_ENV})"
)

PROMPT = """<|im_start|>system
You compare two answers of AI assistants to the same instruction and name the better one.
<|im_end|>
<|im_start|>user
Which answer to the instruction below is better from a human point of view: the more
helpful, correct, complete and clearly written one? Judge the content, not the length or
the order. Reply with the answer's label only: m or M.

## Instruction

{instruction}

## Answer m

{output_1}

## Answer M

{output_2}
<|im_end|>
"""


def annotator_config(judge_model: str) -> dict[str, Any]:
    """AlpacaEval's weighted judge, pointed at ``judge_model`` (a served name)."""
    return {
        ANNOTATOR: {
            "prompt_template": f"{ANNOTATOR}/prompt.txt",
            "fn_completions": "openai_completions",
            "completions_kwargs": {
                "model_name": judge_model,
                "max_tokens": 1,
                "temperature": 1,  # only the probabilities are read
                "logprobs": True,
                "top_logprobs": 5,
                "requires_chatml": True,
                # vLLM: the token must be m or M, so no pair is dropped for lack of one.
                "extra_body": {"structured_outputs": {"choice": ["m", "M"]}},
            },
            "fn_completion_parser": "logprob_parser",
            "completion_parser_kwargs": {
                "numerator_token": "m",
                "denominator_tokens": ["m", "M"],
                "is_binarize": False,
            },
            "completion_key": "completions_all",
            "batch_size": 1,
        }
    }


def write_configs(out_dir: str | os.PathLike, judge_url: str, judge_model: str) -> dict[str, Path]:
    """The annotator folder and the client config, under ``out_dir/alpaca_eval/``."""
    root = Path(out_dir) / "alpaca_eval"
    annotator = root / ANNOTATOR
    with atomic_writer(annotator / "configs.yaml") as fh:
        yaml.safe_dump(annotator_config(judge_model), fh, sort_keys=False)
    with atomic_writer(annotator / "prompt.txt") as fh:
        fh.write(PROMPT)
    client_config = root / "client_configs.yaml"
    with atomic_writer(client_config) as fh:
        # No api_key here: the OpenAI client reads OPENAI_API_KEY from the environment.
        yaml.safe_dump({"default": [{"base_url": normalize_base_url(judge_url)}]}, fh)
    return {"root": root, "annotator": annotator, "client_config": client_config}


def command(
    model_outputs: str | os.PathLike,
    reference_outputs: str | os.PathLike,
    files: dict[str, Path],
    exe: str = "alpaca_eval",
) -> list[str]:
    return [
        exe,
        "evaluate",
        "--model_outputs",
        str(model_outputs),
        "--reference_outputs",
        str(reference_outputs),
        "--annotators_config",
        str(files["annotator"]),
        "--output_path",
        str(files["root"] / "results"),
        "--is_overwrite_leaderboard",
        "True",
    ]


def shell_line(cmd: list[str], files: dict[str, Path]) -> str:
    """The command as one shell line, with the environment it needs."""
    env = (
        f"OPENAI_CLIENT_CONFIG_PATH={shlex.quote(str(files['client_config']))} "
        "IS_ALPACA_EVAL_2=False OPENAI_API_KEY=${HUMPBACK_API_KEY:-EMPTY} "
    )
    return env + " ".join(shlex.quote(part) for part in cmd)


def find_alpaca_eval() -> str | None:
    wanted = os.environ.get(BIN_ENV) or "alpaca_eval"
    found = shutil.which(wanted)
    beside = Path(sys.executable).parent / "alpaca_eval"
    return found or (str(beside) if beside.is_file() else None)


def run_alpaca_eval(
    model_outputs: str | os.PathLike,
    reference_outputs: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    judge_url: str,
    judge_model: str,
    api_key: str | None,
) -> dict[str, Any]:
    """Run ``alpaca_eval evaluate`` on the two files; returns its leaderboard row.

    Raises :class:`ToolMissing` (with the exact command to run) when it is not installed.
    """
    files = write_configs(out_dir, judge_url, judge_model)
    exe = find_alpaca_eval()
    if exe is None:
        line = shell_line(command(model_outputs, reference_outputs, files), files)
        raise ToolMissing(f"{INSTALL_HINT}; then run:\n    {line}")
    cmd = command(model_outputs, reference_outputs, files, exe)
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    env.update(
        OPENAI_CLIENT_CONFIG_PATH=str(files["client_config"]),
        IS_ALPACA_EVAL_2="False",
        OPENAI_API_KEY=api_key or "EMPTY",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        NO_PROXY=",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1", "localhost"])),
    )
    log_path = files["root"] / "alpaca_eval.log"
    with open(log_path, "wb") as log:
        code = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise ToolFailed(f"alpaca_eval exited with {code}; tail of {log_path}:\n{tail}")
    boards = sorted((files["root"] / "results").glob("**/leaderboard.csv"))
    if not boards:
        raise ToolFailed(f"alpaca_eval wrote no leaderboard.csv under {files['root']}")
    with open(boards[-1], encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {"leaderboard": str(boards[-1]), "rows": rows, "command": shell_line(cmd, files)}
