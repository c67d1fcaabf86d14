"""--shard i/n splits exactly; merge joins with no record lost or doubled."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from humpback_plugin.cli import cli
from humpback_plugin.core.errors import HumpbackError, UsageError
from humpback_plugin.core.sharding import in_shard, parse_shard
from humpback_plugin.run.merge import merge_shards


def test_every_id_in_exactly_one_shard():
    ids = [f"seg-{i}" for i in range(1000)]
    counts = [sum(in_shard(i, (k, 4)) for i in ids) for k in range(4)]
    assert sum(counts) == 1000 and min(counts) > 200
    assert all(in_shard(i, None) for i in ids)


@pytest.mark.parametrize("bad", ["4/4", "-1/2", "x", "1/0"])
def test_parse_shard_rejects(bad):
    with pytest.raises(UsageError):
        parse_shard(bad)


def _write(path, ids):
    path.write_text("".join(json.dumps({"id": i, "segment_id": i}) + "\n" for i in ids))


def test_merge_joins_and_refuses_doubles(tmp_path):
    ids = [f"s{i}" for i in range(50)]
    parts = []
    for k in range(3):
        p = tmp_path / f"part{k}.jsonl"
        _write(p, [i for i in ids if in_shard(i, (k, 3))])
        parts.append(p)
    out = tmp_path / "merged.jsonl"
    assert merge_shards(parts, out)["records"] == 50
    _write(tmp_path / "dup.jsonl", ["s1"])
    out2 = tmp_path / "merged2.jsonl"
    with pytest.raises(HumpbackError, match="s1 is in several shards"):
        merge_shards([*parts, tmp_path / "dup.jsonl"], out2)
    assert not out2.exists()


def test_merge_command_reports_missing_inputs(tmp_path):
    _write(tmp_path / "segments.jsonl", ["a", "b", "c"])
    _write(tmp_path / "p0.jsonl", ["a"])
    _write(tmp_path / "p1.jsonl", ["c"])
    result = CliRunner().invoke(
        cli,
        [
            "merge",
            str(tmp_path / "p0.jsonl"),
            str(tmp_path / "p1.jsonl"),
            "-o",
            str(tmp_path / "m.jsonl"),
            "--expect",
            str(tmp_path / "segments.jsonl"),
            "--by",
            "segment_id",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 inputs have no output" in result.output and "merged 2 records" in result.output


def test_sharded_augment_then_merge_equals_one_run(tmp_path):
    from humpback_plugin.core.records import Segment
    from tests.stub_openai import StubOpenAI, reply

    segments = tmp_path / "segments.jsonl"
    texts = [f"Segment {i}. " + f"Some helpful web text about topic {i}. " * 20 for i in range(12)]
    segments.write_text(
        "".join(json.dumps({"id": Segment.make_id(t), "text": t}) + "\n" for t in texts)
    )

    def handler(req):
        topic = req.prompt_text.split("topic ")[-1].split(".")[0]
        return reply(f"What is topic {topic}?")

    runner = CliRunner()
    with StubOpenAI(handler) as stub:
        common = ["--base-url", stub.base_url, "--model", "stub", "-q", "--temperature", "0"]
        whole = tmp_path / "whole.jsonl"
        assert (
            runner.invoke(cli, ["augment", str(segments), "-o", str(whole), *common]).exit_code == 0
        )
        parts = []
        for k in range(3):
            part = tmp_path / f"part{k}.jsonl"
            args = ["augment", str(segments), "-o", str(part), "--shard", f"{k}/3", *common]
            result = runner.invoke(cli, args)
            assert result.exit_code == 0, result.output
            parts.append(str(part))
    merged = tmp_path / "merged.jsonl"
    args = ["merge", *parts, "-o", str(merged), "--expect", str(segments), "--by", "segment_id"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0 and "no output" not in result.output, result.output

    def ids(path):
        return sorted(json.loads(x)["id"] for x in open(path))

    assert ids(merged) == ids(whole) and len(ids(whole)) == 12
