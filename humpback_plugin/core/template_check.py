"""Before a long stage: does the server apply the chat template the model was trained with?

vLLM applies one chat template to every chat request, LoRA adapters included, and without
``--chat-template`` it is the base model's: a backward model trained on ``[INST] ... [/INST]``
rows would be asked in ChatML. The check renders probe conversations two ways and compares
token ids, both counted by the server's own tokenizer:

* served: ``POST /tokenize`` with ``messages`` (the server's template, as a chat request);
* trained: the training template rendered here (:class:`~.chat_template.TrainingTemplate`,
  as transformers renders it), then ``POST /tokenize`` with that text as a ``prompt`` and
  ``add_special_tokens: false`` (the template writes its own special tokens).

The probes are the shapes the stages send: one user turn with the generation prompt, a
system turn before it, and an assistant prefill continued (curate's ``Score: ``). A server
without ``/tokenize`` (not vLLM) is reported as not checked.
"""

from __future__ import annotations

from typing import Any

from humpback_plugin.core.chat_template import TrainingTemplate
from humpback_plugin.core.client import OpenAIClient
from humpback_plugin.core.errors import TemplateMismatch

_USER = "Probe: is this the template I was trained with?\nSecond line, {braces} & <tags>."
PROBES: tuple[tuple[str, list[dict[str, str]], dict[str, bool]], ...] = (
    ("one user turn", [{"role": "user", "content": _USER}], {"add_generation_prompt": True}),
    (
        "a system turn, then a user turn",
        [
            {"role": "system", "content": "Answer in the style of an AI Assistant."},
            {"role": "user", "content": _USER},
        ],
        {"add_generation_prompt": True},
    ),  # fmt: skip
    (
        "an assistant prefill to continue",
        [{"role": "user", "content": _USER}, {"role": "assistant", "content": "Score: "}],
        {"continue_final_message": True},
    ),
)


async def check_chat_template(
    client: OpenAIClient, template: TrainingTemplate, *, fix: str
) -> dict[str, Any]:
    """Compare the served and the trained rendering of every probe on every server URL;
    raise :class:`TemplateMismatch` naming both renderings and ``fix`` on a difference."""
    report: dict[str, Any] = {"template": template.source, "template_sha256": template.sha256}
    for url in client.base_urls:
        report[url] = await _check_url(client, url, template, fix)
    return report


async def _check_url(client: OpenAIClient, url: str, template: TrainingTemplate, fix: str) -> str:
    guessed = not template.special_tokens
    if guessed:
        tokens = {"bos_token": "", "eos_token": "", **await _server_bos(client, url)}
        template = template.with_special_tokens(tokens)
        fix += (
            f" (the template came without its tokenizer: bos_token was taken as "
            f"{tokens['bos_token']!r}; give the trained model's folder for an exact check)"
        )
    for name, messages, flags in PROBES:
        served = await client.tokenize(
            url, {"messages": messages, "add_generation_prompt": False, **flags}
        )
        if served is None:
            return "not checked: the server has no /tokenize endpoint"
        text = template.render(messages, **flags)
        trained = await client.tokenize(url, {"prompt": text, "add_special_tokens": False})
        if served != trained:
            raise TemplateMismatch(await _mismatch(client, url, name, served, trained, text, fix))
    return f"same token ids for {len(PROBES)} probe conversations"


async def _server_bos(client: OpenAIClient, url: str) -> dict[str, str]:
    """The BOS token the server's tokenizer adds, for a template file that came without
    its tokenizer's special tokens."""
    ids = await client.tokenize(url, {"prompt": "", "add_special_tokens": True})
    bos = await client.detokenize(url, ids[:1]) if ids else None
    return {"bos_token": bos} if bos else {}


async def _mismatch(
    client: OpenAIClient,
    url: str,
    probe: str,
    served: list[int],
    trained: list[int],
    trained_text: str,
    fix: str,
) -> str:
    first = next(
        (i for i, (a, b) in enumerate(zip(served, trained, strict=False)) if a != b),
        min(len(served), len(trained)),
    )
    served_text = await client.detokenize(url, served) or ""
    served_at = await client.detokenize(url, served[first : first + 8]) or ""
    trained_at = await client.detokenize(url, trained[first : first + 8]) or ""
    return (
        f"chat template mismatch: {url} does not render chat requests for {client.model!r} "
        f"the way it was trained (probe: {probe}).\n"
        f"  server renders:   {_short(served_text)} ({len(served)} tokens)\n"
        f"  training renders: {_short(trained_text)} ({len(trained)} tokens)\n"
        f"  first difference at token {first}: server {served_at!r} vs training {trained_at!r}\n"
        f"Fix: {fix}; or pass --skip-template-check (serving.template_check: false) to go on "
        "with the server's template."
    )


def _short(text: str, limit: int = 240) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
