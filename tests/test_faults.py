"""Server and process faults: nothing lost, nothing doubled, every failure explained.

Each case ends by comparing the final datasets with an uninterrupted run's. The stub's
answers are a function of the prompt (what temperature 0 gives on a real server), so two
runs must produce the same records; only the wall-clock timestamps in the provenance
differ, and :func:`comparable` drops them.

* SIGKILL of ``python -m humpback_plugin augment|curate`` during requests, inside a store
  write (a torn last line) and during the final atomic write;
* storms of 429 / 5xx, responses slower than the timeout, connection resets, truncated
  JSON bodies;
* a full disk (tiny tmpfs, else ENOSPC injected) and a read-only output folder;
* the real vLLM server killed mid-stage and restarted on the same port (``vllm``, ``slow``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_plugin.commands.augment import augment_command
from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import AugmentConfig, CurateConfig
from humpback_plugin.core.errors import StageInterrupted
from humpback_plugin.core.store import RecordStore
from humpback_plugin.stages.augment.stage import augment
from humpback_plugin.stages.curate.stage import curate
from tests.stub_openai import StubOpenAI, StubRequest, StubResponse, error, reply

ROOT = Path(__file__).resolve().parents[1]
# The words the rubric asks the judge to end with: tells judge requests from backward ones.
RUBRIC_MARK = 'write "Score: <rating>"'


# --- a deterministic stub: the answer is a function of the prompt ------------------------


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def deterministic_answer(req: StubRequest) -> StubResponse:
    """Backward model: an instruction naming the segment; judge: a score from the pair."""
    text = req.prompt_text
    if RUBRIC_MARK in text:
        return reply(f"The answer addresses the request.\nScore: {_digest(text) % 5 + 1}")
    number = re.search(r"Segment (\d+)", text)
    label = number.group(1) if number else "x"
    return reply(f"What does part {label} of the guide explain about item {_digest(text) % 997}?")


def slow(delay: float) -> Callable[[StubRequest], StubResponse]:
    def handler(req: StubRequest) -> StubResponse:
        resp = deterministic_answer(req)
        resp.delay = delay if req.body.get("prompt") != "Hello" else 0.0
        return resp

    return handler


def write_segments(path: Path, n: int, words: int = 120) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            body = " ".join(f"w{(i * 7 + j) % 89}" for j in range(words))
            text = f"Segment {i}. How to look after item {i}: {body}."
            fh.write(json.dumps({"id": f"seg{i:04d}", "text": text, "source": "t"}) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Facts about the run rather than the data: when each request ran and how many tries it took.
RUN_FIELDS = ("started_at", "finished_at", "attempts")


def comparable(path: Path, drop: tuple[str, ...] = RUN_FIELDS) -> list[dict]:
    """The records of a final dataset without the run-time facts of their requests."""
    rows = read_jsonl(path)
    for row in rows:
        for field in ("provenance", "judge_provenance"):
            if isinstance(row.get(field), dict):
                for name in drop:
                    row[field].pop(name, None)
    return rows


def leftovers(folder: Path) -> list[str]:
    """Temp files of interrupted atomic writes."""
    return sorted(p.name for p in folder.rglob(".*.tmp"))


# --- running the commands as separate processes ------------------------------------------


def cli_args(command: str, src: Path, out: Path, stub: StubOpenAI, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "humpback_plugin", command, str(src), "-o", str(out),
        "--base-url", stub.base_url, "--model", "stub", "--concurrency", "2", "-q", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ, HUMPBACK_LOAD_PLUGINS="", PYTHONPATH=str(ROOT))
    env.pop("HUMPBACK_API_KEY", None)
    return env


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def kill_when(args: list[str], ready: Callable[[], bool], timeout: float = 60) -> bool:
    """Start the command, SIGKILL it as soon as ``ready()``; True if it was still running."""
    proc = subprocess.Popen(
        args, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return proc.returncode == -signal.SIGKILL


def store_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def settled_count(stub: StubOpenAI, quiet_s: float = 0.5) -> int:
    """The stub's request count once it has not changed for ``quiet_s`` seconds."""
    count, since = len(stub.generation_requests), time.monotonic()
    while time.monotonic() - since < quiet_s:
        time.sleep(0.05)
        if len(stub.generation_requests) != count:
            count, since = len(stub.generation_requests), time.monotonic()
    return count


