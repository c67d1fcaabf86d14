"""Build a small synthetic run directory shaped like the one ``humpback run`` writes.

Deterministic for a given ``seed``. ``upto`` stops the run after a stage (later stages are
``pending`` and their files absent), to test reports on half-finished runs. One segment
carries a ``<script>`` in its header and text, to test escaping. Every path comes from
:class:`RunLayout`, and the side files of rejected rows carry the fields their stages
write (segments: ``reason``, ``rejected_by``; augment: ``rejected_reason``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from humpback_plugin.core.layout import RunLayout, stage_names

STAGES = tuple(stage_names(2))

SCRIPT = '<script>alert("pwned")</script>'
WORDS = [
    "whale",
    "song",
    "ocean",
    "krill",
    "migrate",
    "breach",
    "pod",
    "calf",
    "baleen",
    "humpback",
    "feed",
    "dive",
]


def _text(rng: random.Random, low: int, high: int) -> str:
    target = rng.randint(low, high)
    words: list[str] = []
    length = 0
    while length < target:
        words.append(rng.choice(WORDS))
        length += len(words[-1]) + 1
    return " ".join(words)[:target]


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def _io(layout: RunLayout, path: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"path": layout.relative(path), "sha256": "0" * 64, "records": len(records)}


def make_run_dir(
    path: Path,
    *,
    n_seed: int = 40,
    n_segments: int = 120,
    seed: int = 0,
    upto: str | None = None,
    manifest: bool = True,
) -> dict[str, Any]:
    """Write a run directory under ``path``; returns the numbers a report should show."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    layout = RunLayout(path)
    last = STAGES.index(upto) if upto else len(STAGES) - 1
    done = set(STAGES[: last + 1])
    stages: dict[str, dict[str, Any]] = {
        name: {"status": "done" if name in done else "pending", "iteration": None, "model": None}
        for name in STAGES
    }
    expected: dict[str, Any] = {"done": done}

    seeds = [
        {
            "id": f"seed-{i}",
            "instruction": _text(rng, 40, 300),
            "output": _text(rng, 200, 2000),
            "source": {"dataset": "oasst1"},
        }
        for i in range(n_seed)
    ]
    _write(layout.seed, seeds)
    stages["seed"].update(outputs=[_io(layout, layout.seed, seeds)], elapsed_s=1.5)
    expected["seed_instruction_mean"] = sum(len(s["instruction"]) for s in seeds) / n_seed

    segments = []
    for i in range(n_segments):
        header = _text(rng, 10, 60)
        text = _text(rng, 600, 3000)
        if i == 3:
            header = f"Header {SCRIPT}"
            text = f"Intro {SCRIPT} & more text " + text
        segments.append(
            {
                "id": f"seg-{i}",
                "text": text,
                "header": header,
                "source": "web/sample.warc.gz",
                "url": f"https://example.org/{i}",
                "position": i % 5,
                "meta": {},
            }
        )
    rejected = [
        {**segments[0], "id": f"rej-{i}", "rejected_by": f"{reason}_filter", "reason": reason}
        for i, reason in enumerate(["length"] * 7 + ["nav_header"] * 3 + ["minhash"] * 2)
    ]
    if "segments" in done:
        _write(layout.segments, segments)
        _write(layout.segments_rejected, rejected)
        stages["segments"].update(
            outputs=[
                _io(layout, layout.segments, segments),
                _io(layout, layout.segments_rejected, rejected),
            ],
            elapsed_s=12.0,
            stats={
                "documents": 30,
                "segments_in": n_segments + len(rejected),
                "kept": n_segments,
                "rejected_by_reason": {"length": 7, "nav_header": 3, "minhash": 2},
                "by_source": {"web/sample.warc.gz": n_segments},
            },
        )
    else:
        return _finish(path, stages, expected, manifest)

    for name in ("backward_data", "train_backward"):
        if name in done:
            stages[name].update(model="backward-7b" if name == "train_backward" else None)
    if "augment" not in done:
        return _finish(path, stages, expected, manifest)

    candidates = []
    prompt_tokens = completion_tokens = 0
    for segment in segments:
        usage = {"prompt_tokens": rng.randint(200, 900), "completion_tokens": rng.randint(10, 80)}
        prompt_tokens += usage["prompt_tokens"]
        completion_tokens += usage["completion_tokens"]
        candidates.append(
            {
                "id": f"cand-{segment['id']}",
                "segment_id": segment["id"],
                "instruction": _text(rng, 50, 500),
                "output": segment["text"],
                "header": segment["header"],
                "source": segment["source"],
                "finish_reason": "stop",
                "provenance": {
                    "server_url": "http://127.0.0.1:8000/v1",
                    "model": "backward-7b",
                    "template_hash": "abc",
                    "params": {"temperature": 0.7},
                    "started_at": 1.0,
                    "finished_at": 2.0,
                    "usage": usage,
                },
            }
        )
    # As augment writes them: the generation with the name of the check that failed.
    aug_rejected = [
        {**candidates[0], "rejected_reason": "echo"},
        {**candidates[1], "rejected_reason": "refusal"},
    ]
    _write(layout.candidates, candidates)
    _write(layout.candidates_rejected, aug_rejected)
    stages["augment"].update(
        model="backward-7b",
        server_urls=["http://127.0.0.1:8000/v1"],
        inputs=[_io(layout, layout.segments, segments)],
        outputs=[_io(layout, layout.candidates, candidates)],
        elapsed_s=60.0,
        stats={
            "inputs": n_segments,
            "kept": len(candidates),
            "rejected_by_reason": {"echo": 1, "refusal": 1},
            "failed": 0,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "elapsed_s": 60.0,
            "requests_per_s": n_segments / 60.0,
        },
    )
    expected["augment_prompt_tokens"] = prompt_tokens
    expected["augment_completion_tokens"] = completion_tokens

    for k, (train, curate) in enumerate((("train_m0", "curate_1"), ("train_m1", "curate_2")), 1):
        if train in done:
            stages[train].update(model=f"m{k - 1}-7b", iteration=k - 1)
        if curate not in done:
            break
        scored = []
        histogram = {str(s): 0 for s in range(1, 6)}
        for candidate in candidates:
            score = rng.choice([1, 2, 3, 3, 4, 4, 4, 5, 5, None])
            status = "failed" if score is None else rng.choice(["ok", "ok", "recovered"])
            if score is not None:
                histogram[str(score)] += 1
            scored.append(
                {
                    **candidate,
                    "score": score,
                    "expected_score": None if score is None else score - rng.random() * 0.5,
                    "probabilities": None,
                    "judge_text": f"The answer is fine. Score: {score}",
                    "score_status": status,
                    "scoring_mode": "paper",
                    "iteration": k,
                    "judge_provenance": {
                        "server_url": "http://127.0.0.1:8001/v1",
                        "model": f"m{k - 1}-7b",
                        "template_hash": "def",
                        "params": {},
                        "started_at": 1.0,
                        "finished_at": 2.0,
                        "usage": {"prompt_tokens": 700, "completion_tokens": 30},
                    },
                }
            )
        curated = [r for r in scored if r["score"] is not None and r["score"] >= 4]
        _write(layout.scored(k), scored)
        _write(layout.curated(k), curated)
        stages[curate].update(
            model=f"m{k - 1}-7b",
            iteration=k,
            server_urls=["http://127.0.0.1:8001/v1"],
            inputs=[_io(layout, layout.candidates, candidates)],
            outputs=[_io(layout, layout.curated(k), curated)],
            elapsed_s=30.0,
            stats={
                "inputs": len(candidates),
                "scored": len(scored),
                "selected": len(curated),
                "threshold": 4,
                "mode": "paper",
                "score_histogram": histogram,
                "recovered": sum(r["score_status"] == "recovered" for r in scored),
                "failed": sum(r["score"] is None for r in scored),
                "prompt_tokens": 700 * len(scored),
                "completion_tokens": 30 * len(scored),
                "elapsed_s": 30.0,
            },
        )
        expected[f"histogram_{k}"] = histogram
        expected[f"selected_{k}"] = len(curated)
        expected[f"unscored_{k}"] = sum(r["score"] is None for r in scored)
    return _finish(path, stages, expected, manifest)


def _finish(
    path: Path, stages: dict[str, Any], expected: dict[str, Any], manifest: bool
) -> dict[str, Any]:
    if manifest:
        data = {
            "version": 1,
            "run_id": "test-run-001",
            "created_at": "2024-06-01T12:00:00Z",
            "config": {
                "base_model": "meta-llama/Llama-2-7b-hf",
                "curate": {"threshold": 4, "mode": "paper"},
                "note": "<b>not bold</b>",
            },
            "stages": stages,
        }
        RunLayout(path).manifest.write_text(json.dumps(data, indent=2), encoding="utf-8")
    expected["stages"] = stages
    return expected
