"""`humpback segment --workers N`: the engine contract, and output identical to one
worker's (records, order, dedup decisions, counts) on real data."""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner

from humpback_plugin.commands.segment import segment_command
from humpback_plugin.core.config import CorpusConfig
from humpback_plugin.core.engine import (
    ENGINES,
    LocalEngine,
    available_cores,
    make_engine,
)
from humpback_plugin.core.errors import UnknownComponent
from humpback_plugin.core.ray_engine import RayEngine
from humpback_plugin.core.records import Segment
from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.plugins import pm
from humpback_plugin.stages.corpus.stage import segment_corpus
from tests.test_corpus import PAGE


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.01 * (x % 3))  # finish out of order
    return x * x


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError("seven")
    return x


def pid(_x: int) -> int:
    return os.getpid()


class OddError(Exception):
    def __init__(self, code: int, detail: str):
        super().__init__(f"{code}: {detail}")


def fail_oddly(x: int) -> int:
    if x == 3:
        raise OddError(3, "cannot be rebuilt from its message")
    return x


def test_map_ordered_keeps_input_order_and_bounds_what_is_in_flight():
    pulled: list[int] = []

    def items():
        for i in range(200):
            pulled.append(i)
            yield i

    with LocalEngine(workers=2, max_in_flight=3) as engine:
        results = engine.map_ordered(slow_square, items(), chunk_size=4)
        first = [next(results) for _ in range(5)]
        # 5 yielded, at most 3 chunks of 4 submitted beyond the first chunk's remains.
        assert first == [0, 1, 4, 9, 16] and len(pulled) <= 4 * 3 + 4
        assert list(results) == [i * i for i in range(5, 200)]
    assert engine._pool is None


def test_one_worker_runs_in_this_process_and_two_do_not():
    with make_engine("local", workers=1) as engine:
        assert set(engine.map_ordered(pid, range(5))) == {os.getpid()}
    with make_engine("local", workers=2) as engine:
        assert os.getpid() not in set(engine.map_ordered(pid, range(20), chunk_size=2))


def test_errors_propagate_and_early_stops_close_the_pool():
    engine = LocalEngine(workers=2)
    with pytest.raises(ValueError, match="seven"):
        list(engine.map_ordered(fail_on_seven, range(20), chunk_size=2))
    assert engine._pool is None
    with LocalEngine(workers=2) as engine:
        for value in engine.map_ordered(square, range(10_000), chunk_size=8):
            if value > 100:
                break
    assert engine._pool is None


def test_errors_that_cannot_travel_back_do_not_hang_the_pool():
    from humpback_plugin.core.chunks import WorkerError
    from humpback_plugin.core.errors import InputError

    with pytest.raises(WorkerError, match="OddError: 3: cannot be rebuilt"):
        list(LocalEngine(workers=2).map_ordered(fail_oddly, range(8)))
    with pytest.raises(InputError, match=r"^a\.warc:byte 7: broken$"):
        list(LocalEngine(workers=2).map_ordered(raise_input_error, range(2)))


def raise_input_error(_x: int) -> int:
    from humpback_plugin.core.errors import InputError

    raise InputError("a.warc", "byte 7", "broken")


def test_engines_by_name():
    assert ENGINES["local"] is LocalEngine and available_cores() >= 1
    assert make_engine("local").workers == available_cores()
    # ``ray`` (RayEngine, tests/test_ray_engine.py) is the other built-in engine.
    assert ENGINES["ray"] is RayEngine
    with pytest.raises(UnknownComponent, match="unknown engine 'dask'; available: local, ray"):
        make_engine("dask")


def _run(inputs: list[str], out, workers: int, **settings) -> tuple[str, str, dict]:
    rejected = out.with_suffix(".rejected.jsonl")
    summary = segment_corpus(
        inputs,
        out,
        CorpusConfig(workers=workers, **settings),
        keep_rejected=rejected,
        progress=False,
        warn=lambda m: None,
    ).to_dict()
    summary.pop("seconds")
    summary.pop("output")
    summary.pop("workers")
    return out.read_text(), rejected.read_text(), summary


def test_two_workers_give_one_workers_output_on_real_data(shared_data, tmp_path):
    web = shared_data / "web"
    # The HTML pages twice (a second copy of every page: dedup decisions across workers),
    # WARCs, C4 and the multilingual dolma sample.
    copy = tmp_path / "copy"
    copy.mkdir()
    for page in sorted((web / "html").glob("*.html.gz"))[:40]:
        (copy / page.name).write_bytes(page.read_bytes())
    inputs = [
        str(web / "html"),
        str(copy),
        str(web / "warc" / "*.warc.gz"),
        str(web / "c4_demo.jsonl"),
        str(web / "dolma_cc_main_2019_30.jsonl.gz"),
    ]
    one = _run(inputs, tmp_path / "one.jsonl", 1)
    two = _run(inputs, tmp_path / "two.jsonl", 2)
    assert one[0] == two[0] and one[1] == two[1] and one[2] == two[2]
    assert one[2]["kept"] > 500 and one[2]["rejected"]["exact_dedup:duplicate"] >= 40
    assert one[2]["rejected"]["minhash:near_duplicate"] > 0
    # The first copy of each page is the one kept, as in input order.
    kept = [json.loads(line)["source"] for line in one[0].splitlines()]
    assert not any(str(copy) in source for source in kept)


