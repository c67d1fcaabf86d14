"""A small OpenAI-compatible HTTP server on 127.0.0.1 for fast tests with fault injection.

Usage::

    from tests.stub_openai import StubOpenAI, reply

    def handler(req):
        if "Score" in req.prompt_text:
            return reply("Looks fine.\\nScore: 4")
        return reply("What is X?")

    with StubOpenAI(handler) as stub:
        client = OpenAIClient(stub.base_url, "stub")
        ...
        assert stub.requests[0].body["temperature"] == 0.7

A handler gets a :class:`StubRequest` and returns a :class:`StubResponse` (``reply(...)``
builds a normal completion; ``StubResponse(status=400, json={...})`` an error;
``delay``, ``truncate`` and ``reset`` inject faults). ``handler`` may also be a list of
responses, consumed in order (the last one repeats). ``GET /v1/models`` lists
``models``, each with the ``root`` (its weights) given in ``roots`` (change
``stub.roots`` to swap the weights behind a name); ``GET /metrics`` returns
``metrics_text`` (a string or a function returning one).

With ``chat_template`` (jinja text) the stub answers vLLM's ``POST /tokenize`` (a
``prompt``, or ``messages`` rendered with that template and ``special_tokens``) and
``POST /detokenize`` with a character tokenizer (a special token is one id); without
it those paths answer 404, as a server that is not vLLM.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from humpback_plugin.core.chat_template import TrainingTemplate

# A ChatML template with a default system turn, as SmolLM2's own: what a server started
# without --chat-template applies to an adapter trained with [INST] (tests of the check).
CHATML_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass
class StubRequest:
    method: str
    path: str
    body: dict[str, Any]

    @property
    def is_chat(self) -> bool:
        return self.path.endswith("/chat/completions")

    @property
    def prompt_text(self) -> str:
        """The prompt, or all chat turns joined: what a handler usually matches on."""
        if "messages" in self.body:
            return "\n".join(str(m.get("content", "")) for m in self.body["messages"])
        prompt = self.body.get("prompt", "")
        return prompt if isinstance(prompt, str) else "\n".join(prompt)


@dataclass
class StubResponse:
    status: int = 200
    json: Any = None
    body: bytes | None = None  # raw body, overrides json
    delay: float = 0.0  # seconds before answering
    truncate: bool = False  # announce the full length, send half, close
    reset: bool = False  # close the connection with a TCP reset, no answer
    texts: list[str] | None = None  # filled into a completion by the server (see reply)
    finish_reason: str = "stop"
    logprobs: list[Any] | None = None  # per choice, passed through as given
    usage: dict[str, int] | None = None


def reply(
    *texts: str,
    finish_reason: str = "stop",
    logprobs: list[Any] | None = None,
    usage: dict[str, int] | None = None,
    delay: float = 0.0,
) -> StubResponse:
    """A successful completion; with one text and ``n`` > 1 the text is repeated n times."""
    return StubResponse(
        texts=list(texts), finish_reason=finish_reason, logprobs=logprobs, usage=usage, delay=delay
    )


def error(status: int, message: str, delay: float = 0.0) -> StubResponse:
    return StubResponse(
        status=status,
        json={"error": {"message": message, "type": "BadRequestError", "code": status}},
        delay=delay,
    )


def chat_logprobs(top: dict[str, float], token: str | None = None) -> dict[str, Any]:
    """The chat endpoint's logprobs shape for one generated token."""
    token = token or max(top, key=top.get)
    return {
        "content": [
            {
                "token": token,
                "logprob": top.get(token, -9.0),
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()],
            }
        ]
    }


Handler = Callable[[StubRequest], StubResponse]


