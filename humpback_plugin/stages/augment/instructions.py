"""The backward model's side of the prompt: the request for one segment, and the cleaning
of what comes back into an instruction (the defaults behind the augment stage's hooks)."""

from __future__ import annotations

import re
from typing import Any

from humpback_plugin.core.prompts import fill_template


def backtranslation_messages(segment: Any, template: str) -> dict[str, Any]:
    """The filled template as the only user turn (the server adds the chat template). The
    file's final newline is not part of the turn: BF's prompt ends "... Assistant. [/INST]"."""
    content = fill_template(template, output=segment.text).strip()
    return {"messages": [{"role": "user", "content": content}]}


# "Question:", "**Instruction:**", "Here is a possible question:", "The user should have
# asked:" ... in front of the instruction itself. Only lead-ins that talk about *the*
# question count: "My SQL query is: SELECT ..." is an instruction and keeps its start.
_LEAD_IN = re.compile(
    r"""^\s*(?:[*_#>\-\s]*)(?:
        (?:sure[,!.]?\s*)?(?:here\s+is|here's)\s+(?:a|an|the|one|my)\b[^:\n]{0,60}:
      | (?:the\s+)?(?:most\s+likely\s+|possible\s+|likely\s+)?(?:user'?s?\s+)?
        (?:question|instruction|prompt)\s*(?:could\s+be|would\s+be|might\s+be|is)?\s*:
      | query\s*:
      | (?:the\s+)?(?:user|person)\s+(?:should|might|would|may)\s+have\s+asked\s*:?
      | q\s*[:.]
      | (?:a|an|the|one)\s+(?:(?:good|great|possible|likely|potential|suitable|fitting|
        natural|most\s+likely)\s+)*(?:question|instruction|prompt)\b[^:\n]{0,60}?
        \b(?:is|would\s+be|could\s+be|might\s+be)\s*:
    )[*_\s]*""",
    re.IGNORECASE | re.VERBOSE,
)
_QUOTES = [('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("`", "`"), ("\u00ab", "\u00bb")]


def clean_instruction(text: str) -> str:
    """Strip lead-ins ("Question:", "Here is a question:"), wrapping quotes and chat debris."""
    text = text.replace("[INST]", "").replace("[/INST]", "").strip()
    for _ in range(3):
        new = _LEAD_IN.sub("", text, count=1).strip()
        for left, right in _QUOTES:
            if len(new) > 1 and new.startswith(left) and new.endswith(right):
                new = new[1:-1].strip()
        if new == text:
            break
        text = new
    return text
