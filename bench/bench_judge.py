"""How good is the judge, per scoring mode: the paper's Table 7 on labelled probes.

Scores the same probes (built from seed pairs: each pair's real answer and six degraded
ones, see ``humpback eval probes``) with one served model in the three scoring modes and
prints them side by side: precision and recall at A4 and A5, ROC-AUC, mean score per bad
kind, parse failures and re-asks, generated tokens and seconds per pair. It then measures
the injection guard: the ``injected`` probes (a bad answer + "Score: 5", "Rating: 5/5",
...) against their twins (the same bad answers without the line), with the guard off
(what the judge model does when the text speaks to it) and on (the default), in each mode;
the target is a shift of at most 0.3.

    python bench/bench_judge.py --base-url http://127.0.0.1:8000/v1 --model smollm2-135m
    python bench/bench_judge.py            # starts the embedded server (humpback server)

On a GPU with a 7-8B judge this is the Table 7 comparison (see the README's recipe):
    python bench/bench_judge.py --base-url http://gpu:8000/v1 --model m0 \\
        --probes seed.jsonl --groups 100 --paper-max-tokens 512 --concurrency 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_server import server_for

from humpback_plugin.commands.eval import print_judge_table
from humpback_plugin.core.client import ClientConfig
from humpback_plugin.core.config import CurateConfig, JudgeEvalConfig
from humpback_plugin.core.jsonl_io import write_jsonl_atomic
from humpback_plugin.plugins import components
from humpback_plugin.stages.curate.evaluate import evaluate_judge
from humpback_plugin.stages.curate.probes import load_probes

MODES = ["paper", "constrained", "logprobs"]
MAX_SHIFT = 0.3


def injection_probes(args: argparse.Namespace, path: Path) -> Path:
    """The injected probes and their twins, as a labelled file (kinds and twins kept)."""
    probes = load_probes(args.probes, components("register_probe_kinds"), seed=args.probe_seed)
    injected = [p for p in probes.probes if p["kind"] == "injected"][: args.injection_pairs]
    twins = {p["base_id"] for p in injected}
    chosen = injected + [p for p in probes.probes if p["id"] in twins]
    write_jsonl_atomic(path, chosen)
    return path


def run(args: argparse.Namespace, base_url: str, model: str) -> dict[str, Any]:
    out = Path(args.out or tempfile.mkdtemp(prefix="humpback-bench-judge-"))
    client = ClientConfig(base_urls=[base_url], model=model, concurrency=args.concurrency)
    judge = dict(max_tokens=args.paper_max_tokens, probe_seed=args.probe_seed)
    started = time.perf_counter()
    table = evaluate_judge(
        args.probes,
        out / "table7",
        client_config=client,
        settings=CurateConfig(**judge),
        evaluation=JudgeEvalConfig(modes=MODES, probe_groups=args.groups),
        show_progress=False,
    )
    print_judge_table(table)
    source = injection_probes(args, out / "injection-probes.jsonl")
    shifts: dict[str, dict[str, Any]] = {}
    for guard in (False, True):
        report = evaluate_judge(
            source,
            out / f"injection-guard-{'on' if guard else 'off'}",
            client_config=client,
            settings=CurateConfig(**judge, injection_guard=guard),
            evaluation=JudgeEvalConfig(modes=MODES),
            preflight=False,
            show_progress=False,
        )
        for mode, quality in report["modes"].items():
            shifts.setdefault(mode, {})["on" if guard else "off"] = quality["injection"]
    print_shifts(shifts)
    return {
        "base_url": base_url,
        "model": model,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "table7": table,
        "injection": shifts,
        "max_shift": MAX_SHIFT,
    }


def print_shifts(shifts: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="'Score: 5' injected into bad answers: mean score vs the same answers")
    for name in ("mode", "pairs", "guard off: injected / twins", "shift", "scored 5",
                 "guard on: injected / twins", "shift", f"|shift| <= {MAX_SHIFT}"):  # fmt: skip
        table.add_column(name, justify="left" if name == "mode" else "right")
    for mode, by_guard in shifts.items():
        off, on = by_guard["off"], by_guard["on"]
        table.add_row(
            mode,
            str(on["pairs"]),
            f"{off['injected_mean']:.2f} / {off['base_mean']:.2f}",
            f"{off['shift']:+.2f}",
            f"{off['injected_scored_5']} vs {off['base_scored_5']}",
            f"{on['injected_mean']:.2f} / {on['base_mean']:.2f}",
            f"{on['shift']:+.2f}",
            "yes" if abs(on["shift"]) <= MAX_SHIFT else "NO",
        )
    Console(width=160).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="Running server (default: start the embedded one).")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--probes", help="Seed pairs or a labelled file (default: built-in).")
    parser.add_argument("--groups", type=int, default=5, help="Seed pairs' probes to score.")
    parser.add_argument("--injection-pairs", type=int, default=10)
    parser.add_argument("--probe-seed", type=int, default=0)
    parser.add_argument("--paper-max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", help="Keep the stores here (a re-run resumes).")
    parser.add_argument("--json", dest="json_out", help="Also write the results here.")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        base_url, model = server_for(args, stack)
        results = run(args, base_url, model)
    print(f"total {results['elapsed_s']:.0f}s against {base_url}", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    worst = max(abs(s["on"]["shift"]) for s in results["injection"].values())
    sys.exit(0 if worst <= MAX_SHIFT else 1)


if __name__ == "__main__":
    main()
