"""Serving trained models on the embedded vLLM for the roles of a run.

One server holds the base model and every LoRA adapter trained so far (``--enable-lora
--lora-modules``); when a stage needs an adapter the server does not have yet, the server
is restarted with the full set. A full fine-tune is served as the base model instead.
For your own deployment, name the served model per role in ``serving.models``.
"""

from __future__ import annotations

import os
from pathlib import Path

from humpback_plugin.core.console import say
from humpback_plugin.core.errors import ServerError
from humpback_plugin.vllm import server


class EmbeddedServing:
    def __init__(self, state_dir: str | os.PathLike, *, port: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.port = port
        self.handle = None
        self._key: tuple | None = None

    def ensure(
        self, role: str, adapters: dict[str, Path], trained: Path | None
    ) -> tuple[list[str], str]:
        """Start (or restart) the server so it serves ``role``; returns (urls, model name).

        ``trained=None`` asks for the base model itself (the evaluation's judge), served
        beside the adapters under its own name."""
        full_model = None
        if trained is not None and role not in adapters:
            if not (trained / "config.json").exists():
                raise ServerError(f"no trained model for {role} at {trained}")
            full_model = trained
        key = (str(full_model), tuple(sorted((n, str(p)) for n, p in adapters.items())))
        if self.handle is not None and key == self._key:
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
        self.handle = server.start_server(
            port=self.port,
            state_dir=self.state_dir,
            loras=[(name, path) for name, path in sorted(adapters.items())],
            **kwargs,
        )
        self._key = key
        return [self.handle.base_url], role if trained is not None else self.handle.model

    def close(self) -> None:
        if self.handle is None:
            return
        server.stop_server(state_dir=self.state_dir)
        self.handle = None
        self._key = None