def tear_last_line(path: Path) -> None:
    """What a SIGKILL inside the single write() of a record leaves: a prefix of its line."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: start + (len(data) - start) // 2])


def assert_no_process_writes(out: Path, within_s: float = 15.0) -> None:
    """No process (a client process of the killed driver, forked with its command line)
    is left with ``out`` on its command line, once ``within_s`` has passed."""
    deadline = time.monotonic() + within_s
    mark = str(out).encode()
    while True:
        alive = []
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if mark in (proc / "cmdline").read_bytes():
                    alive.append(proc.name)
        if not alive:
            return
        assert time.monotonic() < deadline, f"processes left after the driver died: {alive}"
        time.sleep(0.1)


def assert_store_has_each_key_once(path: Path, expected: int) -> None:
    keys = [json.loads(line)["key"] for line in path.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == expected


# --- SIGKILL of the pipeline process -------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "where", "engine"),
    [
        *((c, w, "local") for c in ("augment", "curate") for w in ("requests", "store_write")),
        # --engine ray: the driver joins the suite's Ray instance as it would a cluster
        ("augment", "requests", "ray"),
        ("curate", "requests", "ray"),
        # --client-processes 2: the driver dies, its client processes must go with it
        ("augment", "requests", "processes"),
        ("curate", "requests", "processes"),
    ],
)
def test_sigkill_mid_stage_then_rerun_equals_an_uninterrupted_run(
    tmp_path, request, command, where, engine
):
    """The reference is always the local engine's uninterrupted run: a killed and resumed
    Ray run must give the same datasets."""
    n = 40
    segments = write_segments(tmp_path / "segments.jsonl", n)
    engine_args: tuple[str, ...] = ()
    if engine == "ray":
        address = request.getfixturevalue("ray_address")
        engine_args = ("--engine", "ray", "--ray-address", address, "--ray-actors", "2")
    elif engine == "processes":
        engine_args = ("--client-processes", "2")
    with StubOpenAI(slow(0.03 if engine == "local" else 0.05)) as stub:
        # Inputs and the uninterrupted reference run.
        if command == "augment":
            src = segments
        else:
            src = tmp_path / "candidates.jsonl"
            run_cli(cli_args("augment", segments, src, stub))
            assert len(read_jsonl(src)) == n
        reference = tmp_path / "reference" / "out.jsonl"
        run_cli(cli_args(command, src, reference, stub))
        # curate mixes its canaries (labelled probes) into the stream: they resume too
        summary = json.loads(Path(f"{reference}.parts/summary.json").read_text())
        inputs = n + (summary["canaries"]["judged"] if command == "curate" else 0)

        out = tmp_path / "killed" / "out.jsonl"
        store = Path(f"{out}.parts") / (
            "generations.jsonl" if command == "augment" else "scored.jsonl"
        )
        args = cli_args(command, src, out, stub, *engine_args)
        assert kill_when(args, lambda: store_lines(store) >= 8, timeout=180)
        if engine == "processes":
            assert_no_process_writes(out)
        saved = store_lines(store)
        assert 0 < saved < inputs, "the kill must land mid-stage"
        assert not out.exists() and leftovers(out.parent) == []
        if where == "store_write":
            tear_last_line(store)
            assert RecordStore(store).recovered_bytes > 0
        # Requests the killed process had sent may still be in the stub's threads (on a
        # loaded machine, for a while): count from when they have all arrived.
        before = settled_count(stub)
        proc = run_cli(args)
        resumed = len(stub.generation_requests) - before
    redone = inputs - saved + (1 if where == "store_write" else 0)
    assert resumed == redone, "only the unfinished inputs are asked again"
    assert "done before (resumed)" in proc.stderr
    assert comparable(out) == comparable(reference)
    assert_store_has_each_key_once(store, inputs)


@pytest.mark.parametrize("command", ["augment", "curate"])
def test_sigkill_during_the_final_atomic_write(tmp_path, command):
    # Large records (~60 KB each) make writing the final files take long enough to hit.
    n = 80
    segments = write_segments(tmp_path / "segments.jsonl", n, words=10_000)
    with StubOpenAI(deterministic_answer) as stub:
        src = segments
        if command == "curate":
            src = tmp_path / "candidates.jsonl"
            run_cli(cli_args("augment", segments, src, stub))
        reference = tmp_path / "reference" / "out.jsonl"
        run_cli(cli_args(command, src, reference, stub))

        out_dir = tmp_path / "killed"
        out = out_dir / "out.jsonl"
        attempts: list[int] = []
        for _attempt in range(5):
            killed = kill_when(
                cli_args(command, src, out, stub), lambda: bool(leftovers(out_dir)), timeout=120
            )
            if killed:
                attempts.append(_attempt)
                break
            shutil.rmtree(out_dir)  # finished before the poll saw the temp file: try again
        assert killed, "could not land a kill inside the final write"
        # A SIGKILL cannot clean up: the hidden temp file stays, the dataset is not there
        # or complete (rename is atomic), never partial.
        assert leftovers(out_dir)
        assert not out.exists() or comparable(out) == comparable(reference)
        before = len(stub.generation_requests)
        run_cli(cli_args(command, src, out, stub))
        assert len(stub.generation_requests) == before, "every generation was already stored"
    assert comparable(out) == comparable(reference)
    assert not leftovers(out_dir), "the re-run removes the killed writer's temp file"


def test_every_finished_request_is_stored_before_the_stage_returns(tmp_path):
    """Requests finishing together (the end of a stage, a burst after a restart): each is
    in the store when run_stage returns, so the final dataset written right after has it.
    (Guards the design: results recorded in done-callbacks can land after the final write,
    silently dropping the last records of a run; found by the disk-full test.)"""
    import asyncio

    from humpback_plugin.core.runner import run_stage

    async def stage() -> tuple[int, int]:
        release = asyncio.Event()

        async def work(item: int, key: str) -> list[dict]:
            await release.wait()  # then they finish a few loop iterations apart
            for _ in range(item % 4):
                await asyncio.sleep(0)
            return [{"item": item}]

        async def open_the_gate() -> None:
            await asyncio.sleep(0.05)
            release.set()

        with RecordStore(tmp_path / "s.jsonl") as store, RecordStore(tmp_path / "f.jsonl") as f:
            gate = asyncio.ensure_future(open_the_gate())
            stats = await run_stage(
                name="burst", inputs=range(300), key_of=str, input_id_of=str, work=work,
                store=store, failures=f, window=64, show_progress=False,
            )  # fmt: skip
            stored_on_return = len(store)
            await gate
        return stats.processed, stored_on_return

    assert asyncio.run(stage()) == (300, 300)


# --- server faults (stub) -------------------------------------------------------------------

FAULTS = {
    "429": lambda: error(429, "rate limited"),
    "500": lambda: error(500, "internal error"),
    "502": lambda: StubResponse(status=502, body=b"<html>Bad Gateway</html>"),
    "503": lambda: error(503, "overloaded"),
    "reset": lambda: StubResponse(reset=True),
    "truncated": lambda: StubResponse(truncate=True, texts=["cut short"]),
    "slow": lambda: StubResponse(delay=1.5, texts=["too late"]),  # past the 0.5 s timeout
}


class Storm:
    """Each prompt's first ``per_prompt`` attempts fail, cycling through every fault kind."""

    def __init__(self, per_prompt: int = 2) -> None:
        self.per_prompt = per_prompt
        self.attempts: Counter = Counter()
        self.injected: Counter = Counter()
        self.kinds = list(FAULTS)
        self._lock = threading.Lock()

    def __call__(self, req: StubRequest) -> StubResponse:
        if req.body.get("prompt") == "Hello":  # preflight stays clean
            return reply("hi")
        prompt = json.dumps(req.body, sort_keys=True)
        with self._lock:
            seen = self.attempts[prompt]
            self.attempts[prompt] += 1
            if seen < self.per_prompt:
                kind = self.kinds[(_digest(prompt) + seen) % len(self.kinds)]
                self.injected[kind] += 1
                return FAULTS[kind]()
        return deterministic_answer(req)


