"""Training steps: run Axolotl, or print the command and wait for its output.

Axolotl does the fine-tuning; we only start it (argument lists, never a shell) with the
environment it needs on the machine at hand, and recognise a finished output directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from humpback_plugin.core.console import say
from humpback_plugin.core.errors import TrainingFailed, TrainingPending

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


def axolotl_command(config_path: str | os.PathLike, axolotl_bin: str = "axolotl") -> list[str]:
    """``[axolotl, train, CONFIG]``: $HUMPBACK_AXOLOTL_BIN, else PATH, else beside python."""
    wanted = os.environ.get("HUMPBACK_AXOLOTL_BIN") or axolotl_bin
    exe = shutil.which(wanted) or str(Path(sys.executable).parent / wanted)
    return [exe, "train", str(config_path)]


def train(
    config_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    execute: bool,
    wait: bool = True,
    axolotl_bin: str = "axolotl",
    log_path: str | os.PathLike | None = None,
    poll_s: float = 10.0,
) -> str:
    """Make sure ``output_dir`` holds a trained model; returns how ("done", "trained", ...)."""
    if is_trained(output_dir):
        return "already trained"
    cmd = axolotl_command(config_path, axolotl_bin)
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
