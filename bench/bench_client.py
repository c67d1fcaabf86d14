"""Requests a second through ``humpback augment`` and ``humpback curate`` against a
zero-latency OpenAI-compatible stub, next to a bare aiohttp client in the same run.

Both sides are whole processes timed from launch to exit, on the same inputs and the same
stub (``tests/fast_stub.py``, an aiohttp server in its own process that answers at once):

* baseline: ``bench/bare_client.py`` (aiohttp + asyncio, the same request bodies, the
  answers written to a file at the end; nothing else);
* pipeline: ``python -m humpback_plugin augment|curate`` with everything a run does: input
  validation, the resumable store, hooks, filters, the progress bar (rendered, to a pipe),
  the final atomic files and the summary.

Targets (issue 14): >= 3,000 requests/s through each stage, and >= 0.5 of the baseline's
rate. Each side runs ``--repeats`` times, alternating; the best run of each side is
compared (the medians are printed too), since other jobs on a shared machine only ever make
a run slower.

``--scaling`` adds the tables of the README: requests/s for 1, 2 and 4 client processes of
one stage (``--client-processes``, with the CPU each side costs per request, measured apart),
for 1, 2 and 4 separate processes (``--shard I/N`` side by side) and, with Ray installed,
1, 2 and 4 Ray actors (``--engine ray``, a local Ray instance started once for it).

    python bench/bench_client.py                          # 10,000 requests, 3 repeats
    python bench/bench_client.py --requests 20000 --scaling --json results.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from humpback_plugin.core.client import ClientConfig, ClientStats  # noqa: E402
from humpback_plugin.core.hashing import content_hash  # noqa: E402
from humpback_plugin.core.remote import RemoteCalls  # noqa: E402
from humpback_plugin.stages.augment.stage import augment_async  # noqa: E402
from tests.fast_stub import FastStub  # noqa: E402

WORDS = [
    "water", "plant", "soil", "light", "root", "leaf", "pot", "day", "week", "grow", "feed",
    "trim", "seed", "sun", "rain", "cold", "warm", "dry", "wet", "green", "repot", "drain",
    "mulch", "prune", "bloom", "stem", "bud", "shade", "frost", "compost",
]  # fmt: skip


def write_segments(path: Path, count: int) -> Path:
    """Segments of about 1,000 characters (the paper's window is 600-3,000)."""
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(count):
            body = " ".join(rng.choice(WORDS) for _ in range(170))
            text = f"Segment {i}. How to look after item {i}: {body}."
            row = {"id": f"seg{i:06d}", "text": text, "header": f"Item {i}", "source": "bench"}
            fh.write(json.dumps(row) + "\n")
    return path


def env() -> dict[str, str]:
    out = dict(os.environ, PYTHONPATH=str(ROOT), HUMPBACK_LOAD_PLUGINS="")
    # As on a user's machine, imports come from cached bytecode (the untimed first run
    # writes it): with PYTHONDONTWRITEBYTECODE set, every timed run would compile aiohttp,
    # pydantic, rich and the project from source again.
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    # Render the progress bar as on a terminal (into a pipe that is thrown away): its cost
    # is part of what a user's run pays.
    out.update(TTY_INTERACTIVE="1", FORCE_COLOR="1", COLUMNS="120")
    return out


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return seconds, cpu


def bare_cmd(kind: str, src: Path, out: Path, url: str, concurrency: int) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "bare_client.py"), kind, str(src), str(out),
            "--base-url", url, "--model", "stub", "--concurrency", str(concurrency)]  # fmt: skip


def pipeline_cmd(
    kind: str, src: Path, out: Path, url: str, concurrency: int, *extra: str
) -> list[str]:
    cmd = [sys.executable, "-m", "humpback_plugin", kind, str(src), "-o", str(out), "--base-url",
           url, "--model", "stub", "--concurrency", str(concurrency), *extra]  # fmt: skip
    if kind == "curate":
        cmd += ["--selected", str(out.with_suffix(".selected.jsonl"))]
    return cmd


def fresh(out: Path) -> Path:
    """Remove an output and its work folder: every timed run starts from nothing."""
    shutil.rmtree(f"{out}.parts", ignore_errors=True)
    for path in out.parent.glob(f"{out.stem}*"):
        if path.is_file():
            path.unlink()
    return out


