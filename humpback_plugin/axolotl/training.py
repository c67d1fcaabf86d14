"""Training steps: run Axolotl, or print the command and wait for its output.

Axolotl does the fine-tuning; we only start it (argument lists, never a shell) with the
environment it needs on the machine at hand, and recognise a finished output directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from humpback_plugin.core.console import say
from humpback_plugin.core.errors import TrainingFailed, TrainingPending
from humpback_plugin.core.hashing import file_sha256
from humpback_plugin.core.jsonl_io import write_json_atomic

# Files Axolotl writes at the very end of a run, for a LoRA adapter or a full model.
FINISHED_MARKERS = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)


def is_trained(output_dir: str | os.PathLike) -> bool:
    out = Path(output_dir)
    return out.is_dir() and any((out / m).exists() for m in FINISHED_MARKERS)


def axolotl_env(axolotl_exe: str) -> dict[str, str]:
    """Environment that makes Axolotl behave in a batch job (and on CPU)."""
    env = dict(os.environ)
    env.setdefault("AXOLOTL_DO_NOT_TRACK", "1")  # else `axolotl train` can hang at exit
    env.setdefault("WANDB_MODE", "disabled")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    # accelerate's launcher is looked up on PATH: Axolotl's own venv must come first.
    env["PATH"] = str(Path(axolotl_exe).parent) + os.pathsep + env.get("PATH", "")
    if "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
    return env


def axolotl_command(
    config_path: str | os.PathLike, axolotl_bin: str = "axolotl", launcher: str = "accelerate"
) -> list[str]:
    """``[axolotl, train, CONFIG]``: $HUMPBACK_AXOLOTL_BIN, else PATH, else beside python.
    ``launcher="python"`` trains in Axolotl's own process instead of one started by
    ``accelerate launch``: one start-up of torch and Axolotl instead of two (for one CPU or
    GPU; more GPUs need accelerate or torchrun)."""
    wanted = os.environ.get("HUMPBACK_AXOLOTL_BIN") or axolotl_bin
    exe = shutil.which(wanted) or str(Path(sys.executable).parent / wanted)
    cmd = [exe, "train", str(config_path)]
    return cmd if launcher == "accelerate" else [*cmd, "--launcher", launcher]


def stamp_path(output_dir: str | os.PathLike) -> Path:
    """What a trained model was trained from, beside it: ``<output_dir>.trained-from.json``."""
    out = Path(output_dir)
    return out.with_name(f"{out.name}.trained-from.json")


def _trained_from(config_path: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> dict:
    files = [config_path, *inputs]
    return {"inputs": {str(p): file_sha256(p) for p in files if Path(p).is_file()}}


def _set_aside(output_dir: Path, why: str) -> None:
    """Keep the previous model beside the new one (one generation), never delete it."""
    previous = output_dir.with_name(f"{output_dir.name}.previous")
    if previous.exists():
        shutil.rmtree(previous)
    output_dir.rename(previous)
    # The stamp described that model: a model copied in next is taken as trained here.
    if stamp_path(output_dir).exists():
        stamp_path(output_dir).replace(stamp_path(previous))
    say(f"  {output_dir} was {why}: moved to {previous}; training again")


def train(
    config_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    execute: bool,
    wait: bool = True,
    axolotl_bin: str = "axolotl",
    launcher: str = "accelerate",
    log_path: str | os.PathLike | None = None,
    poll_s: float = 10.0,
    inputs: Sequence[str | os.PathLike] = (),
    force: bool = False,
) -> str:
    """Make sure ``output_dir`` holds a model trained from ``config_path`` and ``inputs``
    (the dataset); returns how ("already trained", "trained", "trained elsewhere").

    A model trained from other files (their sha256 is kept in :func:`stamp_path`), or any
    model when ``force``, is moved to ``<output_dir>.previous`` and trained again; a
    finished model without a stamp (trained elsewhere, copied in) is taken as it is."""
    out = Path(output_dir)
    wanted = _trained_from(config_path, inputs)
    stamp = stamp_path(out)
    if is_trained(out):
        recorded = json.loads(stamp.read_text()) if stamp.exists() else None
        if force:
            _set_aside(out, "asked to train again (--from)")
        elif recorded is not None and recorded != wanted:
            _set_aside(out, "trained from another dataset or config")
        else:
            write_json_atomic(stamp, wanted)
            return "already trained"
    cmd = axolotl_command(config_path, axolotl_bin, launcher)
    how = _run_or_wait(cmd, out, execute, wait, log_path, poll_s)
    write_json_atomic(stamp, wanted)
    return how


def _run_or_wait(
    cmd: list[str],
    output_dir: Path,
    execute: bool,
    wait: bool,
    log_path: str | os.PathLike | None,
    poll_s: float,
) -> str:
    if execute:
        log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed below
        say(f"  $ {' '.join(cmd)}" + (f"   (log: {log_path})" if log_path else ""))
        try:
            proc = subprocess.Popen(
                cmd, env=axolotl_env(cmd[0]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                if log:
                    log.write(line)
                text = line.decode("utf-8", "replace").rstrip()
                # Show Axolotl's own progress (steps, loss) without its warnings flood.
                if "it/s" in text or "s/it" in text or "'loss'" in text or "Error" in text:
                    say(f"    {text[-160:]}")
            code = proc.wait()
        finally:
            if log:
                log.close()
        if code != 0:
            raise TrainingFailed(
                f"axolotl train exited with {code}; see {log_path or 'its output'}"
            )
        if not is_trained(output_dir):
            raise TrainingFailed(f"axolotl finished but {output_dir} holds no model")
        return "trained"
    say(
        "\nTrain this model with Axolotl (on a GPU machine for real runs), then re-run:\n"
        f"    {' '.join(cmd)}\n"
        f"  expected output: {output_dir}\n"
    )
    if not wait:
        raise TrainingPending(f"waiting for {output_dir}")
    while not is_trained(output_dir):
        time.sleep(poll_s)
    return "trained elsewhere"
