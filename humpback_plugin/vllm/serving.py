"""Serving trained models, as they were trained, for the roles of a run.

One embedded server holds the base model and every LoRA adapter trained so far
(``--enable-lora --lora-modules``), started with room for the run's later adapters
(``--max-loras``); an adapter trained later is loaded into the running server
(``/v1/load_lora_adapter``), so the run starts vLLM once instead of once per model (about
20 s each on 2 CPU cores). The server restarts only when it cannot take the new adapter (no
room, a higher rank, a changed path), the base changes, or another chat template is asked
for. A full fine-tune is served as the base model instead, one server per model; with
``max_servers`` above 1 a server that is no longer asked for is kept up (up to that many,
least recently used stopped first) so that a later stage asking for its model again (the
evaluation asks for M0 and M1 after curation did) costs no start (about 30 s each on 2 CPU
cores). Either way vLLM gets ``--chat-template`` with the template Axolotl trained with:
without it vLLM applies the base model's own template to every adapter.

For your own deployment, :func:`serve_command` gives the ``vllm serve`` command of one
trained model (``humpback run`` writes it to ``RUN_DIR/<role>/serve.sh``; ``humpback
serve-command RUN_DIR ROLE`` prints it); name the served model per role in
``serving.models``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from humpback_plugin.core.console import say
from humpback_plugin.core.errors import ServerError
from humpback_plugin.vllm import server


def serve_command(
    *,
    trained: Path,
    served_name: str,
    base_model: str,
    chat_template: Path | None,
    lora: bool,
    lora_rank: int | None = None,
) -> list[str]:
    """``vllm serve`` for one trained model: a LoRA adapter beside its base model, or a
    full fine-tune under ``served_name``; with the training chat template."""
    if lora:
        cmd = ["vllm", "serve", base_model]
        has_config = (trained / "adapter_config.json").exists()
        adapter_args = server.lora_args(
            [(served_name, trained.resolve())], None if has_config else lora_rank or 16
        )
    else:
        cmd = ["vllm", "serve", str(trained.resolve()), "--served-model-name", served_name]
        adapter_args = []
    if chat_template is not None:
        cmd += ["--chat-template", str(chat_template.resolve())]
    return cmd + adapter_args


def _model_key(full_model: Path | None) -> str:
    """A full fine-tune by path and when it was written: a model trained again under the
    same path (``--from``) is not the one a kept server still holds."""
    if full_model is None:
        return "None"
    return f"{full_model}@{(full_model / 'config.json').stat().st_mtime_ns}"


@dataclass
class _Kept:
    """A server kept up for a later stage: what it serves, and its state folder."""

    handle: server.ServerHandle
    key: tuple
    full_role: str | None
    state_dir: Path


class EmbeddedServing:
    def __init__(
        self,
        state_dir: str | os.PathLike,
        *,
        port: int = 0,
        max_adapters: int = 0,
        max_servers: int = 1,
        keep_roles: set[str] | frozenset[str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.port = port
        self.max_adapters = max_adapters  # adapter slots to reserve (the run's roles)
        self.max_servers = max(1, max_servers)  # servers up at once (current + kept)
        # The roles a later stage asks for again (None: any). Only their servers are kept:
        # an idle vLLM still polls (about 7% of a core), and on 2 cores every idle server
        # slows the trainings that run beside it.
        self.keep_roles = keep_roles
        self.handle = None
        self._key: tuple | None = None
        self._loaded: dict[str, str] = {}  # adapter name -> path, as the server has them
        self._capacity = 0
        self._rank = 0
        self.full_role: str | None = None  # the full fine-tune the server holds, if any
        self._slot = self.state_dir  # the current server's state folder
        self._kept: list[_Kept] = []  # least recently used first
        self._leftovers_stopped = False

    def ensure(
        self,
        role: str,
        adapters: dict[str, Path],
        trained: Path | None,
        chat_template: Path | None = None,
        *,
        any_template: bool = False,
    ) -> tuple[list[str], str]:
        """Start (or restart) the server so it serves ``role`` with ``chat_template``;
        returns (urls, model name).

        ``trained=None`` asks for the base model itself (the evaluation's judge), served
        beside the adapters under its own name, with ``chat_template=None`` (its own).
        ``any_template``: the caller sends no chat requests (lm-eval's completions), so a
        running server that has the model serves, whatever its template."""
        full_model = None
        if trained is not None and role not in adapters:
            if not (trained / "config.json").exists():
                raise ServerError(f"no trained model for {role} at {trained}")
            full_model = trained
        template = hashlib.sha256(chat_template.read_bytes()).hexdigest() if chat_template else None
        # The same template text under another role's path needs no restart.
        key = (
            _model_key(full_model),
            tuple(sorted((n, str(p)) for n, p in adapters.items())),
            template,
        )
        same_models = self._key is not None and key[:2] == self._key[:2]
        if self.handle is not None and (key == self._key or (any_template and same_models)):
            return [self.handle.base_url], role if trained is not None else self.handle.model
        if self._load_new(full_model, adapters, template):
            self._key = key
            return [self.handle.base_url], role if trained is not None else self.handle.model
        kept = self._take_kept(key, any_template)
        self._keep_or_close_current()
        if kept is not None:
            self.handle, self._key, self.full_role, self._slot = (
                kept.handle, kept.key, kept.full_role, kept.state_dir
            )  # fmt: skip
            self._loaded, self._capacity, self._rank = {}, 0, 0
            say(f"  serving {role} on the embedded vLLM kept up for it (no start)")
            return [self.handle.base_url], role if trained is not None else self.handle.model
        self._stop_leftovers()
        while self._kept and len(self._kept) >= self.max_servers:
            self._stop(self._kept.pop(0).state_dir)  # the least recently used
        self._slot = self._free_slot()
        say(
            f"  serving {role} on the embedded vLLM"
            + (f" with adapters {', '.join(sorted(adapters))}" if adapters else "")
        )
        kwargs: dict = {}
        if full_model is not None:
            kwargs.update(model=full_model, served_model_name=role)
        self._capacity = max(self.max_adapters, len(adapters))
        self.handle = server.start_server(
            port=self.port,
            state_dir=self._slot,
            loras=[(name, path) for name, path in sorted(adapters.items())],
            max_loras=self._capacity,
            chat_template=chat_template,
            **kwargs,
        )
        self._key = key
        self.full_role = role if full_model is not None else None
        self._loaded = {name: str(path) for name, path in adapters.items()}
        self._rank = max((server.adapter_rank(Path(p)) for p in adapters.values()), default=0)
        return [self.handle.base_url], role if trained is not None else self.handle.model

    # --- servers kept up for later stages ----------------------------------------------

    def _take_kept(self, key: tuple, any_template: bool) -> _Kept | None:
        for i, kept in enumerate(self._kept):
            if kept.key == key or (any_template and kept.key[:2] == key[:2]):
                return self._kept.pop(i)
        return None

    def _keep_or_close_current(self) -> None:
        """Keep the current server up for later when it may be (no adapters: those are
        loaded into one server instead), else stop it."""
        if self.handle is None:
            return
        wanted = self.keep_roles is None or self.full_role in self.keep_roles
        if self.max_servers > 1 and wanted and not self._loaded and self._key is not None:
            self._kept.append(_Kept(self.handle, self._key, self.full_role, self._slot))
        else:
            self._stop(self._slot)
        self.handle, self._key, self.full_role, self._loaded = None, None, None, {}

    def _free_slot(self) -> Path:
        """A state folder no running server uses: the run's own first (as with one server),
        then ``server-2``, ``server-3``, ..."""
        used = {kept.state_dir for kept in self._kept}
        slots = [self.state_dir] + [self.state_dir / f"server-{i}" for i in range(2, 64)]
        return next(slot for slot in slots if slot not in used)

    def _stop_leftovers(self) -> None:
        """A run killed earlier may have left its servers up (they live in their own session
        so that Ctrl-C reaches us first); they are this run's to replace."""
        if self._leftovers_stopped:
            return
        for slot in [self.state_dir, *sorted(self.state_dir.glob("server-*"))]:
            self._stop(slot)
        self._leftovers_stopped = True

    @staticmethod
    def _stop(slot: Path) -> None:
        server.stop_server(state_dir=slot)

    def _load_new(
        self, full_model: Path | None, adapters: dict[str, Path], template: str | None
    ) -> bool:
        """Load the adapters the running server lacks; False when it cannot take them."""
        if self.handle is None or not self._loaded or self._key is None:
            return False
        if self._key[0] != _model_key(full_model) or self._key[2] != template:
            return False
        if any(str(adapters.get(n, p)) != p for n, p in self._loaded.items()):
            return False  # an adapter was retrained elsewhere: start afresh
        new = {n: p for n, p in adapters.items() if n not in self._loaded}
        if len(self._loaded) + len(new) > self._capacity:
            return False
        if any(server.adapter_rank(Path(p)) > self._rank for p in new.values()):
            return False
        for name, path in sorted(new.items()):
            say(f"  loading adapter {name} into the running vLLM (no restart)")
            server.load_lora(self.handle.base_url, name, path)
            self._loaded[name] = str(path)
        return True

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Every server of the run paused (SIGSTOP) for the block, e.g. a training on the
        same cores: an idle vLLM still polls, and on 2 cores that slowed each training
        beside one by a third. Continued after, whatever happens in the block."""
        slots = [k.state_dir for k in self._kept]
        if self.handle is not None:
            slots.append(self._slot)
        paused = [slot for slot in slots if server.pause_server(state_dir=slot)]
        if paused:
            say(f"  {len(paused)} idle vLLM server(s) paused meanwhile (continued after)")
        try:
            yield
        finally:
            for slot in paused:
                server.pause_server(state_dir=slot, resume=True)

    def serve_order(self, roles: list[str]) -> list[str]:
        """``roles`` with the full fine-tunes that are up first (the one being served, then
        those kept up, most recent first): each other full fine-tune costs a start, and
        starting it may stop a kept one."""
        kept = [k.full_role for k in reversed(self._kept)]

        def rank(role: str) -> int:
            if role == self.full_role:
                return 0
            return 1 + kept.index(role) if role in kept else 1 + len(kept)

        return sorted(roles, key=rank)

    def close(self) -> None:
        if self.handle is not None:
            self._stop(self._slot)
        for kept in self._kept:
            self._stop(kept.state_dir)
        self._kept = []
        self.handle = None
        self._key = None
        self.full_role = None
        self._loaded = {}