def write_candidates(segments: Path, candidates: Path, url: str, concurrency: int) -> Path:
    """Untimed: the candidates curate reads (an augment run; it also warms the caches)."""
    subprocess.run(pipeline_cmd("augment", segments, fresh(candidates), url, concurrency, "-q"),
                   cwd=ROOT, env=env(), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    return candidates


def stage_seconds(out: Path) -> float:
    return json.loads(Path(f"{out}.parts/summary.json").read_text())["elapsed_s"]


def compare(args: argparse.Namespace, tmp: Path, url: str) -> dict[str, Any]:
    n = args.requests
    segments = write_segments(tmp / "segments.jsonl", n)
    # Warms the caches for both sides too.
    candidates = write_candidates(segments, tmp / "candidates.jsonl", url, args.concurrency)
    results: dict[str, Any] = {}
    for kind, src in (("augment", segments), ("curate", candidates)):
        rows = src.read_bytes().count(b"\n")
        bare, pipe, stage, bare_cpu, pipe_cpu = [], [], [], [], []
        for rep in range(args.repeats):
            out = fresh(tmp / f"bare-{kind}.jsonl")
            wall, cpu = timed(bare_cmd(kind, src, out, url, args.concurrency))
            bare.append(rows / wall)
            bare_cpu.append(cpu / rows * 1e6)
            out = fresh(tmp / f"pipe-{kind}.jsonl")
            wall, cpu = timed(pipeline_cmd(kind, src, out, url, args.concurrency))
            pipe.append(rows / wall)
            pipe_cpu.append(cpu / rows * 1e6)
            stage.append(rows / stage_seconds(out))
            print(f"  {kind} #{rep + 1}: bare {bare[-1]:,.0f}/s ({bare_cpu[-1]:.0f} us CPU/req), "
                  f"pipeline {pipe[-1]:,.0f}/s ({pipe_cpu[-1]:.0f} us CPU/req; stage alone "
                  f"{stage[-1]:,.0f}/s)", file=sys.stderr)  # fmt: skip
        results[kind] = {
            "requests": rows,
            "bare_best": round(max(bare)),
            "bare_median": round(statistics.median(bare)),
            "pipeline_best": round(max(pipe)),
            "pipeline_median": round(statistics.median(pipe)),
            "stage_best": round(max(stage)),
            "ratio_best": round(max(pipe) / max(bare), 3),
            "ratio_median": round(statistics.median(pipe) / statistics.median(bare), 3),
            # CPU time of the whole process per request (start-up included): the rate one
            # core would sustain against an infinitely fast server, whatever else runs.
            "bare_cpu_us": round(min(bare_cpu)),
            "pipeline_cpu_us": round(min(pipe_cpu)),
            "cpu_ratio": round(min(bare_cpu) / min(pipe_cpu), 3),
        }
    return results


class InstantWorkers:
    """An engine whose workers answer at once: what is left is the driver's own work per
    record under --engine ray (read and validate the input, key, skip, store, final files)."""

    name = "instant"

    @contextlib.asynccontextmanager
    async def model_calls(self, name: str, client_config: Any, work: Any, *, window: int):
        calls = RemoteCalls(dispatch=self.answer, batch_size=64, workers=1)
        yield calls

    @staticmethod
    async def answer(batch: list[tuple[Any, str]]) -> tuple[list[tuple], Any]:
        outcomes = []
        for segment, _key in batch:
            instruction = f"What does part {segment.id} of the guide explain?"
            outcomes.append(("ok", [{
                "id": content_hash("candidate", segment.id, instruction),
                "segment_id": segment.id, "instruction": instruction, "output": segment.text,
                "header": segment.header, "source": segment.source, "finish_reason": "stop",
                "provenance": {"server_url": "http://x/v1", "model": "stub", "params": {}},
                "choice_index": 0,
            }]))  # fmt: skip
        return outcomes, ("instant", ClientStats())


def driver_cost(tmp: Path, url: str) -> float:
    """CPU microseconds per record of the driver alone (augment, --engine ray's share)."""
    segments = tmp / "segments.jsonl"
    out = fresh(tmp / "driver.jsonl")
    config = ClientConfig(base_urls=[url], model="stub")
    rows = segments.read_bytes().count(b"\n")
    started = time.process_time()
    asyncio.run(augment_async(segments, out, client_config=config, preflight=False,
                              show_progress=False, engine=InstantWorkers()))  # fmt: skip
    return (time.process_time() - started) / rows * 1e6


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_processes_split(kind: str, src: Path, out: Path, url: str, k: int) -> dict[str, float]:
    """CPU microseconds per request of the driver and of the client processes under
    ``--client-processes k``, measured apart (this process is the driver): what one
    driver and each added client process cost where cores are not shared with the server."""
    from humpback_plugin.core.engine import LocalEngine
    from humpback_plugin.stages.curate.stage import curate_async

    config = ClientConfig(base_urls=[url], model="stub", concurrency=64)
    rows = src.read_bytes().count(b"\n")
    engine = LocalEngine(workers=1, client_processes=k)
    pids = [proc.pid for proc in engine._clients._procs]
    try:
        clients_before = sum(_cpu_seconds(pid) for pid in pids)
        started = time.process_time()
        run = augment_async if kind == "augment" else curate_async
        asyncio.run(run(src, fresh(out), client_config=config, show_progress=False,
                        engine=engine))  # fmt: skip
        driver = time.process_time() - started
        clients = sum(_cpu_seconds(pid) for pid in pids) - clients_before
    finally:
        engine.close()
    return {"driver_us": round(driver / rows * 1e6), "clients_us": round(clients / rows * 1e6)}


def scaling(args: argparse.Namespace, tmp: Path, url: str) -> dict[str, Any]:
    n = args.requests
    segments = tmp / "segments.jsonl"
    table: dict[str, Any] = {"processes": {}, "client_processes": {}, "ray_actors": {}}
    candidates = tmp / "candidates.jsonl"
    if not candidates.exists():
        write_candidates(segments, candidates, url, args.concurrency)
    for kind, src in (("augment", segments), ("curate", candidates)):
        for k in (1, 2, 4):
            out = fresh(tmp / f"cp{k}-{kind}.jsonl")
            whole, _cpu = timed(pipeline_cmd(kind, src, out, url, args.concurrency, "-q",
                                             "--client-processes", str(k)))  # fmt: skip
            row: dict[str, Any] = {"whole_process": round(n / whole)}
            if k > 1:
                row.update(client_processes_split(kind, src, tmp / f"split-{kind}.jsonl", url, k))
            table["client_processes"][f"{kind}-{k}"] = row
            print(f"  {kind}, --client-processes {k}: {n / whole:,.0f} requests/s"
                  + (f"; CPU per request: driver {row['driver_us']} us, client processes "
                     f"{row['clients_us']} us" if k > 1 else ""), file=sys.stderr)  # fmt: skip
    for k in (1, 2, 4):
        outs = [fresh(tmp / f"shard{k}-{i}.jsonl") for i in range(k)]
        logs = [out.with_suffix(".log").open("w") for out in outs]  # each shard's summary
        started = time.perf_counter()
        procs = [
            subprocess.Popen(
                pipeline_cmd(
                    "augment", segments, out, url, args.concurrency, "-q", "--shard", f"{i}/{k}"
                ),
                cwd=ROOT,
                env=env(),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )  # fmt: skip
            for i, (out, log) in enumerate(zip(outs, logs, strict=True))
        ]
        codes = [p.wait() for p in procs]
        rate = n / (time.perf_counter() - started)
        for log in logs:
            log.close()
        for code, out in zip(codes, outs, strict=True):
            if code != 0:
                tail = out.with_suffix(".log").read_text()[-3000:]
                raise SystemExit(f"a shard of {k} failed ({out.name}):\n{tail}")
        table["processes"][k] = round(rate)
        print(f"  {k} shard process(es) side by side: {rate:,.0f} requests/s", file=sys.stderr)
    try:
        import ray  # noqa: F401
    except ImportError:
        print("  Ray not installed: no Ray rows (pip install 'humpback-plugin[ray]')",
              file=sys.stderr)  # fmt: skip
        return table
    for k in (1, 2, 4):
        out = fresh(tmp / f"ray{k}.jsonl")
        whole, _cpu = timed(pipeline_cmd("augment", segments, out, url, args.concurrency, "-q",
                                         "--engine", "ray", "--ray-actors", str(k)))  # fmt: skip
        stage = stage_seconds(out)
        table["ray_actors"][k] = {"stage": round(n / stage), "whole_process": round(n / whole)}
        print(f"  {k} Ray actor(s): {n / stage:,.0f} requests/s in the stage, "
              f"{n / whole:,.0f}/s with Ray's start-up", file=sys.stderr)  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--scaling", action="store_true", help="add the scaling table")
    parser.add_argument("--only-scaling", action="store_true", help="the scaling table alone")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="humpback-bench-client-"))
    load = os.getloadavg()
    try:
        with FastStub() as stub:
            results: dict[str, Any] = {"load_before": [round(x, 2) for x in load]}
            if args.only_scaling:
                write_segments(tmp / "segments.jsonl", args.requests)
                results["scaling"] = scaling(args, tmp, stub.base_url)
                print(json.dumps(results["scaling"]))
                return
            results.update(compare(args, tmp, stub.base_url))
            results["driver_cpu_us"] = round(driver_cost(tmp, stub.base_url), 1)
            print(f"  driver alone (--engine ray's share): {results['driver_cpu_us']} us CPU "
                  "per record", file=sys.stderr)  # fmt: skip
            if args.scaling:
                results["scaling"] = scaling(args, tmp, stub.base_url)
            results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n| stage | requests | bare aiohttp req/s | pipeline req/s | ratio | CPU us/req "
          "bare / pipeline | ratio | per core |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("augment", "curate"):
        r = results[kind]
        print(f"| {kind} | {r['requests']:,} | {r['bare_best']:,} | {r['pipeline_best']:,} "
              f"(stage alone {r['stage_best']:,}) | {r['ratio_best']:.2f} | "
              f"{r['bare_cpu_us']} / {r['pipeline_cpu_us']} | {r['cpu_ratio']:.2f} | "
              f"{1e6 / r['pipeline_cpu_us']:,.0f} req/s |")  # fmt: skip
    print("targets: >= 3,000 requests/s and >= 0.5 of the bare client's rate")
    print(f"driver alone: {results['driver_cpu_us']} us CPU per record "
          f"({1e6 / results['driver_cpu_us']:,.0f} records/s on one core)")  # fmt: skip
    print(f"\nload average before {results['load_before']}, after {results['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
