"""An async client for OpenAI-compatible servers (vLLM first), built for long jobs.

* one or several base URLs, least-busy routing (ties broken round-robin);
* bounded concurrency, so a half-million-record stage never holds more than a window;
* retries with jittered exponential backoff on connection errors, timeouts, 429, 5xx and
  truncated bodies, for a bounded time; after that :class:`ServerUnavailable` stops the
  stage cleanly (it resumes later);
* other 4xx (e.g. a prompt over the context length) raise :class:`RequestRejected` with the
  server's message: one record fails, the run goes on;
* the API key comes from the environment (or a file the user names) and is never printed.

The HTTP stack is aiohttp: on a zero-latency stub it sends about 18 times as many requests
a second as httpx did on one core, which keeps the client far from being what limits a
GPU server (``bench/bench_client.py``). aiohttp is imported when the first request is
sent, not when this module is, so ``humpback --help`` and the commands that send nothing
start without it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from humpback_plugin.core import fastjson
from humpback_plugin.core.config import ClientSettings
from humpback_plugin.core.errors import ClientError, ServerUnavailable
from humpback_plugin.core.http import (
    Reply,
    aiohttp_module,
    completion_json,
    describe,
    env_proxy,
    error_message,
    normalize_base_url,
)

if TYPE_CHECKING:
    import aiohttp

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
    # The proxy from the environment (HTTP_PROXY / NO_PROXY), looked up once, not per request.
    proxy: str | None = None


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    per_url: dict[str, int] = field(default_factory=dict)


_LOOK_UP = object()  # _send's proxy: look it up in the environment


class OpenAIClient:
    """Async client for one model served by one or several OpenAI-compatible URLs.

    The HTTP session is opened on the first request, inside the running event loop (so a
    client can be made anywhere, and moved to another process before it is used).
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
    ) -> None:
        if not config.base_urls:
            raise ClientError("no server URL given (use --base-url)")
        self.config = config
        self.endpoints = [
            _Endpoint(url, proxy=env_proxy(url))
            for url in (normalize_base_url(u) for u in config.base_urls)
        ]
        self.model = config.model
        self.concurrency = config.concurrency
        self.max_retries = config.max_retries
        self.retry_deadline = config.retry_deadline_s
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stats = ClientStats()
        self._rr = itertools.count()
        # Concurrency is per URL: more servers, more requests in flight.
        self._slot_count = config.concurrency * len(self.endpoints)
        self._slots = asyncio.Semaphore(self._slot_count)
        self._headers = {"Content-Type": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> OpenAIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            aiohttp = aiohttp_module()
            self._http = aiohttp.ClientSession(
                # timeout_s bounds the wait for the answer (and between its bytes), not the
                # connection set-up, which gets 10 s of its own: as httpx's read and connect
                # timeouts did, so a loaded machine's slow connect is not a timeout.
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=10.0, sock_read=self.config.timeout_s
                ),
                connector=aiohttp.TCPConnector(
                    limit=self._slot_count + 4, limit_per_host=0, ttl_dns_cache=300
                ),
            )
        return self._http

    async def _send(
        self,
        method: str,
        url: str,
        payload: bytes | None = None,
        timeout: float | None = None,
        proxy: str | None | object = _LOOK_UP,
    ) -> Reply:
        """One HTTP exchange, body read in full (a body cut short raises here)."""
        aiohttp = aiohttp_module()
        if proxy is _LOOK_UP:
            proxy = env_proxy(url)
        kwargs: dict[str, Any] = {"headers": self._headers, "proxy": proxy}
        if payload is not None:
            kwargs["data"] = payload
        if timeout is not None:
            kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 10.0))
        async with self._session().request(method, url, **kwargs) as resp:
            return Reply(resp.status, await resp.read())

    @property
    def base_urls(self) -> list[str]:
        return [e.url for e in self.endpoints]

    def _pick(self) -> _Endpoint:
        now = time.monotonic()
        up = [e for e in self.endpoints if e.down_until <= now] or self.endpoints
        if len(up) == 1:
            return up[0]
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
        payload = fastjson.dumps(body)
        aiohttp = aiohttp_module()
        started = time.time()
        first_failure: float | None = None
        last_error = ""
        async with self._slots:
            for attempt in itertools.count():
                endpoint = self._pick()
                endpoint.in_flight += 1
                url = f"{endpoint.url}/{path}"
                try:
                    reply = await self._send("POST", url, payload, proxy=endpoint.proxy)
                    error = self._retryable_status(reply, url)
                    if error is None:
                        data = completion_json(reply.body)
                        if data is not None:
                            endpoint.served += 1
                            return self._generation(data, endpoint.url, params, started, attempt)
                        error = "truncated or invalid JSON body"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    error = describe(exc)
                    if isinstance(exc, aiohttp.ClientConnectorError):
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

    def _retryable_status(self, reply: Reply, url: str) -> str | None:
        """None when the response is usable; a message when it is worth retrying."""
        if reply.status == 429 or reply.status >= 500:
            return f"HTTP {reply.status}"
        if reply.status >= 400:
            self.stats.rejected += 1
            raise RequestRejected(reply.status, error_message(reply), url)
        return None

    def _generation(
        self, data: dict[str, Any], url: str, params: dict[str, Any], started: float, attempt: int
    ) -> Generation:
        raw_choices = data["choices"]
        if len(raw_choices) > 1:
            raw_choices = sorted(raw_choices, key=lambda c: c.get("index", 0))
        choices = []
        for c in raw_choices:
            text = c.get("text")
            if text is None:
                text = (c.get("message") or {}).get("content") or ""
            choices.append(
                Choice(text=text, finish_reason=c.get("finish_reason"), logprobs=c.get("logprobs"))
            )
        usage = {k: v for k, v in (data.get("usage") or {}).items() if isinstance(v, int)}
        stats = self.stats
        stats.requests += 1
        stats.prompt_tokens += usage.get("prompt_tokens", 0)
        stats.completion_tokens += usage.get("completion_tokens", 0)
        stats.per_url[url] = stats.per_url.get(url, 0) + 1
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
        """The model names served at ``url``; :class:`ClientError` when it answers with an
        error status, the transport's own error when it cannot be reached."""
        reply = await self._send("GET", f"{url}/models", timeout=15.0)
        if reply.status in (401, 403):
            raise ClientError(
                f"{url} refused the API key (HTTP {reply.status}); set ${API_KEY_ENV} "
                "or --api-key-file"
            )
        if reply.status >= 400:
            raise ClientError(f"{url}/models answered HTTP {reply.status}")
        try:
            return [m["id"] for m in reply.json().get("data", [])]
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            raise ClientError(f"{url}/models did not answer a model list") from exc

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
        aiohttp = aiohttp_module()
        try:
            reply = await self._send("GET", url, timeout=15.0)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServerUnavailable(f"{url}: {type(exc).__name__}") from exc
        if reply.status >= 400:
            raise RequestRejected(reply.status, error_message(reply), url)
        return reply.json()

    async def _post_json(self, url: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST to a server endpoint outside the OpenAI API; None on 404 (not there)."""
        aiohttp = aiohttp_module()
        payload = fastjson.dumps({"model": self.model, **body})
        try:
            reply = await self._send("POST", url, payload, timeout=60.0)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServerUnavailable(f"{url}: {type(exc).__name__}") from exc
        if reply.status == 404:
            return None
        if reply.status >= 400:
            raise RequestRejected(reply.status, error_message(reply), url)
        return reply.json()

    async def prefix_cache_counters(self) -> dict[str, dict[str, float] | None]:
        """vLLM's prefix-cache query/hit token counters per URL from ``/metrics`` (None where
        a server does not expose them)."""
        return {e.url: await self._prefix_cache_counters(e.url) for e in self.endpoints}

    async def _prefix_cache_counters(self, url: str) -> dict[str, float] | None:
        aiohttp = aiohttp_module()
        try:
            reply = await self._send("GET", f"{url.removesuffix('/v1')}/metrics", timeout=5.0)
        except (aiohttp.ClientError, TimeoutError):
            return None
        if reply.status >= 400:
            return None
        counters = {"queries": 0.0, "hits": 0.0}
        found = False
        for line in reply.text.splitlines():
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
        aiohttp = aiohttp_module()
        report: dict[str, Any] = {}
        for endpoint in self.endpoints:
            try:
                models = await self.list_models(endpoint.url)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ClientError(
                    f"cannot reach {endpoint.url} ({type(exc).__name__}); is the server running? "
                    "Start one with `humpback server start` or pass --base-url"
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
