"""The record store and the stage runner: resume after any interruption, SIGKILL included."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web

from humpback_plugin.core.client import ClientConfig, OpenAIClient
from humpback_plugin.core.errors import InputError, StageInterrupted
from humpback_plugin.core.jsonl_io import atomic_writer, iter_jsonl, write_jsonl_atomic
from humpback_plugin.core.runner import run_stage
from humpback_plugin.core.store import RecordStore
from tests.aio_server import dead_url, serve


def test_store_appends_and_skips_known_keys(tmp_path):
    path = tmp_path / "s.jsonl"
    with RecordStore(path) as store:
        store.append({"key": "a", "v": 1})
        store.append({"key": "b", "v": 2})
        store.append({"key": "a", "v": 3})  # already there: ignored
    store = RecordStore(path)
    assert len(store) == 2 and "a" in store and "c" not in store
    assert [r["v"] for r in store] == [1, 2]
    assert [r["v"] for r in store.ordered(["b", "x", "a"])] == [2, 1]
    assert store.get("b") == {"key": "b", "v": 2}


def test_store_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"key": "a"}\n{"key": "b"}\n{"key": "c", "tex')
    store = RecordStore(path)
    assert store.keys() == {"a", "b"}
    assert store.recovered_bytes == len(b'{"key": "c", "tex')
    store.append({"key": "c"})
    store.close()
    assert [json.loads(x)["key"] for x in path.read_text().splitlines()] == ["a", "b", "c"]


def test_atomic_writer_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError), atomic_writer(target) as fh:
        fh.write("partial\n")
        raise RuntimeError("crash halfway")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_jsonl_atomic(target, [{"a": 1}])
    assert target.read_text() == '{"a":1}\n'


def test_iter_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": \n[1]\n{"b": "\xff"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:3: malformed JSON"):
        list(iter_jsonl(path))
    errors = []
    rows = list(iter_jsonl(path, on_error=lambda f, line, msg: errors.append((line, msg))))
    assert rows == [(1, {"a": 1})]
    assert [e[0] for e in errors] == [3, 4, 5]
    assert "expected a JSON object" in errors[1][1] and "not UTF-8" in errors[2][1]
    with pytest.raises(InputError, match="no such file"):
        list(iter_jsonl(tmp_path / "missing.jsonl"))


def _echo_handler(delay: float = 0.0, fail_ids: tuple[str, ...] = ()):
    async def handler(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        await asyncio.sleep(delay)
        if body["prompt"] in fail_ids:
            return web.json_response({"error": {"message": "context length exceeded"}}, status=400)
        text = body["prompt"].upper()
        return web.json_response({"choices": [{"index": 0, "text": text}]})

    return handler


async def _echo_stage(
    tmp: Path,
    inputs: list[str],
    delay: float = 0.0,
    fail_ids: tuple[str, ...] = (),
    server_gone: bool = False,
):
    """The echo stage against a real local server (or, ``server_gone``, a refused port)."""
    async with contextlib.AsyncExitStack() as stack:
        if server_gone:
            config = ClientConfig(base_urls=[dead_url()], model="m", max_retries=2)
            client = OpenAIClient(config, backoff_base=0.001)
        else:
            url = await stack.enter_async_context(serve(_echo_handler(delay, fail_ids)))
            client = OpenAIClient(ClientConfig(base_urls=[url], model="m"))
        await stack.enter_async_context(client)
        return await _run_echo(tmp, inputs, client)


async def _run_echo(tmp: Path, inputs: list[str], client: OpenAIClient):
    store = RecordStore(tmp / "out.jsonl")
    failures = RecordStore(tmp / "failures.jsonl")

    async def work(item: str, key: str) -> list[dict]:
        gen = await client.completion(item)
        return [{"input": item, "output": gen.text}]

    try:
        return await run_stage(
            name="echo",
            inputs=inputs,
            key_of=lambda s: f"k-{s}",
            input_id_of=lambda s: s,
            work=work,
            store=store,
            failures=failures,
            window=8,
            show_progress=False,
        )
    finally:
        store.close()
        failures.close()


def test_stage_records_rejections_and_goes_on(tmp_path):
    inputs = [f"x{i}" for i in range(20)]
    stats = asyncio.run(_echo_stage(tmp_path, inputs, fail_ids=("x3", "x7")))
    assert stats.records_written == 18 and stats.failed == 2
    assert stats.failure_reasons == {"http_400": 2}
    failures = [json.loads(x) for x in (tmp_path / "failures.jsonl").read_text().splitlines()]
    assert {f["input_id"] for f in failures} == {"x3", "x7"}
    assert "context length" in failures[0]["message"]
    again = asyncio.run(_echo_stage(tmp_path, inputs))
    assert again.already_done == 20 and again.processed == 0


def test_stage_stops_cleanly_when_the_server_is_gone(tmp_path):
    with pytest.raises(StageInterrupted, match="re-run the same command to resume"):
        asyncio.run(_echo_stage(tmp_path, ["a", "b", "c"], server_gone=True))
    stats = asyncio.run(_echo_stage(tmp_path, ["a", "b", "c"]))
    assert stats.processed == 3


KILL_SCRIPT = """
import asyncio, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.test_store import _echo_stage
inputs = [f"item-{{i:04d}}" for i in range({n})]
asyncio.run(_echo_stage(Path({tmp!r}), inputs, delay=0.02))
"""


@pytest.mark.parametrize("kill_after", [5, 60, 150])
def test_sigkill_mid_stage_then_resume_loses_and_doubles_nothing(tmp_path, kill_after):
    n = 200
    root = str(Path(__file__).resolve().parents[1])
    script = KILL_SCRIPT.format(root=root, n=n, tmp=str(tmp_path))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        lines = out.read_bytes().count(b"\n") if out.exists() else 0
        if lines >= kill_after or proc.poll() is not None:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written_before = RecordStore(out)
    assert 0 < len(written_before) < n, "the kill must land mid-stage"
    written_before.close()
    stats = asyncio.run(_echo_stage(tmp_path, [f"item-{i:04d}" for i in range(n)]))
    assert stats.already_done + stats.processed == n
    keys = [json.loads(x)["key"] for x in out.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == n
    assert all(
        json.loads(x)["output"] == json.loads(x)["input"].upper()
        for x in out.read_text().splitlines()
    )


def test_content_hash_fast_path_is_the_json_hash():
    """Keys made by earlier versions stay valid: the orjson path hashes the same bytes."""
    import hashlib
    import random

    from humpback_plugin.core.hashing import content_hash

    def by_json(*parts):
        blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    rng = random.Random(0)
    alphabet = [chr(i) for i in range(0x250)] + ["\u2028", "\U0001f600", '"', "\\", "\x7f"]
    for _ in range(3000):
        parts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
                 for _ in range(rng.randint(1, 3))]  # fmt: skip
        assert content_hash(*parts) == by_json(*parts)
    assert content_hash("a", 0.00001, {"b": 1}) == by_json("a", 0.00001, {"b": 1})
    for fn in (content_hash, by_json):  # a lone surrogate fails the same way on both paths
        with pytest.raises(UnicodeEncodeError):
            fn("lone \ud800")
