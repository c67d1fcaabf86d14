"""The curate stage's built-in plugin: the judge's request and score parsing (``trylast``
defaults a plugin can answer first), the scoring modes, the selectors and the kinds of
labelled probes that measure the judge."""

from __future__ import annotations

from typing import Any

from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.stages.curate.probes import BUILTIN_PROBE_KINDS
from humpback_plugin.stages.curate.scoring import BUILTIN_SCORERS, default_request, parse_score
from humpback_plugin.stages.curate.selectors import BUILTIN_SELECTORS


@hookimpl(trylast=True)
def curation_request(instruction: str, output: str, template: str) -> dict | None:
    return default_request(instruction, output, template)


@hookimpl(trylast=True)
def parse_curation_score(text: str) -> int | None:
    return parse_score(text)


@hookimpl
def register_scorers(register: Any) -> None:
    for name, scorer in BUILTIN_SCORERS.items():
        register(name, scorer)


@hookimpl
def register_selectors(register: Any) -> None:
    for name, selector in BUILTIN_SELECTORS.items():
        register(name, selector)


@hookimpl
def register_probe_kinds(register: Any) -> None:
    for name, make in BUILTIN_PROBE_KINDS.items():
        register(name, make)
