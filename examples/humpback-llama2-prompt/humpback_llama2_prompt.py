"""Replace the backtranslation prompt with the Llama-2 `[INST]` format on /completions.

Humpback's public submission used `[INST] {instruction} [/INST]`; a backward model trained
that way wants the same framing at inference. Everything else stays built-in.
"""

import humpback_plugin.hookspecs

hookimpl = humpback_plugin.hookspecs.hookimpl


@hookimpl
def backtranslation_request(segment, template):
    prompt = template.format(output=segment.text).strip()
    return {"prompt": f"[INST] {prompt} [/INST]"}


@hookimpl
def postprocess_instruction(text, segment):
    return text.split("[/INST]")[0].strip() or None
