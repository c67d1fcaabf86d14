"""HTTP plumbing of the client: aiohttp imported on first use, a reply read in full, the
environment's proxy for a URL, and the messages made of errors and replies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from humpback_plugin.core import fastjson


def normalize_base_url(url: str) -> str:
    """Accept ``http://host:8000`` or ``http://host:8000/v1``; return the ``/v1`` form."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def aiohttp_module() -> Any:
    """The aiohttp module, imported on first use (about 0.1-0.4 s of start-up otherwise)."""
    import aiohttp

    return aiohttp


@dataclass
class Reply:
    """One HTTP answer, read in full."""

    status: int
    body: bytes

    def json(self) -> Any:
        return fastjson.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``HTTP_PROXY``, ``NO_PROXY``), or None."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if not proxy or proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def describe(exc: BaseException) -> str:
    """An exception as one line: its type and, when it has one, its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def completion_json(body: bytes) -> dict[str, Any] | None:
    """The parsed completion, or None for a truncated or malformed body (retried)."""
    try:
        data = fastjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and "choices" in data else None


def error_message(reply: Reply) -> str:
    try:
        data = reply.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return reply.text[:500]
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err)[:2000]
    return str(err)[:2000]
