"""Augment and curate against a real vLLM server (the session fixture ``vllm_server``).

Small on purpose: the default server is SmolLM2-135M on CPU, so generations are short.
The fault cases (no score, out-of-range score, several scores, a "Score: 5" planted in
the candidate) are driven precisely by the stub server in ``test_curate.py``; here the
real server shows the requests are accepted as sent (structured outputs, assistant
prefill, logprobs shape) and a real over-length prompt becomes a recorded failure.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import AugmentConfig, CurateConfig
from humpback_plugin.core.engine import LocalEngine
from humpback_plugin.stages.augment.stage import augment
from humpback_plugin.stages.curate.stage import curate

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SEGMENTS = [
    (
        "How to repot an orchid",
        "Orchids do not grow in soil. They need a loose, airy mix, usually fir bark with a "
        "little perlite or sphagnum moss, because their roots take up water and air at the "
        "surface. Repot every one to two years, right after flowering, when new roots start "
        "to appear. Water the plant the day before so the roots are supple. Ease the orchid "
        "out of its pot, shake off the old mix and cut away any roots that are brown, mushy "
        "or papery with sterile scissors; healthy roots are firm and green or silver. Choose "
        "a pot only slightly larger than the root ball, with plenty of drainage holes. Hold "
        "the plant so the base of the lowest leaf sits just below the rim, and pour fresh "
        "bark around the roots, tapping the pot so the pieces settle. Do not pack it down. "
        "Wait about a week before watering again so that any damaged roots can callus over.",
    ),
    (
        "Keeping a sourdough starter alive",
        "A sourdough starter is a culture of wild yeast and lactic acid bacteria living in a "
        "paste of flour and water. To keep it active at room temperature, feed it once or "
        "twice a day: discard all but about 50 grams, then add 50 grams of flour and 50 grams "
        "of lukewarm water and stir well. A healthy starter doubles in size within four to "
        "eight hours of a feeding and smells pleasantly sour. If you bake only once a week, "
        "keep it in the refrigerator and feed it weekly; take it out a day before baking and "
        "give it two feedings at room temperature so it is lively again. A layer of grey "
        "liquid on top means it is hungry, not dead: pour it off and feed it. Pink or orange "
        "streaks, on the other hand, mean the culture is contaminated and should be thrown "
        "away.",
    ),
    (
        "Cleaning a bicycle chain",
        "A clean chain shifts better and lasts longer. Shift onto the smallest sprocket, then "
        "apply a degreaser to the chain while turning the pedals backwards. Scrub the rollers "
        "and side plates with a stiff brush, or use a chain-cleaning box that clamps onto the "
        "chain. Rinse with water, making sure not to spray directly into the hubs or the "
        "bottom bracket, and dry the chain thoroughly with a rag. Once it is dry, put one drop "
        "of lubricant on each roller while slowly turning the cranks, let it soak in for a few "
        "minutes, and wipe off the excess from the outside of the chain: lubricant on the "
        "outside only attracts dirt. Check the chain for wear with a chain checker while you "
        "are at it, and replace it once it has stretched by half a percent.",
    ),
]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def client_config(vllm_server) -> ClientConfig:
    return ClientConfig(base_urls=[vllm_server.base_url], model=vllm_server.model, concurrency=4)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory, client_config, vllm_server) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("real-augment")
    segments = folder / "segments.jsonl"
    segments.write_text(
        "".join(
            json.dumps({"id": f"seg{i}", "header": h, "text": t, "source": "test"}) + "\n"
            for i, (h, t) in enumerate(SEGMENTS)
        )
    )
    assert all(600 <= len(t) <= 3000 for _, t in SEGMENTS)
    out = folder / "candidates.jsonl"
    summary = augment(
        segments,
        out,
        client_config=client_config,
        settings=AugmentConfig(max_tokens=48, seed=1),
        show_progress=False,
    )
    return out, summary


def test_augment_real_segments(candidates, vllm_server):
    out, summary = candidates
    assert summary["failed"] == 0
    assert summary["generations"] == len(SEGMENTS)
    assert summary["accepted"] + summary["rejected"] == len(SEGMENTS)
    assert summary["completion_tokens"] > 0
    rows = read_jsonl(out) + read_jsonl(Path(summary["rejected_path"]))
    for row in rows:
        prov = row["provenance"]
        assert prov["server_url"] == vllm_server.base_url.rstrip("/")
        assert prov["model"] == vllm_server.model
        assert prov["params"]["temperature"] == 0.7 and prov["params"]["seed"] == 1
        assert prov["usage"]["prompt_tokens"] > 100
        assert row["output"] in {t for _, t in SEGMENTS}


def _pairs(tmp_path: Path, extra: list[tuple[str, str]] = ()) -> Path:
    pairs = [
        ("How do I repot an orchid?", SEGMENTS[0][1]),
        ("How do I keep a sourdough starter alive?", SEGMENTS[1][1]),
        ("How do I clean a bike chain?", SEGMENTS[2][1]),
        *extra,
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "segment_id": f"s{i}", "instruction": a, "output": b}) + "\n"
            for i, (a, b) in enumerate(pairs)
        )
    )
    return path


@pytest.mark.parametrize("mode", ["paper", "constrained", "logprobs"])
def test_curate_real_scores_every_pair(mode, tmp_path, client_config):
    pairs = _pairs(tmp_path)
    summary = curate(
        pairs,
        tmp_path / "scored.jsonl",
        client_config=client_config,
        selected_path=tmp_path / "selected.jsonl",
        # a 135M judge rambles: keep the paper mode short; unparsed answers are recovered.
        # No canaries here: test_judge_real.py measures the judge on them.
        settings=CurateConfig(mode=mode, max_tokens=24, canaries=False),
        show_progress=False,
    )
    rows = read_jsonl(tmp_path / "scored.jsonl")
    assert len(rows) == 3 and summary["failed"] == 0
    assert all(r["score"] in (1, 2, 3, 4, 5) for r in rows)  # 100% scored
    assert all(r["score_status"] in ("ok", "recovered") for r in rows)
    assert summary["with_score"] == 3
    if mode == "paper":
        assert summary["completion_tokens_per_pair"] > 5
    else:
        assert summary["completion_tokens_per_pair"] <= 2
    if mode == "logprobs":
        for r in rows:
            assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
            assert 1 <= r["expected_score"] <= 5
            # vLLM 0.32 returns raw logprobs taken after the grammar mask: the digits hold
            # all of the mass (masked tokens come back as -9999)
            assert r["logprob_mass"] == pytest.approx(1.0, abs=0.01)
            assert r["score"] == int(max(r["probabilities"], key=r["probabilities"].get))
    # vLLM exposes /metrics: the counters must be there, and the rubric (~450 tokens) that
    # every request shares must have been served from the prefix cache
    cache = summary["prefix_cache"]
    assert cache is not None, "no prefix-cache counters from the real vLLM's /metrics"
    assert cache["queried_tokens"] > 0 and cache["hit_tokens"] > 0


def test_curate_real_from_two_client_processes(tmp_path, client_config, vllm_server):
    """``--client-processes 2``: the judge's requests leave from two forked processes,
    this one stores and writes; every pair is scored by the real server."""
    pairs = _pairs(tmp_path)
    with LocalEngine(workers=1, client_processes=2) as engine:
        pids = [proc.pid for proc in engine._clients._procs]
        summary = curate(
            pairs,
            tmp_path / "scored.jsonl",
            client_config=client_config,
            settings=CurateConfig(mode="logprobs", canaries=False),
            show_progress=False,
            engine=engine,
        )
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    rows = read_jsonl(tmp_path / "scored.jsonl")
    assert summary["failed"] == 0 and summary["requests"] == len(rows) == 3
    assert all(r["score"] in (1, 2, 3, 4, 5) for r in rows)
    assert {r["judge_provenance"]["server_url"] for r in rows} == {vllm_server.base_url.rstrip("/")}


def test_curate_real_context_length_error_is_a_failure(tmp_path, client_config):
    too_long = " ".join(["The quick brown fox jumps over the lazy dog."] * 600)  # > 2048 tokens
    pairs = _pairs(tmp_path, extra=[("Summarise this.", too_long)])
    summary = curate(
        pairs,
        tmp_path / "scored.jsonl",
        client_config=client_config,
        settings=CurateConfig(mode="constrained", canaries=False),
        show_progress=False,
    )
    assert summary["failed_by_reason"] == {"http_400": 1}
    assert [r["id"] for r in read_jsonl(tmp_path / "scored.jsonl")] == ["p0", "p1", "p2"]
    (failure,) = read_jsonl(Path(summary["failures_path"]))
    assert failure["input_id"] == "p3" and failure["status_code"] == 400
    assert math.isfinite(summary["elapsed_s"])