def test_fault_storm_gives_the_clean_result_and_counts_retries(tmp_path):
    n = 24
    segments = write_segments(tmp_path / "segments.jsonl", n)
    # concurrency 4: the stub's listen backlog (5) never overflows into extra retries
    cfg = dict(concurrency=4, timeout_s=0.5, retry_deadline_s=60)

    # One prompt, one request: no canaries, whose injected probes read (to the guarded
    # judge) exactly as their twins do, so two requests would share one prompt's faults.
    no_canaries = CurateConfig(canaries=False)
    with StubOpenAI(deterministic_answer) as stub:
        clean = ClientConfig(base_urls=[stub.base_url], model="stub", **cfg)
        augment(segments, tmp_path / "clean" / "c.jsonl", client_config=clean, show_progress=False)
        curate(
            tmp_path / "clean" / "c.jsonl",
            tmp_path / "clean" / "s.jsonl",
            client_config=clean,
            settings=no_canaries,
            selected_path=tmp_path / "clean" / "a4.jsonl",
            show_progress=False,
        )

    storm = Storm(per_prompt=2)
    with StubOpenAI(storm) as stub:
        stormy = ClientConfig(base_urls=[stub.base_url], model="stub", **cfg)
        started = time.monotonic()
        aug = augment(
            segments, tmp_path / "storm" / "c.jsonl", client_config=stormy, show_progress=False
        )
        cur = curate(
            tmp_path / "storm" / "c.jsonl",
            tmp_path / "storm" / "s.jsonl",
            client_config=stormy,
            settings=no_canaries,
            selected_path=tmp_path / "storm" / "a4.jsonl",
            show_progress=False,
        )
        elapsed = time.monotonic() - started

    assert set(storm.injected) == set(FAULTS), "every fault kind was exercised"
    # Every injected fault cost exactly one retry and nothing else.
    assert aug["retries"] + cur["retries"] == sum(storm.injected.values()) == 2 * 2 * n
    assert aug["failed"] == cur["failed"] == 0
    for name in ("c.jsonl", "s.jsonl", "a4.jsonl"):
        stormy_rows = comparable(tmp_path / "storm" / name, drop=RUN_FIELDS[:2])
        clean_rows = comparable(tmp_path / "clean" / name, drop=RUN_FIELDS[:2])
        for rows in (stormy_rows, clean_rows):  # two stubs: two ports
            for row in rows:
                for field in ("provenance", "judge_provenance"):
                    if field in row:
                        row[field].pop("server_url")
                        # the only trace of the storm: more attempts per request
                        attempts = row[field].pop("attempts")
                        assert attempts == (3 if rows is stormy_rows else 1)
        assert stormy_rows == clean_rows, name
    assert elapsed < 60


