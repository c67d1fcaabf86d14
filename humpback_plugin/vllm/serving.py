"""Serving trained models on the embedded vLLM for the roles of a run.

One server holds the base model and every LoRA adapter trained so far (``--enable-lora
--lora-modules``), started with room for the run's later adapters (``--max-loras``); an
adapter trained later is loaded into the running server (``/v1/load_lora_adapter``), so
the run starts vLLM once instead of once per model (about 20 s each on 2 CPU cores). The
server restarts only when it cannot take the new adapter (no room, a higher rank, a
changed path) or the base changes. A full fine-tune is served as the base model instead.
For your own deployment, name the served model per role in ``serving.models``.
"""

from __future__ import annotations

import os
from pathlib import Path

from humpback_plugin.core.console import say
from humpback_plugin.core.errors import ServerError
from humpback_plugin.vllm import server


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
        if self._load_new(full_model, adapters):
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
            **kwargs,
        )
        self._key = key
        self._loaded = {name: str(path) for name, path in adapters.items()}
        self._rank = max((server.adapter_rank(Path(p)) for p in adapters.values()), default=0)
        return [self.handle.base_url], role if trained is not None else self.handle.model

    def _load_new(self, full_model: Path | None, adapters: dict[str, Path]) -> bool:
        """Load the adapters the running server lacks; False when it cannot take them."""
        if self.handle is None or not self._loaded or self._key is None:
            return False
        if self._key[0] != str(full_model):
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

    def close(self) -> None:
        if self.handle is None:
            return
        server.stop_server(state_dir=self.state_dir)
        self.handle = None
        self._key = None
        self._loaded = {}
