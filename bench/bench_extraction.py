"""Benchmark main-content extraction, WARC reading and `humpback segment --workers`.

All in one run, each figure beside a baseline measured in the same run:

* **Extractors** (resiliparse, trafilatura, lxml, and today's setting: lxml with every
  nested section kept): on the 120 shared pages with their hand-written main text, the
  in-gold share (``humpback_plugin/stages/corpus/quality.py``; all pages, the 92 tuned on,
  the 28 held out), kept segments and pages with segments after every default filter,
  and MB/s on one core: the extractor alone, and the whole segment stage.
* **WARC readers**: warcio, FastWARC and ours (``stages/corpus/warc.py``) reading every
  record's payload of a per-record-gzipped WARC of the pages, MB/s of payload.
* **Workers**: ``segment_corpus`` with 1 and with 2 workers on copies of the pages (each
  copy perturbed so dedup keeps it), the speed-up, and that both outputs are identical.
* **Engines** (``--only engines``, needs Ray): the same corpus on the local engine (1 and
  2 workers) and on a local Ray instance with every core: ``--engine ray`` (Ray Data)
  against the engine it replaced (a Ray task per chunk of 16 documents), in alternation,
  and that every output is identical to one local worker's.

Throughput figures are the best of ``--repeat`` runs (other load only slows a run down).
Usage: ``python bench/bench_extraction.py [--copies 3] [--repeat 2] [--json]``. About 3
minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_segment import SHARED, best_of, build_html, build_warc  # noqa: E402

from humpback_plugin.core.config import CorpusConfig  # noqa: E402
from humpback_plugin.stages.corpus import quality  # noqa: E402
from humpback_plugin.stages.corpus.extractors import BUILTIN_EXTRACTORS  # noqa: E402
from humpback_plugin.stages.corpus.stage import segment_corpus  # noqa: E402

# (label, extractor, overlap): "today" is the setting before main-content extraction.
SETTINGS = [
    ("resiliparse", "resiliparse", "outermost"),
    ("trafilatura", "trafilatura", "outermost"),
    ("lxml", "lxml", "outermost"),
    ("today (lxml, overlap all)", "lxml", "all"),
]


def _segment(inputs: list[str], out: Path, **settings):
    return segment_corpus(
        inputs, out, CorpusConfig(**settings), progress=False, warn=lambda message: None
    )


def extractors(repeat: int) -> list[dict]:
    pages = sorted((SHARED / "html").glob("*.html.gz"))
    htmls = [gzip.decompress(p.read_bytes()).decode("utf-8", errors="replace") for p in pages]
    mb = sum(len(h.encode("utf-8")) for h in htmls) / 1e6
    gold = quality.load_ground_truth(SHARED / "html_ground_truth.json")
    held_out = {key for key in gold if quality.held_out(key)}
    tuned = set(gold) - held_out
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for label, extractor, overlap in SETTINGS:
            extract = BUILTIN_EXTRACTORS[extractor]
            extract(htmls[0], {})  # imports
            t_extract, _ = best_of(lambda e=extract: [e(h, {}) for h in htmls], repeat)
            out = Path(d) / f"{extractor}-{overlap}.jsonl"
            t_stage, summary = best_of(
                lambda o=out, e=extractor, v=overlap: _segment(
                    [str(SHARED / "html")], o, extractor=e, overlap=v, workers=1
                ),
                repeat,
            )
            kept = [json.loads(line) for line in out.read_text().splitlines()]
            rows.append(
                {
                    "setting": label,
                    "all": quality.evaluate(kept, gold).to_dict(),
                    "tuned": quality.evaluate(kept, gold, only=tuned).to_dict(),
                    "held_out": quality.evaluate(kept, gold, only=held_out).to_dict(),
                    "extract_mb_s": round(mb / t_extract, 1),
                    "segment_mb_s": round(mb / t_stage, 1),
                    "kept": summary.kept,
                }
            )
    return rows


def _payloads_warcio(path: Path) -> int:
    from warcio.archiveiterator import ArchiveIterator

    total = 0
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh):
            if record.rec_type == "response":
                total += len(record.content_stream().read())
    return total


def _payloads_fastwarc(path: Path) -> int:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    total = 0
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh, record_types=WarcRecordType.response, parse_http=True):
            total += len(record.reader.read())
    return total


def _payloads_ours(path: Path) -> int:
    from humpback_plugin.stages.corpus.warc import iter_warc, split_http

    total = 0
    with open(path, "rb") as fh:
        for record in iter_warc(fh, True, lambda where, message: None):
            if record.type == "response":
                total += len(split_http(record.block)[2])
    return total


def warc_readers(files: list[Path], tmp: Path, repeat: int) -> dict:
    warc = build_warc(tmp, files)
    out: dict = {"records": len(files), "warc_gz_mb": round(warc.stat().st_size / 1e6, 1)}
    for name, fn in (("warcio", _payloads_warcio), ("fastwarc", _payloads_fastwarc),
                     ("ours", _payloads_ours)):  # fmt: skip
        try:
            seconds, payload = best_of(lambda f=fn: f(warc), repeat)
        except ImportError:
            out[name] = None
            continue
        out["payload_mb"] = round(payload / 1e6, 1)
        out[name] = round(payload / 1e6 / seconds, 1)
    return out


def workers(files: list[Path], tmp: Path, total_mb: float, repeat: int) -> dict:
    """1 and 2 workers in alternation (so both meet the same load from other jobs): the
    best time of each, and the median of the pairwise ratios."""
    folder = str(files[0].parent)
    _segment([str(files[0])], tmp / "warm.jsonl", workers=1)  # imports, language model
    one, two, ratios, bare, cpu_one, cpu_two, cpu_driver = [], [], [], [], [], [], []
    for _ in range(repeat):
        before = _cpu()
        t1, s1 = timed_run(lambda: _segment([folder], tmp / "w1.jsonl", workers=1))
        middle = _cpu()
        t2, s2 = timed_run(lambda: _segment([folder], tmp / "w2.jsonl", workers=2))
        after = _cpu()
        one.append(t1)
        two.append(t2)
        ratios.append(t1 / t2)
        cpu_one.append(sum(middle) - sum(before))
        cpu_two.append(sum(after) - sum(middle))
        cpu_driver.append(after[0] - middle[0])
        bare.append(_bare_speedup())
    identical = (tmp / "w1.jsonl").read_bytes() == (tmp / "w2.jsonl").read_bytes()
    return {
        "pages": len(files),
        "mb": round(total_mb, 1),
        "kept": s1.kept,
        "one_worker_mb_s": round(total_mb / min(one), 1),
        "two_workers_mb_s": round(total_mb / min(two), 1),
        "speedup": round(min(one) / min(two), 2),
        "speedup_median_of_pairs": round(statistics.median(ratios), 2),
        "identical_output": identical and s1.kept == s2.kept,
        # What the machine gave two bare busy processes over one, in the same minutes:
        # other jobs on a shared machine take cores away from both measurements.
        "bare_processes_speedup": round(statistics.median(bare), 2),
        # CPU seconds (main process + workers) do not depend on other jobs: the work that
        # two workers add (pickling, forking), and the main process's share of it.
        "cpu_seconds_one_worker": round(statistics.median(cpu_one), 2),
        "cpu_seconds_two_workers": round(statistics.median(cpu_two), 2),
        "main_process_cpu_share": round(
            statistics.median(cpu_driver) / statistics.median(cpu_two), 2
        ),
        "idle_machine_estimate": round(
            2 * statistics.median(cpu_one) / statistics.median(cpu_two), 2
        ),
    }


def engines(files: list[Path], tmp: Path, total_mb: float, repeat: int) -> dict:
    """The local engine and Ray (a local instance with this machine's cores), each run
    once untimed (imports, Ray's workers, the language model), then in alternation."""
    import logging

    import ray

    from humpback_plugin.core.engine import available_cores
    from humpback_plugin.core.ray_engine import RayEngine

    ray.init(
        num_cpus=available_cores(),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    folder = str(files[0].parent)
    settings = {
        "local, 1 worker": {"workers": 1},
        "local, 2 workers": {"workers": 2},
        "ray: Ray Data (--engine ray)": {"engine": RayEngine()},
        "ray: a task per chunk (before)": {"engine": RayTasksEngine()},
    }

    def run(name: str) -> float:
        options = dict(settings[name])
        engine = options.pop("engine", None)
        out = tmp / f"engine-{len(name)}-{name[:5]}.jsonl"
        config = CorpusConfig(**options)
        start = time.perf_counter()
        segment_corpus(
            [folder], out, config, engine=engine, progress=False, warn=lambda message: None
        )
        seconds = time.perf_counter() - start
        outputs[name] = out.read_bytes()
        return seconds

    outputs: dict[str, bytes] = {}
    try:
        for name in settings:
            run(name)
        times: dict[str, list[float]] = {name: [] for name in settings}
        for _ in range(repeat):
            for name in settings:
                times[name].append(run(name))
    finally:
        ray.shutdown()
    reference = outputs["local, 1 worker"]
    return {
        "pages": len(files),
        "mb": round(total_mb, 1),
        "cores": available_cores(),
        "mb_s": {name: round(total_mb / min(t), 1) for name, t in times.items()},
        "identical_output": all(out == reference for out in outputs.values()),
    }


class RayTasksEngine:
    """The baseline: ``--engine ray`` before Ray Data, a Ray task per chunk, at most two
    chunks per CPU in flight (the code it had, kept here to measure against)."""

    def __init__(self) -> None:
        import ray

        self.ray = ray
        self.workers = int(ray.cluster_resources().get("CPU", 1))

    def map_ordered(self, fn, items, *, chunk_size: int = 64):
        from collections import deque

        from humpback_plugin.core.chunks import chunks, run_chunk

        task = self.ray.remote(run_chunk)
        limit = 2 * self.workers
        fn_ref = self.ray.put(fn)
        pending: deque = deque()
        for chunk in chunks(items, chunk_size):
            pending.append(task.remote(fn_ref, chunk))
            if len(pending) >= limit:
                yield from self.ray.get(pending.popleft())
        while pending:
            yield from self.ray.get(pending.popleft())


def _cpu() -> tuple[float, float]:
    """CPU seconds so far of this process and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def _bare_speedup(work: int = 8_000_000) -> float:
    """Two processes each burning half of ``work`` against one burning all of it."""
    context = multiprocessing.get_context("fork")

    def run(parts: int) -> float:
        start = time.perf_counter()
        procs = [context.Process(target=_burn, args=(work // parts,)) for _ in range(parts)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        return time.perf_counter() - start

    return run(1) / run(2)


def timed_run(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=3, help="copies of the 120 pages")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    parser.add_argument("--json", action="store_true", help="print only JSON")
    parser.add_argument(
        "--only", choices=["extractors", "warc", "workers", "engines"], help="one part"
    )
    args = parser.parse_args()
    if not (SHARED / "html_ground_truth.json").is_file():
        raise SystemExit(f"{SHARED} is missing: the benchmark needs the shared pages")
    started = time.perf_counter()
    results: dict = {}
    if args.only in (None, "extractors"):
        results["extractors"] = extractors(args.repeat)
    if args.only != "extractors":
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            files, total = build_html(tmp, args.copies)
            if args.only in (None, "warc"):
                results["warc"] = warc_readers(files, tmp, args.repeat)
            if args.only in (None, "workers"):
                results["workers"] = workers(files, tmp, total / 1e6, max(3, args.repeat))
            if args.only == "engines":
                results["engines"] = engines(files, tmp, total / 1e6, max(3, args.repeat))
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    _print(results)


def _print(results: dict) -> None:
    if "extractors" in results:
        _print_extractors(results["extractors"])
    if "warc" in results:
        _print_warc(results["warc"])
    if "workers" in results:
        _print_workers(results["workers"])
    if "engines" in results:
        _print_engines(results["engines"])
    print(f"total {results['total_seconds']} s")


def _print_extractors(rows: list[dict]) -> None:
    print("Extractors on the 120 shared pages (in-gold share / kept segments / pages with "
          "segments; MB/s on one core)")  # fmt: skip
    print(f"  {'setting':<27}{'all 120':>20}{'tuned on (92)':>20}{'held out (28)':>20}"
          f"{'extract':>9}{'segment':>9}")  # fmt: skip
    for row in rows:
        cells = [
            f"{q['in_gold_share']:.3f} / {q['kept_segments']} / {q['pages_with_segments']}"
            for q in (row["all"], row["tuned"], row["held_out"])
        ]
        print(f"  {row['setting']:<27}{cells[0]:>20}{cells[1]:>20}{cells[2]:>20}"
              f"{row['extract_mb_s']:>9}{row['segment_mb_s']:>9}")  # fmt: skip


def _print_warc(w: dict) -> None:
    print(f"WARC readers ({w['records']} records, {w.get('payload_mb')} MB payload, "
          f"{w['warc_gz_mb']} MB gz; MB/s of payload, one core)")  # fmt: skip
    for name in ("warcio", "fastwarc", "ours"):
        print(f"  {name:<10}{w[name] if w[name] is not None else 'not installed':>10}")


def _print_workers(k: dict) -> None:
    print(f"Workers ({k['pages']} pages, {k['mb']} MB, all default filters, {k['kept']} kept)")
    print(f"  1 worker   {k['one_worker_mb_s']:>7} MB/s")
    pairs = k["speedup_median_of_pairs"]
    print(f"  2 workers  {k['two_workers_mb_s']:>7} MB/s  speed-up {k['speedup']}x (median of "
          f"pairs {pairs}x), identical output: {k['identical_output']}")  # fmt: skip
    print(f"  baseline: two bare busy processes got {k['bare_processes_speedup']}x one's "
          "throughput in the same minutes (2.0 on an idle 2-core machine)")  # fmt: skip
    print(f"  CPU seconds: 1 worker {k['cpu_seconds_one_worker']}, 2 workers "
          f"{k['cpu_seconds_two_workers']} (main process {k['main_process_cpu_share']:.0%}); "
          f"on an idle 2-core machine that is {k['idle_machine_estimate']}x")  # fmt: skip


def _print_engines(k: dict) -> None:
    print(f"Engines ({k['pages']} pages, {k['mb']} MB, all default filters, {k['cores']} cores; "
          f"output identical to one local worker's: {k['identical_output']})")  # fmt: skip
    for name, mb_s in k["mb_s"].items():
        print(f"  {name:<32}{mb_s:>7} MB/s")


if __name__ == "__main__":
    main()