def test_workers_with_overlap_all_and_a_limit(shared_data, tmp_path):
    inputs = [str(shared_data / "web" / "html")]
    for settings in ({"overlap": "all", "extractor": "lxml"}, {"max_segments": 17}):
        one = _run(inputs, tmp_path / "a.jsonl", 1, **settings)
        two = _run(inputs, tmp_path / "b.jsonl", 2, **settings)
        assert one == two
    assert len(one[0].splitlines()) == 17


def shouty_count_check():
    seen: list[str] = []

    def check(segment: Segment) -> str | None:
        seen.append(segment.id)  # state: only the main process may hold it
        return "too_many" if len(seen) > 3 else None

    return check


def stateless_pid_check():
    def check(segment: Segment) -> str | None:
        segment.meta["checked_in"] = os.getpid()
        return None

    return check


stateless_pid_check.stateless = True  # type: ignore[attr-defined]


class FilterPlugin:
    @hookimpl
    def register_segment_filters(self, register):
        register("first_three", shouty_count_check)
        register("where", stateless_pid_check)


def test_third_party_filters_stateful_by_default_stateless_when_declared(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    for i in range(6):
        (pages / f"{i}.html").write_text(PAGE.replace("Soil", f"Soil {i}").replace("soil", f"s{i}"))
    pm.register(FilterPlugin(), name="test-worker-filters")
    try:
        out = tmp_path / "o.jsonl"
        summary = segment_corpus(
            [str(pages)], out, CorpusConfig(filters=["where", "first_three"], workers=2),
            progress=False, warn=lambda m: None,
        )  # fmt: skip
    finally:
        pm.unregister(name="test-worker-filters")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.kept == 3 and len(rows) == 3  # one counter over all workers' segments
    assert all(r["meta"]["checked_in"] != os.getpid() for r in rows)


def test_workers_option_on_the_command(tmp_path):
    (tmp_path / "a.html").write_text(PAGE)
    result = CliRunner().invoke(
        segment_command, [str(tmp_path / "a.html"), "-o", str(tmp_path / "o.jsonl"), "-w", "2"]
    )
    assert result.exit_code == 0 and "2 worker(s)" in result.output
    result = CliRunner().invoke(
        segment_command, [str(tmp_path / "a.html"), "-o", str(tmp_path / "p.jsonl"), "-w", "0"]
    )
    assert result.exit_code == 2 and not (tmp_path / "p.jsonl").exists()
    help_text = CliRunner().invoke(segment_command, ["--help"]).output
    assert "--workers" in help_text and "--extractor" in help_text and "--overlap" in help_text


def test_minhash_signature_prepared_in_a_worker_gives_the_same_decisions():
    import pickle

    from humpback_plugin.stages.corpus.filters import minhash

    texts = [PAGE[:900], PAGE[:900] + " and one more word", PAGE[900:1800]]
    plain, prepared = minhash(), minhash()
    segments = [Segment(id=str(i), text=t, source="s") for i, t in enumerate(texts)]
    for segment in segments:
        prepared.prepare(segment)  # what a worker does
    moved = [pickle.loads(pickle.dumps(s)) for s in segments]  # to the main process
    assert all(s._prepared for s in moved)
    assert (
        "_prepared" not in moved[0].model_dump_json()
        and "minhash" not in moved[0].model_dump_json()
    )
    expected = [plain(Segment(id=str(i), text=t, source="s")) for i, t in enumerate(texts)]
    assert [prepared(s) for s in moved] == expected == [None, "near_duplicate", None]


def test_files_read_in_the_workers_report_problems_as_the_main_process_would(tmp_path):
    import gzip as gz

    from humpback_plugin.core.errors import InputError

    pages = tmp_path / "pages"
    pages.mkdir()
    for i in range(5):
        (pages / f"{i}.html").write_text(PAGE.replace("Soil", f"Soil {i}").replace("soil", f"s{i}"))
    blob = gz.compress(PAGE.encode())
    (pages / "2b-cut.html.gz").write_bytes(blob[: len(blob) // 2])
    (pages / "3b-empty.html").write_text("")
    one = _run([str(pages)], tmp_path / "one.jsonl", 1)
    two = _run([str(pages)], tmp_path / "two.jsonl", 2)
    assert one == two
    assert one[2]["bad_records"] == 1 and "2b-cut.html.gz" in one[2]["errors"][0]["source"]
    assert one[2]["skipped"] == {"empty file": 1} and one[2]["files"] == 7
    with pytest.raises(InputError, match=r"2b-cut\.html\.gz"):
        segment_corpus(
            [str(pages)], tmp_path / "s.jsonl", CorpusConfig(workers=2), strict=True,
            progress=False,
        )  # fmt: skip
    assert not (tmp_path / "s.jsonl").exists()
