"""`humpback run`: the whole method as the paper runs it, in a resumable run directory.

    seed -> segments -> backward_data -> train_backward -> augment -> m0_data -> train_m0
         -> curate_1 (M0 judges) -> m1_data -> train_m1 -> curate_2 (M1 judges) -> m2_data
         -> train_m2 [-> eval_generate -> eval_lm_eval -> eval_compare]

The evaluation steps (:mod:`.evaluation`) run when the config's ``eval`` section names an
evaluation set (or lm-eval tasks).

Every stage records its inputs and outputs (hashes, counts), the hash of the settings it
ran with, the model that served it and its statistics in ``manifest.json``. A stage is
skipped when its outputs are on disk with the recorded hashes and its inputs and settings
are those recorded; otherwise it runs again, and so does every stage after it whose inputs
then change (a retrained model changes the inputs of the stages it serves). ``--from
STAGE`` runs STAGE and every later stage again regardless. The model-calling stages also
resume record by record, so a run killed at any moment continues where it stopped. Each
stage calls its ``humpback`` command's library function with its section of the config.

Trained models are served with the chat template they were trained with (the embedded vLLM
gets ``--chat-template``; your own servers are checked before augment and curate); each
training writes ``RUN_DIR/<role>/serve.sh``, the ``vllm serve`` command of that model.
"""

from __future__ import annotations

