"""An async client for OpenAI-compatible servers (vLLM first), built for long jobs.

* one or several base URLs, least-busy routing (ties broken round-robin);
* bounded concurrency, so a half-million-record stage never holds more than a window;
* retries with jittered exponential backoff on connection errors, timeouts, 429, 5xx and
  truncated bodies, for a bounded time; after that :class:`ServerUnavailable` stops the
  stage cleanly (it resumes later);
* other 4xx (e.g. a prompt over the context length) raise :class:`RequestRejected` with the
  server's message: one record fails, the run goes on;
* the API key comes from the environment (or a file the user names) and is never printed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field

from humpback_plugin.core.config import ClientSettings
from humpback_plugin.core.errors import ClientError, ServerUnavailable

API_KEY_ENV = "HUMPBACK_API_KEY"
# Body fields that carry the input rather than sampling settings (kept out of provenance).
_INPUT_FIELDS = {"prompt", "messages", "model"}
# The old guided_* fields are silently ignored by current vLLM: refuse to send them.
_DEPRECATED_FIELDS = {"guided_choice", "guided_regex", "guided_json", "guided_grammar"}


class RequestRejected(Exception):
    """The server refused this one request (4xx): a per-record failure, not retried."""

    def __init__(self, status_code: int, message: str, server_url: str) -> None:
        self.status_code = status_code
        self.message = message
        self.server_url = server_url
        super().__init__(f"HTTP {status_code} from {server_url}: {message}")


class ClientConfig(ClientSettings):
    """How to reach one model: one or several server URLs serving the same model name."""

    base_urls: list[str]
    model: str
    # Never printed: excluded from repr and from dumps.
    api_key: str | None = Field(None, repr=False, exclude=True)
    # Part of the model's identity in every cache key, with what the server reports of its
    # weights (/models root and parent): change it when other weights hide behind one path.
    model_revision: str | None = None
    # The chat template the model was trained with (a trained model folder, an Axolotl
    # config or a .jinja file): the template check compares the server's with it.
    chat_template: str | None = None

    def make_client(self, **kwargs: Any) -> OpenAIClient:
        return OpenAIClient(self, **kwargs)


def load_api_key(
    api_key_file: str | os.PathLike | None = None, env: str = API_KEY_ENV
) -> str | None:
    """The API key from a file the user names, else from ``$HUMPBACK_API_KEY``."""
    if api_key_file:
        return Path(api_key_file).read_text(encoding="utf-8").strip() or None
    return os.environ.get(env) or None


@dataclass
class Choice:
    text: str
    finish_reason: str | None = None
    logprobs: Any = None


@dataclass
class Generation:
    """One server response, with what provenance needs."""

    choices: list[Choice]
    usage: dict[str, int]
    server_url: str
    model: str
    params: dict[str, Any]
    started_at: float
    finished_at: float
    attempts: int = 1

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""

    def provenance(self, template_hash: str) -> dict[str, Any]:
        return {
            "server_url": self.server_url,
            "model": self.model,
            "template_hash": template_hash,
            "params": self.params,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "usage": self.usage,
            "attempts": self.attempts,
        }


@dataclass
class _Endpoint:
    url: str
    in_flight: int = 0
    down_until: float = 0.0
    served: int = 0


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    per_url: dict[str, int] = field(default_factory=dict)


def normalize_base_url(url: str) -> str:
    """Accept ``http://host:8000`` or ``http://host:8000/v1``; return the ``/v1`` form."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class OpenAIClient:
    """Async client for one model served by one or several OpenAI-compatible URLs."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not config.base_urls:
            raise ClientError("no server URL given (use --base-url)")
        self.config = config
        self.endpoints = [_Endpoint(normalize_base_url(u)) for u in config.base_urls]
        self.model = config.model
        self.concurrency = config.concurrency
        self.max_retries = config.max_retries
        self.retry_deadline = config.retry_deadline_s
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stats = ClientStats()
        self._rr = itertools.count()
        # Concurrency is per URL: more servers, more requests in flight.
        slots = config.concurrency * len(self.endpoints)
        self._slots = asyncio.Semaphore(slots)
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=slots + 4, max_keepalive_connections=slots),
            transport=transport,
        )

    async def __aenter__(self) -> OpenAIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def base_urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    def _pick(self) -> _Endpoint:
        now = time.monotonic()
        up = [e for e in self.endpoints if e.down_until <= now] or self.endpoints
        start = next(self._rr) % len(up)
        rotated = up[start:] + up[:start]
        return min(rotated, key=lambda e: e.in_flight)

    def _backoff(self, attempt: int) -> float:
        # Full jitter: spreads retries of many concurrent requests over time.
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))

    async def completion(self, prompt: str | list[str], **params: Any) -> Generation:
        """POST /completions. ``params`` are sent as given (temperature, n, logprobs, ...)."""
        return await self.request("completions", {"prompt": prompt, **params})

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> Generation:
        """POST /chat/completions."""
        return await self.request("chat/completions", {"messages": messages, **params})

    async def request(self, path: str, body: dict[str, Any]) -> Generation:
        bad = _DEPRECATED_FIELDS & body.keys()
        if bad:
            raise ClientError(
                f"{sorted(bad)} are ignored by current vLLM; use structured_outputs instead"
            )
        body = {"model": self.model, **body}
        params = {k: v for k, v in body.items() if k not in _INPUT_FIELDS}
        started = time.time()
        first_failure: float | None = None
        last_error = ""
        async with self._slots:
            for attempt in itertools.count():
                endpoint = self._pick()
                endpoint.in_flight += 1
                try:
                    resp = await self._http.post(f"{endpoint.url}/{path}", json=body)
                    error = self._retryable_status(resp)
                    if error is None:
                        data = self._json(resp)
                        if data is not None:
                            endpoint.served += 1
                            return self._generation(data, endpoint.url, params, started, attempt)
                        error = "truncated or invalid JSON body"
                except httpx.TransportError as exc:
                    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    if isinstance(exc, httpx.ConnectError):
                        endpoint.down_until = time.monotonic() + 2.0
                finally:
                    endpoint.in_flight -= 1
                last_error = f"{endpoint.url}: {error}"
                now = time.monotonic()
                first_failure = first_failure or now
                out_of_tries = self.max_retries is not None and attempt >= self.max_retries
                if out_of_tries or now - first_failure > self.retry_deadline:
                    break
                self.stats.retries += 1
                # Never sleep past the deadline: the stage stops when it says it will.
                remaining = self.retry_deadline - (now - first_failure)
                await asyncio.sleep(min(self._backoff(attempt), max(remaining, 0.0)))
        waited = time.monotonic() - (first_failure or time.monotonic())
        raise ServerUnavailable(
            f"no answer after {attempt + 1} attempts over {waited:.0f}s; last error: {last_error}"
        )

    def _retryable_status(self, resp: httpx.Response) -> str | None:
        """None when the response is usable; a message when it is worth retrying."""
        if resp.status_code == 429 or resp.status_code >= 500:
            return f"HTTP {resp.status_code}"
        if resp.status_code >= 400:
            self.stats.rejected += 1
            raise RequestRejected(resp.status_code, _error_message(resp), str(resp.url))
        return None

    @staticmethod
    def _json(resp: httpx.Response) -> dict[str, Any] | None:
        try:
            data = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) and "choices" in data else None

    def _generation(
        self, data: dict[str, Any], url: str, params: dict[str, Any], started: float, attempt: int
    ) -> Generation:
        choices = []
        for c in sorted(data["choices"], key=lambda c: c.get("index", 0)):
            text = c.get("text")
            if text is None:
                text = (c.get("message") or {}).get("content") or ""
            choices.append(
                Choice(text=text, finish_reason=c.get("finish_reason"), logprobs=c.get("logprobs"))
            )
        usage = {k: v for k, v in (data.get("usage") or {}).items() if isinstance(v, int)}
        self.stats.requests += 1
        self.stats.prompt_tokens += usage.get("prompt_tokens", 0)
        self.stats.completion_tokens += usage.get("completion_tokens", 0)
        self.stats.per_url[url] = self.stats.per_url.get(url, 0) + 1
        return Generation(
            choices=choices,
            usage=usage,
            server_url=url,
            model=data.get("model", self.model),
            params=params,
            started_at=started,
            finished_at=time.time(),
            attempts=attempt + 1,
        )

    async def list_models(self, url: str) -> list[str]:
        resp = await self._http.get(f"{url}/models", timeout=15.0)
        if resp.status_code in (401, 403):
            raise ClientError(
                f"{url} refused the API key (HTTP {resp.status_code}); set ${API_KEY_ENV} "
                "or --api-key-file"
            )
        resp.raise_for_status()
        return [m["id"] for m in resp.json().get("data", [])]

    async def model_card(self, url: str) -> dict[str, Any] | None:
        """This model's entry in ``url``'s ``/models`` (vLLM: ``root`` = the weights' path,
        ``parent`` = a LoRA adapter's base model), or None when it is not listed."""
        data = await self._get_json(f"{url}/models")
        return next((m for m in data.get("data", []) if m.get("id") == self.model), None)

    async def tokenize(self, url: str, body: dict[str, Any]) -> list[int] | None:
        """Token ids from vLLM's ``/tokenize`` for a ``prompt`` or ``messages`` body (the
        server's chat template applied); None where the server has no such endpoint."""
        data = await self._post_json(f"{url.removesuffix('/v1')}/tokenize", body)
        return None if data is None else [int(t) for t in data["tokens"]]

    async def detokenize(self, url: str, tokens: list[int]) -> str | None:
        """The text of ``tokens`` from vLLM's ``/detokenize``; None where there is none."""
        data = await self._post_json(f"{url.removesuffix('/v1')}/detokenize", {"tokens": tokens})
        return None if data is None else str(data["prompt"])

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            resp = await self._http.get(url, timeout=15.0)
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"{url}: {type(exc).__name__}") from exc
        if resp.status_code >= 400:
            raise RequestRejected(resp.status_code, _error_message(resp), url)
        return resp.json()

    async def _post_json(self, url: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST to a server endpoint outside the OpenAI API; None on 404 (not there)."""
        try:
            resp = await self._http.post(url, json={"model": self.model, **body}, timeout=60.0)
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"{url}: {type(exc).__name__}") from exc
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise RequestRejected(resp.status_code, _error_message(resp), url)
        return resp.json()

    async def prefix_cache_counters(self) -> dict[str, dict[str, float] | None]:
        """vLLM's prefix-cache query/hit token counters per URL from ``/metrics`` (None where
        a server does not expose them)."""
        return {e.url: await self._prefix_cache_counters(e.url) for e in self.endpoints}

    async def _prefix_cache_counters(self, url: str) -> dict[str, float] | None:
        try:
            resp = await self._http.get(f"{url.removesuffix('/v1')}/metrics", timeout=5.0)
            resp.raise_for_status()
        except httpx.HTTPError:
            return None
        counters = {"queries": 0.0, "hits": 0.0}
        found = False
        for line in resp.text.splitlines():
            if line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            for key in counters:
                if name == f"vllm:prefix_cache_{key}_total":
                    counters[key] += float(line.rsplit(" ", 1)[1])
                    found = True
        return counters if found else None

    async def preflight(self) -> dict[str, Any]:
        """Fail fast before a long job: every URL answers, serves the model, and completes."""
        report: dict[str, Any] = {}
        for endpoint in self.endpoints:
            try:
                models = await self.list_models(endpoint.url)
            except httpx.TransportError as exc:
                raise ClientError(
                    f"cannot reach {endpoint.url} ({type(exc).__name__}); is the server running? "
                    "Start one with `humpback server start` or pass --base-url"
                ) from exc
            except httpx.HTTPStatusError as exc:
                raise ClientError(
                    f"{endpoint.url}/models answered HTTP {exc.response.status_code}"
                ) from exc
            if self.model not in models:
                raise ClientError(
                    f"model {self.model!r} is not served at {endpoint.url}; "
                    f"it serves: {', '.join(models) or 'nothing'}"
                )
            report[endpoint.url] = models
        saved = self.max_retries
        self.max_retries = 1
        try:
            gen = await self.completion("Hello", max_tokens=1, temperature=0)
        except RequestRejected as exc:
            raise ClientError(f"a test completion was refused: {exc}") from exc
        except ServerUnavailable as exc:
            raise ClientError(f"a test completion failed: {exc}") from exc
        finally:
            self.max_retries = saved
        report["test_completion"] = {"server_url": gen.server_url, "usage": gen.usage}
        return report


def _error_message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return resp.text[:500]
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err)[:2000]
    return str(err)[:2000]
