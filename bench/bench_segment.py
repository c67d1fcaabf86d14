"""Benchmark `humpback segment`: throughput on HTML and WARC, memory at 10k/100k segments.

Every figure comes with a baseline measured in the same run on the same bytes, so the
ratio means something on any machine:

* HTML: lxml parsing the page bytes (the floor any HTML segmenter pays) vs
  segmenting without filters vs segmenting with all default filters.
* WARC: warcio reading the records + lxml parsing the payload vs the same with
  segmentation (with and without filters).
* Memory: peak RSS of a child process segmenting a JSONL corpus that yields 10k and
  100k distinct segments with the stateful filters (exact and MinHash dedup indexes grow),
  against the RSS right before the run (libraries and the language model loaded).

The corpus is built in a temp dir by repeating and perturbing the shared data
(../shared/data/web); each throughput figure is the best of two runs.
Usage: ``python bench/bench_segment.py [--copies 2] [--sizes 10000,100000] [--json]``.
About 1-2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "web"
sys.path.insert(0, str(ROOT))


def _current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return _peak_rss_mb()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _perturb(html: str, k: int) -> str:
    """Make copy ``k`` of a page distinct (so dedup does not drop it) by tagging paragraphs."""
    counter = iter(range(1_000_000))
    return re.sub(r"<p(\s|>)", lambda m: f"<p{m.group(1)}copy{k}n{next(counter)} ", html)


def build_html(tmp: Path, copies: int) -> tuple[list[Path], int]:
    pages = sorted((SHARED / "html").glob("*.html.gz"))
    out_dir = tmp / "html"
    out_dir.mkdir()
    files, total = [], 0
    for k in range(copies):
        for page in pages:
            html = gzip.decompress(page.read_bytes()).decode("utf-8", errors="replace")
            data = _perturb(html, k).encode("utf-8")
            path = out_dir / f"{k}-{page.name.removesuffix('.gz')}"
            path.write_bytes(data)
            files.append(path)
            total += len(data)
    return files, total


def build_warc(tmp: Path, files: list[Path]) -> Path:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path = tmp / "crawl.warc.gz"
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for i, f in enumerate(files):
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
            )
            record = writer.create_warc_record(
                f"http://example.com/{i}",
                "response",
                payload=io.BytesIO(f.read_bytes()),
                http_headers=headers,
            )
            writer.write_record(record)
    return path


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(fn, repeat: int = 2) -> tuple[float, object]:
    """Fastest of ``repeat`` runs: other load on the machine only ever slows a run down."""
    runs = [timed(fn) for _ in range(repeat)]
    return min(runs, key=lambda r: r[0])


def lxml_parse_files(files: list[Path]) -> int:
    import lxml.html

    n = 0
    for f in files:
        root = lxml.html.document_fromstring(f.read_bytes())
        n += len(root)
    return n


def warcio_lxml(path: Path) -> int:
    import lxml.html
    from warcio.archiveiterator import ArchiveIterator

    n = 0
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh):
            if record.rec_type == "response":
                root = lxml.html.document_fromstring(record.content_stream().read())
                n += len(root)
    return n


def segment(inputs: list[str], out: Path, filters):
    from humpback_plugin.core.config import CorpusConfig
    from humpback_plugin.stages.corpus.stage import segment_corpus

    # One core: the parallel speed-up is bench_extraction.py's business.
    settings = CorpusConfig(filters=filters, workers=1)
    return segment_corpus(inputs, out, settings, progress=False, warn=lambda m: None)


def throughput(copies: int) -> dict:
    results: dict = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        files, total = build_html(tmp, copies)
        warc = build_warc(tmp, files)
        mb = total / 1e6
        # Warm-up: imports and the language model load are not per-byte costs.
        segment([str(files[0])], tmp / "warm.jsonl", None)

        t_base, _ = best_of(lambda: lxml_parse_files(files))
        t_none, s_none = best_of(lambda: segment([str(tmp / "html")], tmp / "a.jsonl", []))
        t_all, s_all = best_of(lambda: segment([str(tmp / "html")], tmp / "b.jsonl", None))
        results["html"] = {
            "pages": len(files),
            "mb": round(mb, 1),
            "lxml_parse_mb_s": round(mb / t_base, 1),
            "segment_no_filters_mb_s": round(mb / t_none, 1),
            "segment_all_filters_mb_s": round(mb / t_all, 1),
            "ratio_no_filters_vs_lxml": round(t_none / t_base, 2),
            "ratio_all_filters_vs_lxml": round(t_all / t_base, 2),
            "segments": s_none.segments,
            "kept_all_filters": s_all.kept,
        }
        t_wbase, _ = best_of(lambda: warcio_lxml(warc))
        t_wnone, _ = best_of(lambda: segment([str(warc)], tmp / "c.jsonl", []))
        t_wall, s_wall = best_of(lambda: segment([str(warc)], tmp / "d.jsonl", None))
        results["warc"] = {
            "records": len(files),
            "payload_mb": round(mb, 1),
            "warc_gz_mb": round(warc.stat().st_size / 1e6, 1),
            "warcio_lxml_mb_s": round(mb / t_wbase, 1),
            "segment_no_filters_mb_s": round(mb / t_wnone, 1),
            "segment_all_filters_mb_s": round(mb / t_wall, 1),
            "ratio_no_filters_vs_warcio_lxml": round(t_wnone / t_wbase, 2),
            "ratio_all_filters_vs_warcio_lxml": round(t_wall / t_wbase, 2),
            "kept_all_filters": s_wall.kept,
        }
    return results


# --- memory (child process) ----------------------------------------------------------------

# The filters that keep state (the dedup indexes); the others are stateless and only
# cost time, which the throughput figures already show.
MEMORY_FILTERS = ["length", "exact_dedup", "minhash"]


def _sentence_pool() -> list[str]:
    with open(SHARED / "c4_demo.jsonl") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    with open(SHARED / "wiki_demo.txt") as fh:
        texts += [line for line in fh if line.strip()]
    pool = []
    for text in texts:
        pool += [s for s in re.split(r"(?<=[.!?])\s+", text) if 40 <= len(s) <= 300]
    return pool


def rss_child(n_segments: int) -> None:
    """Segment ``n_segments`` distinct English documents; print RSS figures as JSON."""
    pool = _sentence_pool()
    rng = random.Random(n_segments)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "corpus.jsonl"
        with open(path, "w") as fh:
            for _ in range(n_segments):
                # ~1,500 characters of randomly drawn sentences: distinct, English, in range.
                sentences, size = [], 0
                while size < 1500:
                    sentences.append(rng.choice(pool))
                    size += len(sentences[-1]) + 1
                fh.write(json.dumps({"text": " ".join(sentences)[:2900]}) + "\n")
        warm = Path(d) / "warm.jsonl"
        with open(path) as src, open(warm, "w") as dst:
            dst.writelines(line for _, line in zip(range(5), src, strict=False))
        segment([str(warm)], Path(d) / "warm.out.jsonl", MEMORY_FILTERS)  # imports
        warm.unlink()
        before = _current_rss_mb()
        out = Path(d) / "out.jsonl"
        seconds, summary = timed(lambda: segment([str(path)], out, MEMORY_FILTERS))
        print(
            json.dumps(
                {
                    "segments": summary.segments,
                    "kept": summary.kept,
                    "rss_before_mb": round(before, 1),
                    "peak_rss_mb": round(_peak_rss_mb(), 1),
                    "growth_mb": round(_peak_rss_mb() - before, 1),
                    "seconds": round(seconds, 1),
                    "segments_per_s": round(summary.segments / seconds),
                }
            )
        )


def memory(sizes: list[int]) -> dict:
    # The children run side by side (one per core).
    procs = {
        n: subprocess.Popen(
            [sys.executable, __file__, "--rss-child", str(n)], stdout=subprocess.PIPE, text=True
        )
        for n in sizes
    }
    out = {}
    for n, proc in procs.items():
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"memory child for {n} segments failed")
        out[str(n)] = json.loads(stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=2, help="copies of the 120 pages")
    parser.add_argument("--sizes", default="10000,100000", help="segment counts for RSS")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print only JSON")
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: the benchmark builds its corpus from it")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    started = time.perf_counter()
    results = throughput(args.copies)
    results["memory"] = memory(sizes)
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    h, w = results["html"], results["warc"]
    print(f"HTML  {h['pages']} pages, {h['mb']} MB (one core)")
    print(f"  lxml parse only (baseline)   {h['lxml_parse_mb_s']:>7} MB/s")
    print(f"  segment, no filters          {h['segment_no_filters_mb_s']:>7} MB/s  "
          f"({h['ratio_no_filters_vs_lxml']}x the baseline's time)")  # fmt: skip
    print(f"  segment, all filters         {h['segment_all_filters_mb_s']:>7} MB/s  "
          f"({h['ratio_all_filters_vs_lxml']}x)")  # fmt: skip
    print(f"WARC  {w['records']} records, {w['payload_mb']} MB payload, {w['warc_gz_mb']} MB gz")
    print(f"  warcio + lxml (baseline)     {w['warcio_lxml_mb_s']:>7} MB/s")
    print(f"  segment, no filters          {w['segment_no_filters_mb_s']:>7} MB/s  "
          f"({w['ratio_no_filters_vs_warcio_lxml']}x)")  # fmt: skip
    print(f"  segment, all filters         {w['segment_all_filters_mb_s']:>7} MB/s  "
          f"({w['ratio_all_filters_vs_warcio_lxml']}x)")  # fmt: skip
    print(f"Memory ({','.join(MEMORY_FILTERS)}; distinct segments)")
    for n, m in results["memory"].items():
        print(f"  {int(n):>7,} segments: peak RSS {m['peak_rss_mb']} MB "
              f"(+{m['growth_mb']} MB over {m['rss_before_mb']} MB before), "
              f"{m['segments_per_s']} segments/s")  # fmt: skip
    print(f"total {results['total_seconds']} s")


if __name__ == "__main__":
    main()
