"""The client against scripted transports: routing, retries, rejections, provenance."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from humpback_plugin.core.client import (
    ClientConfig,
    OpenAIClient,
    RequestRejected,
    load_api_key,
    normalize_base_url,
)
from humpback_plugin.core.errors import ClientError, ServerUnavailable


def ok_body(text: str = "hi", model: str = "m") -> dict:
    return {
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def run(coro):
    return asyncio.run(coro)


def make_client(handler, urls=("http://a:1",), backoff_base=0.001, **kw) -> OpenAIClient:
    config = ClientConfig(base_urls=list(urls), model="m", **kw)
    return OpenAIClient(config, transport=httpx.MockTransport(handler), backoff_base=backoff_base)


def test_normalize_base_url():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"


def test_completion_records_params_and_usage():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=ok_body("out"))

    async def go():
        async with make_client(handler) as client:
            return await client.completion("p", temperature=0.7, top_p=0.9, seed=3)

    gen = run(go())
    assert gen.text == "out"
    assert gen.params == {"temperature": 0.7, "top_p": 0.9, "seed": 3}
    assert gen.usage["completion_tokens"] == 1
    assert seen[0]["model"] == "m" and seen[0]["prompt"] == "p"
    prov = gen.provenance("abc")
    assert prov["server_url"] == "http://a:1/v1" and prov["template_hash"] == "abc"


def test_chat_reads_message_content():
    def handler(request):
        body = {"choices": [{"index": 0, "message": {"content": "yo"}, "finish_reason": "length"}]}
        return httpx.Response(200, json=body)

    async def go():
        async with make_client(handler) as client:
            return await client.chat([{"role": "user", "content": "x"}])

    gen = run(go())
    assert gen.text == "yo" and gen.choices[0].finish_reason == "length"


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_retries_transient_status_then_succeeds(status):
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        if calls["n"] < 3:
            return httpx.Response(status, text="busy")
        return httpx.Response(200, json=ok_body())

    async def go():
        async with make_client(handler) as client:
            gen = await client.completion("p")
            return gen, client.stats.retries

    gen, retries = run(go())
    assert gen.attempts == 3 and retries == 2


def test_truncated_json_body_is_retried():
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(200, content=b'{"choices": [{"te')
        return httpx.Response(200, json=ok_body())

    async def go():
        async with make_client(handler) as client:
            return await client.completion("p")

    assert run(go()).attempts == 2


def test_connection_errors_exhaust_into_server_unavailable():
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    async def go():
        async with make_client(handler, max_retries=3) as client:
            await client.completion("p")

    with pytest.raises(ServerUnavailable, match="4 attempts"):
        run(go())


def test_context_length_400_is_a_rejection_with_the_server_message():
    msg = "This model's maximum context length is 2048 tokens. However, you requested 9000"

    def handler(request):
        return httpx.Response(400, json={"error": {"message": msg, "type": "BadRequestError"}})

    async def go():
        async with make_client(handler) as client:
            await client.completion("p")

    with pytest.raises(RequestRejected) as info:
        run(go())
    assert info.value.status_code == 400 and "maximum context length" in info.value.message


def test_guided_fields_are_refused():
    async def go():
        async with make_client(lambda r: httpx.Response(200, json=ok_body())) as client:
            await client.completion("p", guided_choice=["1", "2"])

    with pytest.raises(ClientError, match="structured_outputs"):
        run(go())


def test_load_is_spread_over_several_urls():
    hosts = []

    async def slow(request):
        hosts.append(request.url.host)
        await asyncio.sleep(0.01)
        return httpx.Response(200, json=ok_body())

    async def go():
        config = ClientConfig(base_urls=["http://a:1", "http://b:1", "http://c:1"], model="m")
        client = OpenAIClient(config, transport=httpx.MockTransport(slow))
        async with client:
            await asyncio.gather(*(client.completion(str(i)) for i in range(30)))

    run(go())
    assert {h: hosts.count(h) for h in set(hosts)} == {"a": 10, "b": 10, "c": 10}


def test_dead_url_is_routed_around():
    def handler(request):
        if request.url.host == "dead":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=ok_body())

    async def go():
        async with make_client(handler, urls=("http://dead:1", "http://live:1")) as client:
            gens = [await client.completion(str(i)) for i in range(5)]
            return gens

    assert all(g.server_url == "http://live:1/v1" for g in run(go()))


def test_preflight_names_wrong_model_and_refused_key():
    def models(names, status=200):
        def handler(request):
            if request.url.path.endswith("/models"):
                return httpx.Response(status, json={"data": [{"id": n} for n in names]})
            return httpx.Response(200, json=ok_body())

        return handler

    async def go(handler):
        async with make_client(handler) as client:
            return await client.preflight()

    assert "test_completion" in run(go(models(["m"])))
    with pytest.raises(ClientError, match="'m' is not served.*serves: other"):
        run(go(models(["other"])))
    with pytest.raises(ClientError, match="refused the API key"):
        run(go(models([], status=401)))


def test_preflight_unreachable_is_clear():
    def handler(request):
        raise httpx.ConnectError("refused", request=request)

    async def go():
        async with make_client(handler) as client:
            await client.preflight()

    with pytest.raises(ClientError, match="cannot reach http://a:1/v1"):
        run(go())


def test_api_key_sent_but_never_in_errors(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-123"
    keyfile = tmp_path / "key"
    keyfile.write_text(secret + "\n")
    assert load_api_key(keyfile) == secret
    monkeypatch.setenv("HUMPBACK_API_KEY", "from-env")
    assert load_api_key() == "from-env"
    auth = []

    def handler(request):
        auth.append(request.headers["authorization"])
        return httpx.Response(500, text="boom")

    async def go():
        config = ClientConfig(base_urls=["http://a:1"], model="m", api_key=secret, max_retries=1)
        client = OpenAIClient(config, transport=httpx.MockTransport(handler), backoff_base=0.001)
        async with client:
            await client.completion("p")

    with pytest.raises(ServerUnavailable) as info:
        run(go())
    assert auth[0] == f"Bearer {secret}"
    assert secret not in str(info.value)
