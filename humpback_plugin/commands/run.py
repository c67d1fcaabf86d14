"""``humpback run`` and ``humpback status``: the whole loop in a resumable run directory."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from humpback_plugin.commands.common import command
from humpback_plugin.core.config import load_config
from humpback_plugin.core.engine import ENGINES
from humpback_plugin.core.errors import TrainingPending, UsageError
from humpback_plugin.core.layout import RunLayout
from humpback_plugin.run.demo import DEMO_UNTIL, demo_config
from humpback_plugin.run.pipeline import Pipeline
from humpback_plugin.run.report import build_report


@command("run")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run config YAML (default: the run dir's config.yaml from an earlier start).",
)
@click.option("--demo", is_flag=True, help="Small real run on the embedded vLLM and CPU Axolotl.")
@click.option("--until", help="Stop after this stage.")
@click.option(
    "--from",
    "from_stage",
    help="Run this stage and every later one again, even if done (a retrained model is "
    "moved to <role>/model.previous).",
)
@click.option(
    "--skip-template-check",
    is_flag=True,
    help="Do not stop when a server's chat template differs from the one a model was "
    "trained with (config: serving.template_check).",
)
@click.option("--train/--no-train", default=None, help="Run `axolotl train` ourselves.")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="When not training ourselves, wait for the printed training command's output.",
)
@click.option(
    "--engine",
    type=click.Choice(sorted(ENGINES)),
    help="Where the model-calling stages send from: local or ray (default: the config's "
    "`engine`, else local).",
)
@click.option("--ray-address", help="The Ray cluster (default: the config's `ray_address`).")
def run_command(
    run_dir: Path,
    config_path: Path | None,
    demo: bool,
    until: str | None,
    from_stage: str | None,
    train: bool | None,
    wait: bool,
    skip_template_check: bool,
    engine: str | None,
    ray_address: str | None,
) -> None:
    """Run the whole Humpback loop in RUN_DIR, resumably.

    \b
    Stages (see `humpback status RUN_DIR`):
      seed, segments, backward_data, train_backward, augment, m0_data, train_m0,
      curate_1, m1_data, train_m1, curate_2, m2_data, train_m2,
      then eval_generate, eval_lm_eval, eval_compare when the config has `eval:`
    Re-running the same command continues where it stopped; a stage is skipped when
    its outputs are on disk unchanged and its inputs and settings are those it ran
    with, else it runs again (and a model is trained again when its dataset or config
    changed). Each stage's inputs, outputs (sha256, counts), settings hash, model and
    statistics are in RUN_DIR/manifest.json. Each trained model gets
    RUN_DIR/ROLE/serve.sh: the `vllm serve` command that serves it with the chat
    template it was trained with (`humpback serve-command RUN_DIR ROLE` prints it).

    \b
    Examples:
      humpback run --demo runs/demo            # small CPU run on the embedded vLLM
      humpback run -c my.yaml runs/r1 --until m0_data
      humpback run runs/r1 --train             # resume, running Axolotl here
      humpback run runs/r1 --from curate_1     # curate_1 and everything after it again
      humpback run runs/r1 --engine ray --ray-address auto   # on a Ray cluster
    """
    t0 = time.monotonic()
    layout = RunLayout(run_dir)
    if demo:
        config = demo_config(run_dir)
        until = until or DEMO_UNTIL
    elif config_path is not None:
        config = load_config(config_path)
    elif layout.config.exists():
        config = load_config(layout.config)
    else:
        raise UsageError("give --config FILE (or --demo) for a new run directory")
    if train is not None:
        config.training.execute = train
    if skip_template_check:
        config.serving.template_check = False
    if engine is not None:
        config.engine = engine  # type: ignore[assignment]
    if ray_address is not None:
        config.ray_address = ray_address
    try:
        Pipeline(run_dir, config).run(until=until, from_stage=from_stage, wait_for_training=wait)
    except TrainingPending as exc:
        click.echo(f"Paused: {exc}. Re-run the same command once training is done.", err=True)
        raise SystemExit(exc.exit_code) from None
    print_status(Pipeline(run_dir, config))
    report = _write_report(run_dir)
    click.echo(f"\nFinished in {time.monotonic() - t0:.0f}s. Outputs: {run_dir}/", err=True)
    click.echo(f"  manifest:  {layout.manifest}", err=True)
    click.echo(f"  report:    {report or f'humpback report {run_dir}'}", err=True)
    for role in ["backward"] + [f"m{k}" for k in range(config.iterations + 1)]:
        if layout.serve_script(role).exists():
            click.echo(f"  serve {role + ':':9} {layout.serve_script(role)}", err=True)
    if demo:
        click.echo(
            "  real scale: put your corpus and seed paths in a config (see README), set\n"
            "  training.profile: gpu, and run `humpback run -c config.yaml RUN_DIR` with the\n"
            "  printed `axolotl train` commands on a GPU machine.",
            err=True,
        )


def _write_report(run_dir: Path) -> Path | None:
    """The HTML report of what is done so far; a report problem never fails the run."""
    try:
        return build_report(run_dir).html_path
    except Exception as exc:  # the run itself succeeded; say why and go on
        click.echo(f"  (report not written: {exc})", err=True)
        return None


def print_status(pipeline: Pipeline) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {pipeline.run_dir}")
    for col in ("stage", "status", "records", "seconds", "model"):
        table.add_column(col)
    for row in pipeline.status_rows():
        table.add_row(
            row["stage"],
            row["status"] + (f" ({row['error'][:60]})" if row.get("error") else ""),
            "" if row["records"] is None else str(row["records"]),
            "" if row["elapsed_s"] is None else f"{row['elapsed_s']:.0f}",
            row["model"] or "",
        )
    Console(stderr=True).print(table)


@command("status")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(run_dir: Path, as_json: bool) -> None:
    """Show where a run is: each stage's status, record counts and timing."""
    layout = RunLayout(run_dir)
    if not layout.config.exists():
        raise click.ClickException(f"{run_dir} is not a run directory (no config.yaml)")
    pipeline = Pipeline(run_dir, load_config(layout.config))
    if as_json:
        click.echo(json.dumps(pipeline.status_rows(), indent=2))
    else:
        print_status(pipeline)
