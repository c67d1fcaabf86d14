"""Who answers a stage, asked of the server before its first request: the model's
identity (the served name and the weights behind it, the scope of every stored result)
and whether the server applies the training chat template."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from humpback_plugin.core.chat_template import load_training_template
from humpback_plugin.core.client import ClientConfig, OpenAIClient
from humpback_plugin.core.errors import ClientError, ServerUnavailable
from humpback_plugin.core.hashing import content_hash
from humpback_plugin.core.template_check import check_chat_template

T = TypeVar("T")


async def _patiently(client: OpenAIClient, call: Callable[[], Awaitable[T]]) -> T:
    """``call()`` again while no server answers, for the client's retry deadline."""
    started = time.monotonic()
    while True:
        try:
            return await call()
        except ServerUnavailable:
            if time.monotonic() - started >= client.retry_deadline:
                raise
            await asyncio.sleep(min(2.0, max(client.retry_deadline / 10, 0.05)))


async def model_identity(client: OpenAIClient, revision: str | None = None) -> dict[str, Any]:
    """Who answers: the served name, the weights every URL reports for it (vLLM's
    ``/models`` ``root``, and ``parent`` for a LoRA adapter) and ``revision``; ``key`` is
    their hash, the scope of the stage's stored results."""
    weights: list[dict[str, Any]] = []
    for url in client.base_urls:
        card = await _patiently(client, lambda url=url: client.model_card(url))
        if card is None:
            raise ClientError(f"model {client.model!r} is not served at {url}")
        served = {"root": card.get("root"), "parent": card.get("parent")}
        if served not in weights:
            weights.append(served)
    weights.sort(key=lambda w: (str(w["root"]), str(w["parent"])))
    identity = {"model": client.model, "weights": weights, "revision": revision}
    return {**identity, "key": content_hash(identity, length=12)}


async def template_report(
    client: OpenAIClient, config: ClientConfig, chat_endpoint: bool
) -> dict[str, Any] | None:
    """The chat-template check of the stage's model, or why it did not run."""
    if not chat_endpoint:
        return {"checked": False, "why": "the completions endpoint applies no chat template"}
    if not config.template_check:
        return {"checked": False, "why": "skipped (--skip-template-check)"}
    if not config.chat_template:
        return {"checked": False, "why": "no training template given (--chat-template)"}
    template = load_training_template(config.chat_template)
    source = Path(config.chat_template)
    jinja = source / "chat_template.jinja" if source.is_dir() else source
    fix = (
        f"restart vLLM with --chat-template {jinja}"
        if jinja.suffix == ".jinja" and jinja.is_file()
        else f"restart vLLM with --chat-template FILE, FILE holding the template of {source}"
    )
    return {"checked": True, **await check_chat_template(client, template, fix=fix)}