def test_retry_counts_are_in_the_cli_summary(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl", 3)
    summary_path = tmp_path / "c.jsonl.parts" / "summary.json"
    with StubOpenAI(Storm(per_prompt=1)) as stub:
        result = CliRunner().invoke(
            augment_command,
            [str(segments), "-o", str(tmp_path / "c.jsonl"), "--base-url", stub.base_url,
             "--model", "stub", "--timeout", "0.5", "-q"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(summary_path.read_text())["retries"] == 3


def test_server_that_never_recovers_stops_within_the_deadline_and_resumes(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl", 6)
    out = tmp_path / "c.jsonl"
    answered = 0
    lock = threading.Lock()

    def dies_after_two(req: StubRequest) -> StubResponse:
        nonlocal answered
        with lock:
            answered += 1
            if answered > 2:
                return error(503, "the server is going away")
        return deterministic_answer(req)

    with StubOpenAI(dies_after_two) as stub:
        cfg = ClientConfig(
            base_urls=[stub.base_url], model="stub", concurrency=1, retry_deadline_s=1.5
        )
        started = time.monotonic()
        with pytest.raises(StageInterrupted, match="re-run the same command to resume") as info:
            augment(segments, out, client_config=cfg, preflight=False, show_progress=False)
        assert time.monotonic() - started < 1.5 + 2  # the deadline, not a backoff more
    assert "HTTP 503" in str(info.value) and not out.exists()
    with StubOpenAI(deterministic_answer) as stub:
        cfg = ClientConfig(base_urls=[stub.base_url], model="stub", concurrency=1)
        summary = augment(segments, out, client_config=cfg, show_progress=False)
        assert len(stub.generation_requests) == 4
    assert summary["already_done"] == 2 and summary["accepted"] == 6


# --- disk full and read-only output -------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (root only; skipped where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def augment_cli(segments: Path, out: Path, stub: StubOpenAI, *extra: str):
    return CliRunner().invoke(
        augment_command,
        [str(segments), "-o", str(out), "--base-url", stub.base_url, "--model", "stub", "-q",
         "--concurrency", "4", *extra],
    )  # fmt: skip


def test_disk_full_mid_stage_stops_naming_the_file_then_resumes(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl", 40, words=1000)  # ~5 KB each
    with StubOpenAI(deterministic_answer) as stub:
        reference = tmp_path / "reference" / "c.jsonl"
        assert augment_cli(segments, reference, stub).exit_code == 0
        with tmpfs(tmp_path / "disk", "size=64k") as disk:
            out = disk / "c.jsonl"
            result = augment_cli(segments, out, stub)
            assert result.exit_code == 1
            assert "No space left on device" in result.output
            assert str(disk / "c.jsonl.parts" / "generations.jsonl") in result.output
            # The stage stopped at the first failed write (no asyncio callback traceback
            # from our code per record; the stub's own broken-pipe noise may show).
            assert "Exception in callback" not in result.output
            assert "humpback_plugin" not in result.output
            assert not out.exists() and leftovers(disk) == []
            store = disk / "c.jsonl.parts" / "generations.jsonl"
            saved = len(RecordStore(store))
            assert 0 < saved < 40 and RecordStore(store).recovered_bytes == 0  # no torn line
            # Space freed: the same command resumes.
            subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
            before = len(stub.generation_requests)
            assert augment_cli(segments, out, stub).exit_code == 0
            assert len(stub.generation_requests) - before == 40 - saved
            assert comparable(out) == comparable(reference)


def test_disk_full_during_the_final_write_leaves_no_file(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl", 40, words=1000)
    with StubOpenAI(deterministic_answer) as stub, tmpfs(tmp_path / "disk", "size=64k") as disk:
        out = disk / "c.jsonl"
        result = augment_cli(segments, out, stub, "--work-dir", str(tmp_path / "work"))
        assert result.exit_code == 1
        assert f"No space left on device: '{out}'" in result.output
        assert list(disk.iterdir()) == [], "neither a partial output nor a temp file"


def test_enospc_injected_into_the_final_write(tmp_path, monkeypatch):
    """The same without mount rights: the dataset's fsync fails with ENOSPC."""
    segments = write_segments(tmp_path / "segments.jsonl", 3)
    out = tmp_path / "out" / "c.jsonl"
    real_fsync = os.fsync

    def full(fd: int) -> None:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".c.jsonl."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with StubOpenAI(deterministic_answer) as stub:
        result = augment_cli(segments, out, stub)
    assert result.exit_code == 1
    assert f"No space left on device: '{out}'" in result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["c.jsonl.parts"]


def test_read_only_output_folder(tmp_path):
    segments = write_segments(tmp_path / "segments.jsonl", 2)
    with StubOpenAI(deterministic_answer) as stub, tmpfs(tmp_path / "ro", "size=64k,ro") as ro:
        result = augment_cli(segments, ro / "c.jsonl", stub)
        assert result.exit_code == 1
        assert f"Read-only file system: '{ro / 'c.jsonl.parts'}'" in result.output
        # With the work folder elsewhere, the generations are kept and the output fails.
        work = tmp_path / "work"
        result = augment_cli(segments, ro / "c.jsonl", stub, "--work-dir", str(work))
        assert result.exit_code == 1
        assert "Read-only file system" in result.output and str(ro) in result.output
        assert list(ro.iterdir()) == []
        assert len(RecordStore(work / "generations.jsonl")) == 2


def test_output_under_a_file_is_a_clear_error(tmp_path):
    """Runs anywhere (no mount): the output's folder is a file."""
    segments = write_segments(tmp_path / "segments.jsonl", 2)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with StubOpenAI(deterministic_answer) as stub:
        result = augment_cli(segments, blocker / "c.jsonl", stub)
    assert result.exit_code == 1 and str(blocker) in result.output
    assert "Traceback" not in result.output and blocker.read_text() == "x"


# --- the real vLLM server killed and restarted ----------------------------------------------


def _kill_server_group(state_dir: Path) -> None:
    """SIGKILL the server's whole process group, as a crash or the OOM killer would."""
    state = json.loads((state_dir / "state.json").read_text())
    with contextlib.suppress(ProcessLookupError):
        os.killpg(int(state.get("pgid", state["pid"])), signal.SIGKILL)


@pytest.mark.vllm
@pytest.mark.slow
def test_real_vllm_killed_mid_stage_then_restarted(tmp_path):
    from humpback_plugin.core.errors import ServerError
    from humpback_plugin.vllm.procs import free_port
    from humpback_plugin.vllm.server import start_server, stop_server
    from tests.vllm_fixture import _unavailable, require_vllm_install

    require_vllm_install()
    n = 12
    segments = tmp_path / "segments.jsonl"
    rows = [
        {"id": f"seg{i:02d}", "text": f"Step {i}: to keep a sourdough starter alive, feed it "
         f"{i + 20} grams of flour and water every {i % 3 + 1} days and keep it covered.",
         "source": "t"}
        for i in range(n)
    ]  # fmt: skip
    # One segment longer than the 2048-token context: a 400, recorded, the run goes on.
    rows.append({"id": "seg-long", "text": "The quick brown fox jumps. " * 1500, "source": "t"})
    segments.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "candidates.jsonl"
    store = Path(f"{out}.parts") / "generations.jsonl"
    sampling = AugmentConfig(temperature=0.0, top_p=1.0, max_tokens=24, seed=0)
    state_dir = tmp_path / "vllm-state"
    port = free_port()
    timings: dict[str, float] = {}

    def start() -> None:
        t0 = time.monotonic()
        try:
            start_server(port=port, state_dir=state_dir, progress=lambda msg: None)
        except ServerError as exc:
            _unavailable(str(exc)[-2000:])
        timings.setdefault("start_s", time.monotonic() - t0)

    start()
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        # 1. The server dies mid-stage and never comes back: a clear, bounded stop.
        deadline = 8.0
        cfg = ClientConfig(
            base_urls=[base_url], model="smollm2-135m", concurrency=1, retry_deadline_s=deadline
        )
        killer = threading.Thread(
            target=lambda: (_wait_for(lambda: store_lines(store) >= 3, 300), _kill_server_group(
                state_dir)),
        )  # fmt: skip
        killer.start()
        t0 = time.monotonic()
        with pytest.raises(StageInterrupted, match="re-run the same command to resume"):
            augment(segments, out, client_config=cfg, settings=sampling, show_progress=False)
        killer.join()
        timings["interrupted_after_s"] = time.monotonic() - t0
        saved = len(RecordStore(store))
        assert 3 <= saved < n + 1 and not out.exists()

        # 2. A re-run while the server is still down waits and retries; the server comes
        # back on the same port; the stage completes, resuming what was saved.
        stop_server(state_dir=state_dir)  # clears the dead server's state file
        cfg = ClientConfig(
            base_urls=[base_url], model="smollm2-135m", concurrency=2, retry_deadline_s=600
        )
        result: dict = {}

        def rerun() -> None:
            try:
                result["summary"] = augment(
                    segments, out, client_config=cfg, settings=sampling, preflight=False,
                    show_progress=False,
                )  # fmt: skip
            except BaseException as exc:  # noqa: BLE001 - reported below
                result["error"] = exc

        waiter = threading.Thread(target=rerun)
        t0 = time.monotonic()
        waiter.start()
        time.sleep(3)
        assert waiter.is_alive(), "the client must wait for the server, not give up"
        restart_t0 = time.monotonic()
        start()
        timings["restart_s"] = time.monotonic() - restart_t0
        waiter.join(timeout=600)
        timings["rerun_total_s"] = time.monotonic() - t0
        assert "error" not in result, result.get("error")
        summary = result["summary"]
    finally:
        stop_server(state_dir=state_dir)
    # It waited for the server (asking who serves, before its first request) and resumed.
    assert summary["already_done"] == saved and timings["rerun_total_s"] > 3
    assert summary["failed_by_reason"] == {"http_400": 1}
    (failure,) = read_jsonl(Path(summary["failures_path"]))
    assert failure["input_id"] == "seg-long" and "context length" in failure["message"]
    assert_store_has_each_key_once(store, n)
    generated = {json.loads(line)["segment_id"] for line in store.read_text().splitlines()}
    assert generated == {f"seg{i:02d}" for i in range(n)}
    rounded = {k: round(v, 1) for k, v in timings.items()}
    print(f"\nreal vLLM kill/restart timings: {json.dumps(rounded)}")


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.05)
