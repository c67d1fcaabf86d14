"""Serving trained models, as they were trained, for the roles of a run.

One embedded server holds the base model and every LoRA adapter trained so far
(``--enable-lora --lora-modules``); when a stage needs an adapter the server does not have
yet, the server is restarted with the full set. A full fine-tune is served as the base
model instead. Either way vLLM gets ``--chat-template`` with the template Axolotl trained
with: without it vLLM applies the base model's own template to every adapter.

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
    def __init__(self, state_dir: str | os.PathLike, *, port: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.port = port
        self.handle = None
        self._key: tuple | None = None

    def ensure(
        self,
        role: str,
        adapters: dict[str, Path],
        trained: Path,
        chat_template: Path | None = None,
    ) -> tuple[list[str], str]:
        """Start (or restart) the server so it serves ``role`` with ``chat_template``;
        returns (urls, model name)."""
        full_model = None
        if role not in adapters:
            if not (trained / "config.json").exists():
                raise ServerError(f"no trained model for {role} at {trained}")
            full_model = trained
        template = hashlib.sha256(chat_template.read_bytes()).hexdigest() if chat_template else None
        # The same template text under another role's path needs no restart.
        key = (str(full_model), tuple(sorted((n, str(p)) for n, p in adapters.items())), template)
        if self.handle is not None and key == self._key:
            return [self.handle.base_url], role
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
        self.handle = server.start_server(
            port=self.port,
            state_dir=self.state_dir,
            loras=[(name, path) for name, path in sorted(adapters.items())],
            chat_template=chat_template,
            **kwargs,
        )
        self._key = key
        return [self.handle.base_url], role

    def close(self) -> None:
        if self.handle is None:
            return
        server.stop_server(state_dir=self.state_dir)
        self.handle = None
        self._key = None
