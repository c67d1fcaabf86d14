"""Embedded serving of a run's adapters: one vLLM for the run, later adapters loaded at
runtime, a restart only when the server cannot take them. The server module is replaced
by a recorder here; the real path runs in test_demo_real.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from humpback_plugin.vllm import serving
from humpback_plugin.vllm.server import ServerHandle


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.started: list[tuple[str, Path]] = []  # (model, state folder) of each start
        self.stopped: list[Path] = []

    def start_server(self, **kwargs):
        self.calls.append(("start", sorted(n for n, _ in kwargs["loras"]), kwargs["max_loras"]))
        self.started.append((kwargs.get("served_model_name", "base"), kwargs["state_dir"]))
        return ServerHandle(
            base_url="http://127.0.0.1:1/v1", model="base", pid=1, port=1, host="127.0.0.1",
            served_model_names=("base",), log_file=Path("log"), state_dir=Path("s"),
            started_at=0.0,
        )  # fmt: skip

    def stop_server(self, **kwargs):
        self.calls.append(("stop",))
        self.stopped.append(kwargs["state_dir"])
        return True

    def pause_server(self, *, state_dir, resume=False):
        self.calls.append(("resume" if resume else "pause", state_dir))
        return True

    def load_lora(self, base_url, name, path):
        self.calls.append(("load", name))


def adapter(tmp_path: Path, name: str, rank: int = 16) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"r": rank}))
    return path


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    rec = Recorder()
    for name in ("start_server", "stop_server", "load_lora", "pause_server"):
        monkeypatch.setattr(serving.server, name, getattr(rec, name))
    return rec


def test_later_adapters_are_loaded_into_the_running_server(tmp_path, recorder):
    run = serving.EmbeddedServing(tmp_path / "state", max_adapters=4)
    adapters = {"backward": adapter(tmp_path, "backward")}
    assert run.ensure("backward", adapters, tmp_path / "backward") == (
        ["http://127.0.0.1:1/v1"], "backward"
    )  # fmt: skip
    for role in ("m0", "m1", "m2"):
        adapters[role] = adapter(tmp_path, role)
        assert run.ensure(role, dict(adapters), tmp_path / role)[1] == role
    # The base model (the evaluation's judge) comes from the same server.
    assert run.ensure("judge", dict(adapters), None)[1] == "base"
    starts = [c for c in recorder.calls if c[0] == "start"]
    assert starts == [("start", ["backward"], 4)]
    assert [c for c in recorder.calls if c[0] == "load"] == [
        ("load", r) for r in ("m0", "m1", "m2")
    ]


def test_no_room_or_a_higher_rank_restarts_with_the_full_set(tmp_path, recorder):
    run = serving.EmbeddedServing(tmp_path / "state", max_adapters=2)
    adapters = {"backward": adapter(tmp_path, "backward"), "m0": adapter(tmp_path, "m0")}
    run.ensure("m0", dict(adapters), tmp_path / "m0")
    adapters["m1"] = adapter(tmp_path, "m1")  # a third adapter: no room
    run.ensure("m1", dict(adapters), tmp_path / "m1")
    adapters["m2"] = adapter(tmp_path, "m2", rank=64)  # room (3 slots now) but rank 64 > 16
    run.ensure("m2", dict(adapters), tmp_path / "m2")
    starts = [c for c in recorder.calls if c[0] == "start"]
    assert starts == [
        ("start", ["backward", "m0"], 2),
        ("start", ["backward", "m0", "m1"], 3),
        ("start", ["backward", "m0", "m1", "m2"], 4),
    ]
    assert not [c for c in recorder.calls if c[0] == "load"]


def full_model(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def test_full_fine_tunes_restart_per_model_and_the_held_one_is_asked_first(tmp_path, recorder):
    run = serving.EmbeddedServing(tmp_path / "state")
    models = {role: full_model(tmp_path, role) for role in ("m0", "m1", "m2")}
    assert run.serve_order(["m0", "m1", "m2"]) == ["m0", "m1", "m2"]  # nothing held
    assert run.ensure("m1", {}, models["m1"])[1] == "m1"
    assert run.full_role == "m1"
    # The held model first, the others in their order: one restart fewer.
    assert run.serve_order(["m0", "m1", "m2"]) == ["m1", "m0", "m2"]
    for role in run.serve_order(["m0", "m1", "m2"]):
        run.ensure(role, {}, models[role])
    assert len([c for c in recorder.calls if c[0] == "start"]) == 3  # m1, m0, m2
    run.ensure("judge", {}, None)  # the base model: no full fine-tune held
    assert run.full_role is None and run.serve_order(["m2", "m0"]) == ["m2", "m0"]


def test_kept_servers_serve_their_model_again_without_a_start(tmp_path, recorder):
    state = tmp_path / "state"
    run = serving.EmbeddedServing(state, max_servers=3)
    models = {role: full_model(tmp_path, role) for role in ("backward", "m0", "m1", "m2")}
    for role in ("backward", "m0", "m1"):  # augment, curate_1, curate_2
        run.ensure(role, {}, models[role])
    # Three servers up, each in its own state folder; none stopped but the leftovers check.
    assert [m for m, _ in recorder.started] == ["backward", "m0", "m1"]
    assert len({d for _, d in recorder.started}) == 3
    assert recorder.stopped == [state]  # a killed run's leftover, before the first start
    # The evaluation: the held model, then the kept ones (most recent first), then new ones.
    assert run.serve_order(["m0", "m1", "m2"]) == ["m1", "m0", "m2"]
    assert run.ensure("m0", {}, models["m0"])[1] == "m0"
    assert len(recorder.started) == 3  # m0 was kept up: no start
    run.ensure("m2", {}, models["m2"])  # a fourth model: the least recently used goes
    assert recorder.started[-1][0] == "m2"
    backward_dir = recorder.started[0][1]
    assert recorder.stopped[-1] == backward_dir and recorder.started[-1][1] == backward_dir
    # lm-eval's completions take a kept server whatever its template.
    run.ensure("m1", {}, models["m1"], any_template=True)
    assert len(recorder.started) == 4
    run.close()
    assert sorted(map(str, recorder.stopped[-3:])) == sorted(
        str(d) for _, d in recorder.started[1:]
    )


def test_a_model_trained_again_is_not_served_from_a_kept_server(tmp_path, recorder):
    run = serving.EmbeddedServing(tmp_path / "state", max_servers=2)
    m0, m1 = full_model(tmp_path, "m0"), full_model(tmp_path, "m1")
    run.ensure("m0", {}, m0)
    run.ensure("m1", {}, m1)
    config = m0 / "config.json"
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    run.ensure("m0", {}, m0)  # same path, new weights: a start, not the kept server
    assert [m for m, _ in recorder.started] == ["m0", "m1", "m0"]


def test_one_server_by_default_stops_the_last_before_the_next(tmp_path, recorder):
    run = serving.EmbeddedServing(tmp_path / "state")
    models = {role: full_model(tmp_path, role) for role in ("m0", "m1")}
    for role in ("m0", "m1", "m0"):
        run.ensure(role, {}, models[role])
    assert [m for m, _ in recorder.started] == ["m0", "m1", "m0"]
    assert {d for _, d in recorder.started} == {tmp_path / "state"}


def test_only_the_roles_asked_for_again_are_kept(tmp_path, recorder):
    run = serving.EmbeddedServing(tmp_path / "state", max_servers=3, keep_roles={"m0", "m1"})
    models = {role: full_model(tmp_path, role) for role in ("backward", "m0", "m1")}
    for role in ("backward", "m0", "m1", "m0"):
        run.ensure(role, {}, models[role])
    # backward was stopped when m0 came (nothing asks for it again); m0 was kept for later.
    assert [m for m, _ in recorder.started] == ["backward", "m0", "m1"]
    assert recorder.stopped[1] == recorder.started[0][1]


def test_servers_are_paused_for_a_block_and_continued_after_even_on_error(tmp_path, recorder):
    run = serving.EmbeddedServing(tmp_path / "state", max_servers=2)
    with run.paused():  # nothing up: nothing to pause
        pass
    assert not [c for c in recorder.calls if c[0] in ("pause", "resume")]
    models = {role: full_model(tmp_path, role) for role in ("m0", "m1")}
    run.ensure("m0", {}, models["m0"])
    run.ensure("m1", {}, models["m1"])  # m0 kept, m1 current
    slots = {d for _, d in recorder.started}
    with pytest.raises(RuntimeError), run.paused():
        assert {c[1] for c in recorder.calls if c[0] == "pause"} == slots
        raise RuntimeError("the training failed")
    assert {c[1] for c in recorder.calls if c[0] == "resume"} == slots
