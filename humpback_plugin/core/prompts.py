"""Prompt templates: load one by name or path, with the sha256 that provenance records.

A name (``curation``, ``backtranslation.txt``) is one a plugin registered
(``register_prompt_templates``) or a file of the repository's ``prompts/`` folder, which the
package reaches through the link ``humpback_plugin/prompt_templates`` (a wheel ships the files
themselves there). Anything that is an existing file path is read as given: a user's own
template.

Placeholders are ``{output}`` (backtranslation) and ``{instruction}`` / ``{output}``
(curation). They are filled with plain string replacement, not ``str.format``, so braces
in web text or in a template never break a request.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from humpback_plugin.core.errors import InputError, UnknownComponent
from humpback_plugin.core.hashing import text_sha256

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "prompt_templates"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str
    path: str

    @functools.cached_property
    def sha256(self) -> str:
        # Cached: records carry the template's hash, so it is asked for once a request.
        return text_sha256(self.text)

    @property
    def short_hash(self) -> str:
        """First 16 hex digits of the sha256: what records carry as ``template_hash``."""
        return self.sha256[:16]

    def fill(self, **values: str) -> str:
        return fill_template(self.text, **values)


def fill_template(text: str, **values: str) -> str:
    """Replace ``{name}`` placeholders; a value containing ``{output}`` is never re-filled."""
    positions = _placeholders(text, tuple(values))
    out, cursor = [], 0
    for pos, key in positions:
        out.append(text[cursor:pos])
        out.append(values[key])
        cursor = pos + len(key) + 2
    out.append(text[cursor:])
    return "".join(out)


@functools.lru_cache(maxsize=64)  # a stage fills one template for every request
def _placeholders(text: str, names: tuple[str, ...]) -> list[tuple[int, str]]:
    """Where each ``{name}`` first occurs in ``text``, in text order."""
    return sorted((text.find("{" + k + "}"), k) for k in names if "{" + k + "}" in text)


def builtin_templates() -> dict[str, Path]:
    """The templates shipped in the package's ``prompts/``, by name (file stem)."""
    if not PACKAGE_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(PACKAGE_DIR.glob("*.txt"))}


def load_prompt(
    name_or_path: str | os.PathLike,
    *,
    required: tuple[str, ...] = (),
    named: dict[str, str | os.PathLike] | None = None,
) -> PromptTemplate:
    """Read a template by path or by name; ``required`` placeholders must be present.

    Names are looked up in ``named`` (what plugins register; see
    :func:`humpback_plugin.plugins.load_template`), then among the built-in templates.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        path = candidate
    else:
        name = str(name_or_path).removesuffix(".txt")
        known = {**builtin_templates(), **{k: Path(v) for k, v in (named or {}).items()}}
        if name not in known:
            raise UnknownComponent(
                f"prompt template {str(name_or_path)!r} is neither a file nor a known name; "
                f"known: {', '.join(sorted(known)) or 'none'}"
            )
        path = known[name]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"byte {exc.start}", "not UTF-8") from exc
    missing = [p for p in required if "{" + p + "}" not in text]
    if missing:
        raise InputError(
            path, None, "lacks the placeholder(s) " + ", ".join("{" + m + "}" for m in missing)
        )
    return PromptTemplate(name=path.stem, text=text, path=str(path))
