"""Serving trained models, as they were trained, for the roles of a run.

One embedded server holds the base model and every LoRA adapter trained so far
(``--enable-lora --lora-modules``), started with room for the run's later adapters
(``--max-loras``); an adapter trained later is loaded into the running server
(``/v1/load_lora_adapter``), so the run starts vLLM once instead of once per model (about
20 s each on 2 CPU cores). The server restarts only when it cannot take the new adapter (no
room, a higher rank, a changed path), the base changes, or another chat template is asked
for. A full fine-tune is served as the base model instead. Either way vLLM gets
``--chat-template`` with the template Axolotl trained with: without it vLLM applies the
base model's own template to every adapter.

For your own deployment, :func:`serve_command` gives the ``vllm serve`` command of one
trained model (``humpback run`` writes it to ``RUN_DIR/<role>/serve.sh``; ``humpback
serve-command RUN_DIR ROLE`` prints it); name the served model per role in
``serving.models``.
"""

from __future__ import annotations

import hashlib
import os
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


class EmbeddedServing:
    def __init__(
        self, state_dir: str | os.PathLike, *, port: int = 0, max_adapters: int = 0
    ) -> None:
        self.state_dir = Path(state_dir)
        self.port = port
        self.max_adapters = max_adapters  # adapter slots to reserve (the run's roles)
        self.handle = None
        self._key: tuple | None = None
        self._loaded: dict[str, str] = {}  # adapter name -> path, as the server has them
        self._capacity = 0
        self._rank = 0
        self.full_role: str | None = None  # the full fine-tune the server holds, if any

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
        key = (str(full_model), tuple(sorted((n, str(p)) for n, p in adapters.items())), template)
        same_models = self._key is not None and key[:2] == self._key[:2]
        if self.handle is not None and (key == self._key or (any_template and same_models)):
            return [self.handle.base_url], role if trained is not None else self.handle.model
        if self._load_new(full_model, adapters, template):
            self._key = key
            return [self.handle.base_url], role if trained is not None else self.handle.model
        self.close()
        # A run killed earlier may have left its server up (it lives in its own session so
        # that Ctrl-C reaches us first); it is this run's to replace.
        server.stop_server(state_dir=self.state_dir)
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
            state_dir=self.state_dir,
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

    def _load_new(
        self, full_model: Path | None, adapters: dict[str, Path], template: str | None
    ) -> bool:
        """Load the adapters the running server lacks; False when it cannot take them."""
        if self.handle is None or not self._loaded or self._key is None:
            return False
        if self._key[0] != str(full_model) or self._key[2] != template:
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

    def serve_order(self, roles: list[str]) -> list[str]:
        """``roles`` with the full fine-tune the server holds now first: each other full
        fine-tune costs a restart, so the one being served goes before them."""
        return sorted(roles, key=lambda role: role != self.full_role)

    def close(self) -> None:
        if self.handle is None:
            return
        server.stop_server(state_dir=self.state_dir)
        self.handle = None
        self._key = None
        self.full_role = None
        self._loaded = {}
