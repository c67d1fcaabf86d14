"""The client against real local HTTP servers: routing, retries, rejections, provenance."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from humpback_plugin.core.client import (
    ClientConfig,
    OpenAIClient,
    RequestRejected,
    load_api_key,
    normalize_base_url,
)
from humpback_plugin.core.errors import ClientError, ServerUnavailable
from tests.aio_server import dead_url, serve, truncated


def ok_body(text: str = "hi", model: str = "m") -> dict:
    return {
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def run(coro):
    return asyncio.run(coro)


def make_client(urls, backoff_base=0.001, **kw) -> OpenAIClient:
    config = ClientConfig(base_urls=list(urls), model="m", **kw)
    return OpenAIClient(config, backoff_base=backoff_base)


def test_normalize_base_url():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"


def test_completion_records_params_and_usage():
    seen = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path, json.loads(await request.read())))
        return web.json_response(ok_body("out"))

    async def go():
        async with serve(handler) as url, make_client([url]) as client:
            return url, await client.completion("p", temperature=0.7, top_p=0.9, seed=3)

    url, gen = run(go())
    assert gen.text == "out"
    assert gen.params == {"temperature": 0.7, "top_p": 0.9, "seed": 3}
    assert gen.usage["completion_tokens"] == 1
    path, body = seen[0]
    assert path == "/v1/completions"
    assert body["model"] == "m" and body["prompt"] == "p"
    prov = gen.provenance("abc")
    assert prov["server_url"] == f"{url}/v1" and prov["template_hash"] == "abc"


def test_chat_reads_message_content():
    async def handler(request):
        assert request.path == "/v1/chat/completions"
        body = {"choices": [{"index": 0, "message": {"content": "yo"}, "finish_reason": "length"}]}
        return web.json_response(body)

    async def go():
        async with serve(handler) as url, make_client([url]) as client:
            return await client.chat([{"role": "user", "content": "x"}])

    gen = run(go())
    assert gen.text == "yo" and gen.choices[0].finish_reason == "length"


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_retries_transient_status_then_succeeds(status):
    calls = {"n": 0}

    async def handler(request):
        calls["n"] += 1
        if calls["n"] < 3:
            return web.Response(status=status, text="busy")
        return web.json_response(ok_body())

    async def go():
        async with serve(handler) as url, make_client([url]) as client:
            gen = await client.completion("p")
            return gen, client.stats.retries

    gen, retries = run(go())
    assert gen.attempts == 3 and retries == 2


@pytest.mark.parametrize("fault", ["invalid_json", "cut_short"])
def test_truncated_json_body_is_retried(fault):
    calls = {"n": 0}

    async def handler(request):
        calls["n"] += 1
        if calls["n"] == 1:
            if fault == "invalid_json":  # complete HTTP answer, broken JSON
                return web.Response(body=b'{"choices": [{"te', content_type="application/json")
            return await truncated(request, json.dumps(ok_body()).encode())
        return web.json_response(ok_body())

    async def go():
        async with serve(handler) as url, make_client([url]) as client:
            return await client.completion("p")

    assert run(go()).attempts == 2


def test_connection_errors_exhaust_into_server_unavailable():
    async def go():
        async with make_client([dead_url()], max_retries=3) as client:
            await client.completion("p")

    with pytest.raises(ServerUnavailable, match="4 attempts"):
        run(go())


def test_slow_answer_times_out_and_is_retried():
    calls = {"n": 0}

    async def handler(request):
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.sleep(1.0)
        return web.json_response(ok_body())

    async def go():
        async with serve(handler) as url, make_client([url], timeout_s=0.2) as client:
            return await client.completion("p"), client.stats.retries

    gen, retries = run(go())
    assert gen.attempts == 2 and retries == 1


def test_context_length_400_is_a_rejection_with_the_server_message():
    msg = "This model's maximum context length is 2048 tokens. However, you requested 9000"

    async def handler(request):
        body = {"error": {"message": msg, "type": "BadRequestError"}}
        return web.json_response(body, status=400)

    async def go():
        async with serve(handler) as url, make_client([url]) as client:
            try:
                await client.completion("p")
            finally:
                assert client.stats.rejected == 1 and client.stats.retries == 0

    with pytest.raises(RequestRejected) as info:
        run(go())
    assert info.value.status_code == 400 and "maximum context length" in info.value.message
    assert info.value.server_url.endswith("/v1/completions")


def test_guided_fields_are_refused():
    async def handler(request):  # pragma: no cover - never reached
        return web.json_response(ok_body())

    async def go():
        async with serve(handler) as url, make_client([url]) as client:
            await client.completion("p", guided_choice=["1", "2"])

    with pytest.raises(ClientError, match="structured_outputs"):
        run(go())


def test_load_is_spread_over_several_urls():
    hits: dict[str, int] = {}

    def counting(name):
        async def slow(request):
            hits[name] = hits.get(name, 0) + 1
            await asyncio.sleep(0.01)
            return web.json_response(ok_body())

        return slow

    async def go():
        async with serve(counting("a")) as a, serve(counting("b")) as b, serve(counting("c")) as c:
            client = make_client([a, b, c])
            async with client:
                await asyncio.gather(*(client.completion(str(i)) for i in range(30)))
            return client.stats.per_url, [a, b, c]

    per_url, urls = run(go())
    assert hits == {"a": 10, "b": 10, "c": 10}
    assert per_url == {f"{u}/v1": 10 for u in urls}


def test_per_url_concurrency_is_the_bound():
    """concurrency=3 with two URLs: at most 6 requests in flight, 3 on each."""
    state = {"now": 0, "peak": 0}

    async def handler(request):
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.02)
        state["now"] -= 1
        return web.json_response(ok_body())

    async def go():
        async with (
            serve(handler) as a,
            serve(handler) as b,
            make_client([a, b], concurrency=3) as cl,
        ):
            await asyncio.gather(*(cl.completion(str(i)) for i in range(30)))

    run(go())
    assert state["peak"] == 6


def test_dead_url_is_routed_around():
    async def handler(request):
        return web.json_response(ok_body())

    async def go():
        async with serve(handler) as live:
            async with make_client([dead_url(), live]) as client:
                gens = [await client.completion(str(i)) for i in range(5)]
            return live, gens

    live, gens = run(go())
    assert all(g.server_url == f"{live}/v1" for g in gens)


def test_preflight_names_wrong_model_and_refused_key():
    def models(names, status=200):
        async def handler(request):
            if request.path.endswith("/models"):
                return web.json_response({"data": [{"id": n} for n in names]}, status=status)
            return web.json_response(ok_body())

        return handler

    async def go(handler):
        async with serve(handler) as url, make_client([url]) as client:
            return await client.preflight()

    assert "test_completion" in run(go(models(["m"])))
    with pytest.raises(ClientError, match="'m' is not served.*serves: other"):
        run(go(models(["other"])))
    with pytest.raises(ClientError, match="refused the API key"):
        run(go(models([], status=401)))
    with pytest.raises(ClientError, match="/models answered HTTP 500"):
        run(go(models([], status=500)))


def test_preflight_unreachable_is_clear():
    url = dead_url()

    async def go():
        async with make_client([url]) as client:
            await client.preflight()

    with pytest.raises(ClientError, match=f"cannot reach {url}/v1"):
        run(go())


def test_prefix_cache_counters_read_from_metrics():
    metrics = (
        "# HELP vllm:prefix_cache_queries_total ...\n"
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 120.0\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 90.0\n'
    )

    async def handler(request):
        if request.path == "/metrics":
            return web.Response(text=metrics)
        return web.Response(status=404)

    async def go():
        async with serve(handler) as url:
            async with make_client([url]) as client:
                counters = await client.prefix_cache_counters()
            async with make_client([dead_url()]) as client:
                missing = await client.prefix_cache_counters()
            return url, counters, missing

    url, counters, missing = run(go())
    assert counters == {f"{url}/v1": {"queries": 120.0, "hits": 90.0}}
    assert list(missing.values()) == [None]


def test_api_key_sent_but_never_in_errors(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-123"
    keyfile = tmp_path / "key"
    keyfile.write_text(secret + "\n")
    assert load_api_key(keyfile) == secret
    monkeypatch.setenv("HUMPBACK_API_KEY", "from-env")
    assert load_api_key() == "from-env"
    auth = []

    async def handler(request):
        auth.append(request.headers["authorization"])
        return web.Response(status=500, text="boom")

    async def go():
        async with serve(handler) as url:
            config = ClientConfig(base_urls=[url], model="m", api_key=secret, max_retries=1)
            async with OpenAIClient(config, backoff_base=0.001) as client:
                assert secret not in repr(client.config)
                await client.completion("p")

    with pytest.raises(ServerUnavailable) as info:
        run(go())
    assert auth[0] == f"Bearer {secret}"
    assert secret not in str(info.value)


def test_proxy_from_the_environment_is_honoured(monkeypatch):
    """HTTP_PROXY sends requests through the proxy; NO_PROXY hosts go direct (as httpx did)."""
    proxied = []

    async def proxy(request):
        proxied.append(str(request.url))
        return web.json_response(ok_body("via proxy"))

    async def direct(request):
        return web.json_response(ok_body("direct"))

    async def go():
        async with serve(proxy) as proxy_url, serve(direct) as url:
            monkeypatch.setenv("HTTP_PROXY", proxy_url)
            monkeypatch.setenv("NO_PROXY", "")
            monkeypatch.delenv("no_proxy", raising=False)
            monkeypatch.delenv("http_proxy", raising=False)
            async with make_client([url]) as client:
                via = (await client.completion("p")).text
            monkeypatch.setenv("NO_PROXY", "127.0.0.1")
            async with make_client([url]) as client:
                straight = (await client.completion("p")).text
            return url, via, straight

    url, via, straight = run(go())
    assert via == "via proxy" and proxied == [f"{url}/v1/completions"]
    assert straight == "direct"
