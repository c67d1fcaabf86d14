"""The extension surface of humpback-plugin.

Two kinds of hooks:

* **Registration hooks** (``register_*``) are called with a ``register(name, component)``
  function. A plugin adds named components; the user's config picks them by name,
  e.g. ``filters: [length, nav_header, minhash]`` or ``scorer: logprobs``. When two
  plugins register the same name, the one loaded last (third-party plugins load after
  the built-ins) wins, so a plugin can replace a built-in by reusing its name.
* **firstresult hooks** return a value; the first non-``None`` answer wins. Third-party
  plugins are asked before the built-ins, so returning a value replaces the default and
  returning ``None`` defers to it.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("humpback")
hookimpl = pluggy.HookimplMarker("humpback")


# --- corpus side -------------------------------------------------------------------------


@hookspec
def register_corpus_readers(register: Any) -> None:
    """Register readers that turn input files into documents.

    ``register(name, reader)`` where ``reader`` is an object with
    ``matches(path: str) -> bool`` (does this reader handle the path?) and
    ``read(path: str, options: dict) -> Iterator[Document]``. A reader must stream (never
    load a whole corpus), skip records it cannot parse and report them through
    ``options["on_error"](source, offset, message)`` so the rest of the file is still read.
    A reader of one or a few documents per file may set ``per_file = True``: the worker
    processes then read the files themselves (``html`` does), otherwise the main process
    reads every file in order and sends the documents to the workers.
    Built-ins: ``warc`` (WARC/WET via warcio), ``html``, ``jsonl``, ``text``, ``parquet``,
    ``hf`` (Hugging Face datasets, when installed).
    """


@hookspec
def register_extractors(register: Any) -> None:
    """Register main-content extractors, run on a page's HTML before header segmentation.

    ``register(name, extractor)`` where ``extractor(html: str, options: dict) ->
    list[tuple[int, str, str]]`` returns the page's main content in reading order as
    ``(level, text, tag)`` blocks: level 1-6 for a header, 0 for text (``tag`` is the HTML
    tag, used to join list items and table cells with one newline). It must be a
    module-level function (the corpus stage runs it in worker processes) and keep no
    state between pages. Built-ins: ``resiliparse`` (the default: Resiliparse's main
    content with its headers), ``trafilatura`` (markdown output, headers kept) and
    ``lxml`` (the whole page minus boilerplate by tag, class, id and role). Picked by
    ``corpus.extractor`` / ``humpback segment --extractor``.
    """


@hookspec
def register_segmenters(register: Any) -> None:
    """Register segmenters that split a document into header-delimited segments.

    ``register(name, segmenter)`` where ``segmenter(document, options) -> Iterator[Segment]``.
    Built-ins: ``html_headers`` (a header plus the text after it, lower-level subtrees
    included, as in the paper) and ``text_headers`` (markdown/line headers in plain text,
    else paragraphs grouped to the length window). The segment stage picks ``html_headers``
    for documents with HTML and ``text_headers`` otherwise unless configured. The
    configured extractor is passed as ``options["extract"]``. A segment nested in another
    sets ``meta["parent"]`` to the enclosing segment's ``position`` so that
    ``corpus.overlap`` can keep one of them.
    """


@hookspec
def register_segment_filters(register: Any) -> None:
    """Register segment filters (the paper's cleaning heuristics).

    ``register(name, factory)`` where ``factory(**options)`` returns a callable
    ``check(segment) -> str | None``: ``None`` keeps the segment, a string is the rejection
    reason (counted in the summary, written with ``--keep-rejected``). Filters may keep
    state (deduplication), so a fresh one is built per run, and they run in the main
    process in input order. A factory with the attribute ``stateless = True`` promises
    that its check depends on the segment alone: it then runs in the worker processes
    next to the segmenter (faster with ``--workers``). A stateful check may carry a
    ``check.prepare(segment)`` that does the part of its work that depends on the segment
    alone (``minhash``: the signature) in the workers, keeping the result in
    ``segment._prepared`` under a key of its own; the check must still work without it.
    Built-ins: ``length``,
    ``header_empty_or_upper``, ``header_caps_ratio``, ``nav_header``, ``repetitive``,
    ``exact_dedup``, ``minhash``, ``english``.
    """


@hookspec
def register_seed_loaders(register: Any) -> None:
    """Register loaders for human-written seed pairs.

    ``register(name, loader)`` where ``loader`` has ``matches(path: str) -> bool`` and
    ``load(path: str, options: dict) -> Iterator[SeedPair]``. Built-ins: ``oasst_messages``
    (flat oasst1 message table), ``oasst_trees`` (nested ``*.trees.jsonl``) and ``pairs``
    (generic instruction/response JSONL or JSON with a field mapping: Dolly, Alpaca, LIMA).
    """


# --- self-augmentation -------------------------------------------------------------------


@hookspec(firstresult=True)
def backtranslation_request(segment: Any, template: str) -> dict | None:
    """Build the request body part that asks the backward model for an instruction.

    Return ``{"messages": [...]}`` for the chat endpoint or ``{"prompt": "..."}`` for the
    completions endpoint. ``template`` is the text of the configured prompt file with an
    ``{output}`` placeholder. The export stage builds the backward model's training rows
    with the same hook, so training and serving see the same format.
    """


@hookspec(firstresult=True)
def postprocess_instruction(text: str, segment: Any) -> str | None:
    """Clean the backward model's raw answer into an instruction (strip quotes, prefixes)."""


@hookspec
def register_instruction_filters(register: Any) -> None:
    """Register cheap filters on generated instructions, applied before any judge.

    ``register(name, factory)`` where ``factory(**options)`` returns
    ``check(candidate) -> str | None`` (``None`` keeps it, else the reason). Built-ins:
    ``empty``, ``too_long``, ``echo``, ``meta_text``, ``refusal``, ``truncated``.
    """


# --- self-curation -----------------------------------------------------------------------


@hookspec(firstresult=True)
def curation_request(instruction: str, output: str, template: str) -> dict | None:
    """Build the judge request (``{"messages": ...}`` or ``{"prompt": ...}``) for one pair.

    The default puts the paper's rubric first and the instruction and answer after it, so
    every request shares a long prefix that vLLM's prefix cache reuses.
    """


@hookspec(firstresult=True)
def parse_curation_score(text: str) -> int | None:
    """Parse a 1-5 score from a judge's free-text answer; ``None`` when there is none."""


@hookspec
def register_scorers(register: Any) -> None:
    """Register scoring modes.

    ``register(name, scorer)`` where ``scorer`` is an async callable
    ``scorer(client, candidate, context) -> dict`` returning the fields of a scored
    candidate (``score``, ``expected_score``, ``probabilities``, ``judge_text``,
    ``score_status``). Built-ins: ``paper``, ``constrained``, ``logprobs``.
    """


@hookspec
def register_selectors(register: Any) -> None:
    """Register selection strategies that pick the curated set from scored candidates.

    ``register(name, selector)`` with ``selector(scored: list[dict], options) -> list[dict]``.
    Built-ins: ``threshold`` (score >= k, or expected score >= a fractional k),
    ``quantile`` (top fraction), ``target_yield`` and ``calibrated`` (the lowest cut
    whose precision on the run's canaries reaches ``target_precision``). ``options`` also
    holds ``canaries``: the run's scored probes (``label``, ``kind``, ``score``,
    ``expected_score``), for selectors that calibrate on them.
    """


@hookspec
def register_probe_kinds(register: Any) -> None:
    """Register kinds of labelled negative probes (judge-quality canaries).

    ``register(name, make)`` where ``make(pair, ctx) -> str | None`` returns a degraded
    answer to ``pair["instruction"]`` that the Table 1 rubric should score low (``None``
    skips the pair). ``ctx.rng`` is a random stream seeded by the probe seed, the kind and
    the pair, so probes are the same on every run; ``ctx.pairs`` holds every seed pair;
    ``ctx.derive(kind)`` returns another kind's answer for the same pair (recorded as the
    probe's un-degraded twin, ``base_id``). Built-ins: ``other_answer``, ``truncated``,
    ``boilerplate``, ``blog``, ``echo``, ``injected`` (see ``stages/curate/probes.py``).
    """


# --- export ------------------------------------------------------------------------------


@hookspec
def register_exporters(register: Any) -> None:
    """Register dataset formats for Axolotl.

    ``register(name, exporter)`` where ``exporter`` has ``row(system, user, assistant)
    -> dict`` and ``axolotl_dataset(path) -> dict`` (the ``datasets:`` entry of an Axolotl
    config). Built-ins: ``chat_template`` (messages with a system turn) and
    ``instruction`` (user-defined format with a per-row system field).
    """


# --- prompts -----------------------------------------------------------------------------


@hookspec
def register_prompt_templates(register: Any) -> None:
    """Register prompt templates by name.

    ``register(name, path)`` where ``path`` is a text file with the placeholders the
    template's stage fills: ``{output}`` for backtranslation, ``{instruction}`` and
    ``{output}`` for curation. A config or ``--template NAME`` then picks it. The built-in
    ``backtranslation`` and ``curation`` templates ship in the package's ``prompts/``.
    """


# --- command line ------------------------------------------------------------------------


@hookspec
def register_commands(cli: Any) -> None:
    """Add click commands or groups to the ``humpback`` command line (third-party plugins;
    the built-in commands are listed in :mod:`humpback_plugin.cli`)."""