class StubOpenAI:
    def __init__(
        self,
        handler: Handler | list[StubResponse] | None = None,
        models: tuple[str, ...] = ("stub",),
        metrics_text: str | Callable[[], str] | None = None,
        roots: dict[str, str] | None = None,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        if handler is None:
            handler = lambda req: reply("stub answer")  # noqa: E731
        elif isinstance(handler, list):
            script = list(handler)
            lock = threading.Lock()

            def scripted(req: StubRequest, _script=script) -> StubResponse:
                with lock:
                    return _script.pop(0) if len(_script) > 1 else _script[0]

            handler = scripted
        self.handler: Handler = handler
        self.models = models
        self.metrics_text = metrics_text
        self.roots = dict(roots or {})
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self.requests: list[StubRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def generation_requests(self) -> list[StubRequest]:
        """Requests to the completion endpoints, without preflight's test completion."""
        return [
            r
            for r in self.requests
            if r.method == "POST"
            and r.path.endswith("/completions")
            and r.body.get("prompt") != "Hello"
        ]

    # -- vLLM's tokenizer endpoints (a character tokenizer)

    def _token_ids(self, text: str) -> list[int]:
        specials = sorted(set(self.special_tokens.values()), key=len, reverse=True)
        ids, i = [], 0
        while i < len(text):
            hit = next((t for t in specials if t and text.startswith(t, i)), None)
            if hit:
                ids.append(100 + sorted(set(self.special_tokens.values())).index(hit))
                i += len(hit)
            else:
                ids.append(1000 + ord(text[i]))
                i += 1
        return ids

    def _text_of(self, ids: list[int]) -> str:
        specials = sorted(set(self.special_tokens.values()))
        return "".join(specials[t - 100] if t < 1000 else chr(t - 1000) for t in ids)

    def _tokenizer_endpoint(self, req: StubRequest) -> tuple[int, Any]:
        if self.chat_template is None:
            return 404, {"detail": "Not Found"}
        body = req.body
        if req.path == "/detokenize":
            return 200, {"prompt": self._text_of(body["tokens"])}
        if "messages" in body:
            template = TrainingTemplate(self.chat_template, "stub", self.special_tokens)
            text = template.render(
                body["messages"],
                add_generation_prompt=body.get("add_generation_prompt", True),
                continue_final_message=body.get("continue_final_message", False),
            )
            add_bos = body.get("add_special_tokens", False)
        else:
            text, add_bos = body["prompt"], body.get("add_special_tokens", True)
        bos = self.special_tokens.get("bos_token")
        ids = (self._token_ids(bos) if add_bos and bos else []) + self._token_ids(text)
        return 200, {"count": len(ids), "max_model_len": 4096, "tokens": ids}

    # -- lifecycle

    def start(self) -> StubOpenAI:
        stub = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                stub._record(StubRequest("GET", self.path, {}))
                if self.path.rstrip("/") == "/v1/models":
                    data = {
                        "object": "list",
                        "data": [
                            {"id": m, "object": "model", "root": stub.roots.get(m), "parent": None}
                            for m in stub.models
                        ],
                    }
                    self._send(200, json.dumps(data).encode())
                elif self.path == "/metrics" and stub.metrics_text is not None:
                    text = stub.metrics_text
                    text = text() if callable(text) else text
                    self._send(200, text.encode(), "text/plain")
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode("utf-8", "replace")}
                req = StubRequest("POST", self.path, body)
                stub._record(req)
                if self.path in ("/tokenize", "/detokenize"):
                    try:
                        status, data = stub._tokenizer_endpoint(req)
                    except Exception as exc:  # as vLLM: a template error is a 400
                        status, data = 400, {"error": {"message": str(exc), "code": 400}}
                    self._send(status, json.dumps(data).encode())
                    return
                try:
                    resp = stub.handler(req)
                except Exception as exc:  # a failing assertion in a handler: answer, do not hang
                    resp = StubResponse(status=599, json={"error": {"message": repr(exc)}})
                if resp.delay:
                    time.sleep(resp.delay)
                if resp.reset:
                    # SO_LINGER 0: close() sends RST instead of FIN.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.connection.close()
                    self.close_connection = True
                    return
                payload = resp.body
                if payload is None:
                    data = resp.json if resp.json is not None else stub._completion(req, resp)
                    payload = json.dumps(data).encode()
                if resp.truncate:
                    self.send_response(resp.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(resp.status, payload)

            def _send(self, status: int, payload: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> StubOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._port is not None, "start() the stub first"
        return f"http://127.0.0.1:{self._port}/v1"

    # -- internals

    def _record(self, req: StubRequest) -> None:
        with self._lock:
            self.requests.append(req)

    @staticmethod
    def _completion(req: StubRequest, resp: StubResponse) -> dict[str, Any]:
        n = int(req.body.get("n") or 1)
        texts = resp.texts or ["stub answer"]
        if len(texts) == 1 and n > 1:
            texts = texts * n
        choices = []
        for i, text in enumerate(texts):
            logprobs = resp.logprobs[i] if resp.logprobs and i < len(resp.logprobs) else None
            choice: dict[str, Any] = {
                "index": i,
                "finish_reason": resp.finish_reason,
                "logprobs": logprobs,
            }
            if req.is_chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        completion_tokens = sum(max(1, len(t.split())) for t in texts)
        usage = resp.usage or {
            "prompt_tokens": max(1, len(req.prompt_text.split())),
            "completion_tokens": completion_tokens,
        }
        usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
        return {
            "id": "cmpl-stub",
            "object": "chat.completion" if req.is_chat else "text_completion",
            "model": req.body.get("model", "stub"),
            "choices": choices,
            "usage": usage,
        }
