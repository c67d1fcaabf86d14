"""The chat template a model was trained with, and the text it makes of a conversation.

Axolotl renders every training row through the tokenizer's chat template (the run's
configs set ``chat_template: jinja`` with ``axolotl_configs/chat_templates/llama2_inst.jinja``)
and saves that template with the tokenizer in the output folder. A vLLM server must apply
the same template to the chat requests of augment and curate, or the model is asked in a
format it never saw. :func:`load_training_template` finds the template (and the training
tokenizer's special tokens) in a trained model folder, an Axolotl config or a ``.jinja``
file; :meth:`TrainingTemplate.render` renders a conversation the way transformers'
``apply_chat_template`` does (a sandboxed jinja2 environment with ``trim_blocks`` and
``lstrip_blocks``, the special tokens as variables, ``add_generation_prompt`` and
``continue_final_message``), with jinja2 alone: the core needs no transformers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

from humpback_plugin.core.errors import InputError
from humpback_plugin.core.hashing import text_sha256

# Tokenizer attributes transformers passes to a template (its ``special_tokens_map``).
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")
# Appended to the last message for ``continue_final_message``, then cut off with all after it.
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


@dataclass(frozen=True)
class TrainingTemplate:
    """A jinja chat template, where it was found, and the special tokens of the tokenizer
    it was trained with (empty when unknown: see :meth:`with_special_tokens`)."""

    text: str
    source: str
    special_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return text_sha256(self.text)

    def with_special_tokens(self, tokens: dict[str, str]) -> TrainingTemplate:
        return TrainingTemplate(self.text, self.source, {**tokens, **self.special_tokens})

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
    ) -> str:
        """The prompt text of ``messages``, as ``apply_chat_template(tokenize=False)``."""
        chat = [dict(m) for m in messages]
        if continue_final_message:
            chat[-1]["content"] = chat[-1]["content"] + _CONTINUE_TAG
        try:
            text = (
                _environment()
                .from_string(self.text)
                .render(
                    messages=chat,
                    tools=None,
                    documents=None,
                    add_generation_prompt=add_generation_prompt,
                    **self.special_tokens,
                )
            )
        except Exception as exc:  # a template's own raise_exception(), a syntax error
            raise InputError(self.source, None, f"chat template does not render: {exc}") from exc
        if continue_final_message:
            cut = text.rfind(_CONTINUE_TAG.strip())
            if cut < 0:
                raise InputError(self.source, None, "chat template drops the final message")
            spaced = text[cut : cut + len(_CONTINUE_TAG)] == _CONTINUE_TAG
            text = text[:cut] if spaced else text[:cut].rstrip()
        return text


def _raise(message: str) -> None:
    raise ValueError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    # Imported here: every command imports this module, few render a template (jinja2 was
    # a tenth of a model stage's start-up).
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = lambda value, indent=None, **kw: json.dumps(
        value, ensure_ascii=False, indent=indent, **kw
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


# --- finding it -----------------------------------------------------------------------------


def special_tokens_of(folder: str | os.PathLike) -> dict[str, str]:
    """The special tokens a saved tokenizer declares (``tokenizer_config.json``, then
    ``special_tokens_map.json``); empty when the folder has neither."""
    tokens: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = Path(folder) / name
        if not path.is_file():
            continue
        config = _read_json(path)
        for key in SPECIAL_TOKENS:
            value = config.get(key)
            if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
                value = value.get("content")
            if isinstance(value, str):
                tokens[key] = value
    return tokens


def template_of_folder(folder: str | os.PathLike) -> TrainingTemplate | None:
    """The chat template saved with a tokenizer (``chat_template.jinja``, else
    ``tokenizer_config.json``'s ``chat_template``), with its special tokens; None when
    the folder holds no template."""
    folder = Path(folder)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return TrainingTemplate(_read_text(jinja), str(jinja), special_tokens_of(folder))
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        template = _read_json(config_path).get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str):
            return TrainingTemplate(template, str(config_path), special_tokens_of(folder))
    return None


def template_of_axolotl_config(path: str | os.PathLike) -> TrainingTemplate:
    """The template an Axolotl config trains with (``chat_template: jinja`` and its
    ``chat_template_jinja``), with the special tokens of its output folder's tokenizer
    or of a local base model when either is on disk."""
    path = Path(path)
    try:
        config = yaml.safe_load(_read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, None, f"invalid YAML: {exc}") from exc
    text = config.get("chat_template_jinja")
    if isinstance(text, str) and "{" not in text and (path.parent / text).is_file():
        text = _read_text(path.parent / text)  # a template path, as in axolotl_configs/
    if not isinstance(text, str):
        raise InputError(
            path,
            None,
            f"chat_template is {config.get('chat_template')!r}, not an inline jinja template: "
            "give the trained model's folder instead (its tokenizer carries the template)",
        )
    template = TrainingTemplate(text, str(path))
    for folder in (config.get("output_dir"), config.get("base_model")):
        if folder and Path(str(folder)).is_dir() and (tokens := special_tokens_of(folder)):
            return template.with_special_tokens(tokens)
    return template


def load_training_template(path: str | os.PathLike) -> TrainingTemplate:
    """The training template from a trained model or adapter folder, an Axolotl config
    (``.yaml``/``.yml``) or a jinja file."""
    path = Path(path)
    if path.is_dir():
        found = template_of_folder(path)
        if found is None:
            raise InputError(path, None, "no chat template saved here (chat_template.jinja)")
        return found
    if path.suffix in (".yaml", ".yml"):
        return template_of_axolotl_config(path)
    return TrainingTemplate(_read_text(path), str(path))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(path, None, "no such file") from exc
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {exc.start}", "not UTF-8") from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(path, exc.lineno, f"malformed JSON: {exc.msg}") from exc
    return data if isinstance(data, dict) else {}
