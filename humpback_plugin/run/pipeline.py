"""`humpback run`: the whole method as the paper runs it, in a resumable run directory.

    seed -> segments -> backward_data -> train_backward -> augment -> m0_data -> train_m0
         -> curate_1 (M0 judges) -> m1_data -> train_m1 -> curate_2 (M1 judges) -> m2_data
         -> train_m2 [-> eval_generate -> eval_compare -> eval_lm_eval]

The evaluation steps (:mod:`.evaluation`) run when the config's ``eval`` section names an
evaluation set (or lm-eval tasks).

Every stage records its inputs and outputs (hashes, counts), the model that served it and
its statistics in ``manifest.json``. A stage whose outputs are on disk with the recorded
hashes is skipped; the model-calling stages also resume record by record, so a run killed
at any moment continues where it stopped. Each stage calls the same library function as
its ``humpback`` command, with its section of the run config.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from humpback_plugin.axolotl.configs import render_config, write_config
from humpback_plugin.axolotl.training import is_trained, train
from humpback_plugin.core.client import ClientConfig, load_api_key
from humpback_plugin.core.config import ClientSettings, RunConfig, dump_config
from humpback_plugin.core.console import Say, say
from humpback_plugin.core.engine import Engine, engine_for
from humpback_plugin.core.errors import TrainingPending, UsageError
from humpback_plugin.core.layout import RunLayout, stage_names
from humpback_plugin.core.manifest import Manifest
from humpback_plugin.run import evaluation
from humpback_plugin.stages.augment.stage import augment
from humpback_plugin.stages.corpus.stage import segment_corpus
from humpback_plugin.stages.curate.stage import curate
from humpback_plugin.stages.export.stage import export_backward, export_forward
from humpback_plugin.stages.seed.stage import load_seed
from humpback_plugin.vllm.serving import EmbeddedServing


class Pipeline:
    def __init__(self, run_dir: str | os.PathLike, config: RunConfig, *, log: Say = say) -> None:
        self.run_dir = Path(run_dir)
        self.config = config
        self.paths = RunLayout(self.run_dir)
        self.manifest = Manifest(self.run_dir)
        self.stages = stage_names(config.iterations, config.eval.stages())
        self.log = log
        self._serving: EmbeddedServing | None = None
        self._engine: Engine | None = None

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
                raise UsageError(f"unknown stage {name!r}; stages: {', '.join(self.stages)}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.paths.config.write_text(dump_config(self.config), encoding="utf-8")
        self.manifest.data["config"] = self.config.model_dump(mode="json")
        self.manifest.save()
        start = self.stages.index(from_stage) if from_stage else 0
        stop = self.stages.index(until) if until else len(self.stages) - 1
        total = stop - start + 1
        try:
            for i, name in enumerate(self.stages[start : stop + 1], 1):
                forced = from_stage is not None and name == from_stage
                if self.manifest.is_done(name) and not forced:
                    self.log(f"[{i}/{total}] {name}: done (skipped)")
                    continue
                self.log(f"[{i}/{total}] {name} ...")
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
                self.log(f"[{i}/{total}] {name}: done in {time.monotonic() - t0:.1f}s")
        finally:
            if self._serving is not None:
                self._serving.close()
            if self._engine is not None:
                self._engine.close()
                self._engine = None

    def engine(self) -> Engine:
        """The run config's engine, started on first use (a local Ray instance takes a
        few seconds) and kept for the corpus stage, when it is not the local one, and every
        model-calling stage of this run."""
        if self._engine is None:
            c = self.config
            self._engine = engine_for(c.engine, c.ray_address, c.ray_actors, c.corpus.workers)
        return self._engine

    def _run_stage(self, name: str, wait: bool) -> None:
        if name.startswith("eval_"):
            getattr(evaluation, f"step_{name.removeprefix('eval_')}")(self)
        elif name.startswith("train_"):
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
        cfg = self.config.seed
        if not cfg.inputs:
            raise UsageError("the config has no seed.inputs")
        summary = load_seed(cfg.inputs, self.paths.seed, limit=cfg.limit, options=cfg.options)
        self.manifest.finish(
            "seed", inputs=cfg.inputs, outputs=[self.paths.seed], stats=summary.to_dict()
        )

    def stage_segments(self) -> None:
        cfg = self.config.corpus
        if not cfg.inputs:
            raise UsageError("the config has no corpus.inputs")
        # The run's engine when it is not the local one (``engine: ray``: the corpus stage's
        # work as Ray tasks too); else ``corpus.engine`` with ``corpus.workers``.
        summary = segment_corpus(
            cfg.inputs,
            self.paths.segments,
            cfg,
            keep_rejected=self.paths.segments_rejected,
            engine=self.engine() if self.config.engine != "local" else None,
        )
        self.manifest.finish(
            "segments",
            inputs=[p for p in cfg.inputs if Path(p).exists()],
            outputs=[self.paths.segments, self.paths.segments_rejected],
            stats=summary.to_dict(),
        )

    def _render(self, role: str, dataset: Path, iteration: int) -> Path:
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
        dataset = self.paths.dataset("backward")
        # The backward model learns the prompt augmentation will send it: the same template.
        result = export_backward(
            self.paths.seed,
            dataset,
            template=self.config.augment.template,
            format=self.config.export.format,
        )
        config_path = self._render("backward", dataset, 0)
        self.manifest.finish(
            "backward_data",
            inputs=[self.paths.seed],
            outputs=[dataset, config_path],
            stats={"rows": result.rows},
            model="backward",
        )

    def stage_forward_data(self, k: int) -> None:
        role = f"m{k}"
        dataset = self.paths.dataset(role)
        curated = self.paths.curated(k) if k > 0 else None
        result = export_forward(
            self.paths.seed,
            dataset,
            curated_path=curated,
            iteration=k,
            format=self.config.export.format,
        )
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
            log_path=self.paths.train_log(role),
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
        judge = role == self.config.eval.judge
        if serving.base_urls:
            model = serving.models.get(role)
            if not model:
                raise UsageError(
                    f"serving.models.{role} is not set: name the model or LoRA adapter that "
                    f"serves {role} on {', '.join(serving.base_urls)}"
                )
            urls = self.config.eval.judge_base_urls if judge else []
            return urls or serving.base_urls, model
        if self._serving is None:
            self._serving = EmbeddedServing(
                self.paths.server_state,
                port=serving.embedded_port,
                max_adapters=self.config.iterations + 2,  # backward, m0 ... mN
            )
        adapters = {
            r: self.paths.trained(r)
            for r in self._trained_roles()
            if (self.paths.trained(r) / "adapter_config.json").exists()
        }
        # The embedded server's judge is its base model, served beside the adapters
        # (unless the judge is one of the run's own models).
        own = role == "backward" or role in {f"m{k}" for k in range(self.config.iterations + 1)}
        trained = None if judge and not own else self.paths.trained(role)
        return self._serving.ensure(role, adapters, trained)

    def _trained_roles(self) -> list[str]:
        roles = ["backward"] + [f"m{k}" for k in range(self.config.iterations + 1)]
        return [r for r in roles if is_trained(self.paths.trained(r))]

    def _client_config(self, role: str) -> ClientConfig:
        urls, model = self._client_for(role)
        s = self.config.serving
        return ClientConfig(
            base_urls=urls,
            model=model,
            api_key=load_api_key(s.api_key_file, env=s.api_key_env),
            **s.model_dump(include=set(ClientSettings.model_fields)),
        )

    def stage_augment(self) -> None:
        client_config = self._client_config("backward")
        summary = augment(
            self.paths.segments,
            self.paths.candidates,
            client_config=client_config,
            settings=self.config.augment,
            engine=self.engine(),
        )
        self.manifest.finish(
            "augment",
            inputs=[self.paths.segments],
            outputs=[self.paths.candidates],
            stats=summary,
            model=client_config.model,
            server_urls=client_config.base_urls,
        )

    def stage_curate(self, k: int) -> None:
        client_config = self._client_config(f"m{k - 1}")
        cfg = self.config.curate
        last = k == self.config.iterations and cfg.final_threshold is not None
        # Canaries: probes built from the run's seed unless curate.probes names a file;
        # every iteration mixes in the same ones, so M0's and M1's judges are compared.
        probes = Path(cfg.probes) if cfg.probes else self.paths.seed
        summary = curate(
            self.paths.candidates,
            self.paths.scored(k),
            client_config=client_config,
            settings=cfg,
            selected_path=self.paths.curated(k),
            iteration=k,
            threshold=cfg.final_threshold if last else None,
            probes_path=probes,
            canaries_path=self.paths.canaries(k),
            engine=self.engine(),
        )
        quality = summary.get("judge_quality")
        if quality:
            a4 = quality["a4"]
            self.log(
                f"      judge {client_config.model} on {quality['probes']} canaries: "
                f"A4 precision {a4['precision']}, recall {a4['recall']}, "
                f"ROC-AUC {quality['roc_auc']} (1 separates good from bad, 0.5 is chance)"
            )
        self.manifest.finish(
            f"curate_{k}",
            inputs=[self.paths.candidates] + ([probes] if cfg.canaries else []),
            outputs=[self.paths.scored(k), self.paths.curated(k), self.paths.canaries(k)],
            stats=summary,
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
