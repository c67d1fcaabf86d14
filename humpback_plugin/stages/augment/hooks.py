"""The augment stage's built-in plugin: the backward model's request, the cleaning of its
answer, and the instruction filters. Plugins answer the firstresult hooks first; these
``trylast`` defaults answer when no plugin does."""

from __future__ import annotations

from typing import Any

from humpback_plugin.hookspecs import hookimpl
from humpback_plugin.stages.augment.instruction_filters import BUILTIN_FILTERS
from humpback_plugin.stages.augment.instructions import backtranslation_messages, clean_instruction


@hookimpl(trylast=True)
def backtranslation_request(segment: Any, template: str) -> dict | None:
    return backtranslation_messages(segment, template)


@hookimpl(trylast=True)
def postprocess_instruction(text: str, segment: Any) -> str | None:
    return clean_instruction(text)


@hookimpl
def register_instruction_filters(register: Any) -> None:
    for name, factory in BUILTIN_FILTERS.items():
        register(name, factory)