import contextlib
import glob
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
from humpback_plugin.core.errors import (
    HumpbackError,
    TemplateMismatch,
    TrainingPending,
    UsageError,
)
from humpback_plugin.core.hashing import content_hash
from humpback_plugin.core.layout import RunLayout, stage_names
from humpback_plugin.core.manifest import Manifest
from humpback_plugin.plugins import load_template
from humpback_plugin.run import evaluation
from humpback_plugin.run.serve import template_source, write_chat_template, write_serve_script
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
        start = self.stages.index(from_stage) if from_stage else len(self.stages)
        stop = self.stages.index(until) if until else len(self.stages) - 1
        total = stop + 1
        try:
            for i, name in enumerate(self.stages[: stop + 1], 1):
                forced = i - 1 >= start
                reason = "--from" if forced else self.stale_reason(name)
                if reason is None:
                    self.log(f"[{i}/{total}] {name}: done (skipped)")
                    continue
                again = "" if reason == "not done" else f" (again: {reason})"
                self.log(f"[{i}/{total}] {name}{again} ...")
                t0 = time.monotonic()
                self.manifest.start(name)
                try:
                    self._run_stage(name, wait_for_training, forced)
                    self._record_settings(name)
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
            self._engine = engine_for(
                c.engine, c.ray_address, c.ray_actors, c.corpus.workers, c.client_processes
            )
        return self._engine

    def _run_stage(self, name: str, wait: bool, forced: bool = False) -> None:
        if name.startswith("eval_"):
            getattr(evaluation, f"step_{name.removeprefix('eval_')}")(self)
        elif name.startswith("train_"):
            self.stage_train(name.removeprefix("train_"), wait, force=forced)
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

    # --- what each stage depends on ----------------------------------------------------

    def stage_inputs(self, name: str) -> list[Path]:
        """The files a stage reads; a change in any of them runs it again."""
        p = self.paths
        if name == "seed":
            return _existing(self.config.seed.inputs)
        if name == "segments":
            return _existing(self.config.corpus.inputs)
        if name == "backward_data":
            return [p.seed]
        if name.startswith("train_"):
            role = name.removeprefix("train_")
            return [p.axolotl_config(role), p.dataset(role)]
        if name == "augment":
            return [p.segments, p.trained("backward")]
        if name.startswith("curate_"):
            judge = p.trained(f"m{int(name.removeprefix('curate_')) - 1}")
            return [p.candidates, judge] + ([self._probes()] if self.config.curate.canaries else [])
        if name.startswith("eval_"):
            return evaluation.step_inputs(self.config, p, name.removeprefix("eval_"))
        k = int(name.removesuffix("_data").removeprefix("m"))
        return [p.seed] + ([p.curated(k)] if k > 0 else [])

    def stage_settings(self, name: str) -> str:
        """The hash of the settings that decide a stage's outputs (not how fast it runs)."""
        cfg = self.config
        training = cfg.training.model_dump(
            mode="json", exclude={"execute", "axolotl_bin", "launcher"}
        )
        if name in ("seed", "segments"):
            section: list[Any] = [cfg.seed if name == "seed" else cfg.corpus]
        elif name == "backward_data":
            prompt = load_template(cfg.augment.template, required=("output",))
            section = [cfg.augment.template, prompt.sha256, cfg.export, training]
        elif name.endswith("_data"):
            section = [cfg.export, training]
        elif name.startswith("train_"):
            section = []  # the rendered config and the dataset are its inputs
        elif name == "augment":
            prompt = load_template(cfg.augment.template, required=("output",))
            section = [cfg.augment, prompt.sha256, cfg.serving.models.get("backward")]
        elif name.startswith("eval_"):
            section = evaluation.step_settings(cfg, name.removeprefix("eval_"))
        else:
            k = int(name.removeprefix("curate_"))
            prompt = load_template(cfg.curate.template, required=("instruction", "output"))
            last = k == cfg.iterations
            section = [cfg.curate, prompt.sha256, cfg.serving.models.get(f"m{k - 1}"), last]
        dumped = [x.model_dump(mode="json") if hasattr(x, "model_dump") else x for x in section]
        return content_hash(name, dumped, length=64)

    def _probes(self) -> Path:
        """The canaries' source: ``curate.probes``, else the run's seed."""
        return Path(self.config.curate.probes) if self.config.curate.probes else self.paths.seed

    def stale_reason(self, name: str) -> str | None:
        """Why ``name`` must run (not done, outputs, inputs or settings changed), or None."""
        return self.manifest.stale_reason(name, self.stage_inputs(name), self.stage_settings(name))

    def _record_settings(self, name: str) -> None:
        entry = self.manifest.stage(name)
        if entry.get("status") == "done":
            entry["settings_sha256"] = self.stage_settings(name)
            self.manifest.save()

    # --- stages ------------------------------------------------------------------------

    def stage_seed(self) -> None:
        cfg = self.config.seed
        if not cfg.inputs:
            raise UsageError("the config has no seed.inputs")
        summary = load_seed(cfg.inputs, self.paths.seed, limit=cfg.limit, options=cfg.options)
        self.manifest.finish(
            "seed",
            inputs=self.stage_inputs("seed"),
            outputs=[self.paths.seed],
            stats=summary.to_dict(),
        )

    def stage_segments(self) -> None:
        cfg = self.config.corpus
        if not cfg.inputs:
            raise UsageError("the config has no corpus.inputs")
        # The run's engine when it is not the local one (``engine: ray``: the corpus stage's
        # work on Ray Data too); else ``corpus.engine`` with ``corpus.workers``.
        summary = segment_corpus(
            cfg.inputs,
            self.paths.segments,
            cfg,
            keep_rejected=self.paths.segments_rejected,
            engine=self.engine() if self.config.engine != "local" else None,
        )
        self.manifest.finish(
            "segments",
            inputs=self.stage_inputs("segments"),
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
            chat_template=cfg.chat_template,
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
            inputs=self.stage_inputs("backward_data"),
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
        self.manifest.finish(
            f"{role}_data",
            inputs=self.stage_inputs(f"{role}_data"),
            outputs=[dataset, config_path],
            stats={"rows": result.rows, **result.card.get("counts", {})},
            iteration=k,
            model=role,
        )

    def stage_train(self, role: str, wait: bool, force: bool = False) -> None:
        cfg = self.config.training
        out = self.paths.trained(role)
        # A training here gets the cores: the run's idle embedded servers are paused.
        local = cfg.execute and self._serving is not None
        with self._serving.paused() if local else contextlib.nullcontext():
            how = train(
                self.paths.axolotl_config(role),
                out,
                execute=cfg.execute,
                wait=wait,
                axolotl_bin=cfg.axolotl_bin,
                launcher=cfg.launcher,
                log_path=self.paths.train_log(role),
                inputs=[self.paths.dataset(role)],
                force=force,
            )
        script, command = write_serve_script(self.paths, self.config, role)
        self.log(f"  serve {role} as it was trained ({script}):\n    {command}")
        self.manifest.finish(
            f"train_{role}",
            inputs=self.stage_inputs(f"train_{role}"),
            outputs=[out],
            stats={"how": how},
            model=role,
            serve_command=command,
            serve_script=self.paths.relative(script),
        )

    def _client_for(self, role: str, chat: bool = True) -> tuple[list[str], str]:
        """Base URLs and served model name for a role (backward, m0, m1, ...); ``chat=False``
        for plain completions (lm-eval), which any chat template serves."""
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
                max_servers=serving.embedded_servers,
                # Kept up for the evaluation, which asks for these models again.
                keep_roles=set(evaluation.models_to_evaluate(self.config))
                if self.config.eval.stages()
                else set(),
            )
        adapters = {
            r: self.paths.trained(r)
            for r in self._trained_roles()
            if (self.paths.trained(r) / "adapter_config.json").exists()
        }
        # The judge (unless one of the run's models) is the base model, with its own template.
        own = role == "backward" or role in {f"m{k}" for k in range(self.config.iterations + 1)}
        if judge and not own:
            return self._serving.ensure(role, adapters, None, None)
        template = write_chat_template(self.paths, role)
        return self._serving.ensure(
            role, adapters, self.paths.trained(role), template, any_template=not chat
        )

    def serve_order(self, roles: list[str]) -> list[str]:
        """The order to ask ``roles`` in: the model the embedded server holds first."""
        return self._serving.serve_order(roles) if self._serving is not None else roles

    def _trained_roles(self) -> list[str]:
        roles = ["backward"] + [f"m{k}" for k in range(self.config.iterations + 1)]
        return [r for r in roles if is_trained(self.paths.trained(r))]

    def _client_config(self, role: str, chat: bool = True) -> ClientConfig:
        """How to reach ``role``'s model: URLs and name, its training template (for the
        template check) and the hash its training stage recorded (in every cache key)."""
        urls, model = self._client_for(role, chat)
        s = self.config.serving
        trained = self.manifest.data["stages"].get(f"train_{role}", {}).get("outputs") or [{}]
        source = template_source(self.paths, role)
        return ClientConfig(
            base_urls=urls,
            model=model,
            api_key=load_api_key(s.api_key_file, env=s.api_key_env),
            model_revision=trained[0].get("sha256"),
            chat_template=str(source) if source else None,
            **s.model_dump(include=set(ClientSettings.model_fields)),
        )

    def _served_right(self, role: str, exc: TemplateMismatch) -> TemplateMismatch:
        return TemplateMismatch(
            f"{exc}\n`humpback serve-command {self.run_dir} {role}` prints the vllm serve "
            f"command that serves {role} with its training template."
        )

    def stage_augment(self) -> None:
        client_config = self._client_config("backward")
        try:
            summary = augment(
                self.paths.segments,
                self.paths.candidates,
                client_config=client_config,
                settings=self.config.augment,
                engine=self.engine(),
            )
        except TemplateMismatch as exc:
            raise self._served_right("backward", exc) from exc
        self.manifest.finish(
            "augment",
            inputs=self.stage_inputs("augment"),
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
        try:
            summary = curate(
                self.paths.candidates,
                self.paths.scored(k),
                client_config=client_config,
                settings=cfg,
                selected_path=self.paths.curated(k),
                iteration=k,
                threshold=cfg.final_threshold if last else None,
                probes_path=self._probes(),
                canaries_path=self.paths.canaries(k),
                engine=self.engine(),
            )
        except TemplateMismatch as exc:
            raise self._served_right(f"m{k - 1}", exc) from exc
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
            inputs=self.stage_inputs(f"curate_{k}"),
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
            try:
                reason = self.stale_reason(name) if status == "done" else None
            except HumpbackError as exc:  # e.g. a prompt template that is gone
                reason = str(exc)
            if reason:
                status = f"stale ({reason})"
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


def _existing(inputs: list[str]) -> list[Path]:
    """The paths a list of inputs names on disk (globs expanded; ``hf:`` names skipped)."""
    found: list[Path] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        found += [Path(m) for m in matches if Path(m).exists()]
    return found
