"""The stages' event loop: uvloop where installed, asyncio's when $HUMPBACK_EVENT_LOOP says so."""

from __future__ import annotations

import asyncio

import pytest

from humpback_plugin.core import event_loop
from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import CurateConfig
from humpback_plugin.stages.curate import stage
from tests.stub_openai import StubOpenAI

uvloop = pytest.importorskip("uvloop")


async def loop_type() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_stages_run_on_uvloop_by_default(monkeypatch):
    monkeypatch.delenv(event_loop.EVENT_LOOP_ENV, raising=False)
    assert issubclass(event_loop.run(loop_type()), uvloop.Loop)


def test_the_standard_loop_on_request(monkeypatch):
    monkeypatch.setenv(event_loop.EVENT_LOOP_ENV, "asyncio")
    kind = event_loop.run(loop_type())
    assert not issubclass(kind, uvloop.Loop)
    assert issubclass(kind, asyncio.BaseEventLoop)


def test_a_stage_runs_on_the_chosen_loop(monkeypatch, tmp_path):
    """curate() itself goes through event_loop.run (a stage left on asyncio.run would not)."""
    seen = []
    real = stage.curate_async

    async def spy(*args, **kwargs):
        seen.append(type(asyncio.get_running_loop()))
        return await real(*args, **kwargs)

    monkeypatch.setattr(stage, "curate_async", spy)
    candidates = tmp_path / "c.jsonl"
    candidates.write_text('{"id": "c0", "instruction": "Why?", "output": "Because."}\n')
    with StubOpenAI() as stub:
        stage.curate(
            candidates, tmp_path / "s.jsonl",
            client_config=ClientConfig(base_urls=[stub.base_url], model="stub"),
            settings=CurateConfig(canaries=False), show_progress=False,
        )  # fmt: skip
    assert len(seen) == 1 and issubclass(seen[0], uvloop.Loop)
