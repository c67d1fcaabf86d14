"""Prompt templates: load one by name or path, with the sha256 that provenance records.

A name (``curation``, ``backtranslation.txt``) is looked up in the repository's ``prompts/``
folder, which the package reaches through the link ``humpback_plugin/prompt_templates``
(a wheel ships the files themselves there). Anything that is an existing file path is read
as given: a user's own template.

Placeholders are ``{output}`` (backtranslation) and ``{instruction}`` / ``{output}``
(curation). They are filled with plain string replacement, not ``str.format``, so braces
in web text or in a template never break a request.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent / "prompt_templates"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    text: str
    path: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def short_hash(self) -> str:
        """First 16 hex digits of the sha256: what records carry as ``template_hash``."""
        return self.sha256[:16]

    def fill(self, **values: str) -> str:
        return fill_template(self.text, **values)


def fill_template(text: str, **values: str) -> str:
    """Replace ``{name}`` placeholders; a value containing ``{output}`` is never re-filled."""
    positions = sorted((text.find("{" + k + "}"), k) for k in values if "{" + k + "}" in text)
    out, cursor = [], 0
    for pos, key in positions:
        out.append(text[cursor:pos])
        out.append(values[key])
        cursor = pos + len(key) + 2
    out.append(text[cursor:])
    return "".join(out)


def prompt_dirs() -> list[Path]:
    """Where names are looked up."""
    return [PACKAGE_DIR] if PACKAGE_DIR.is_dir() else []


def load_prompt(
    name_or_path: str | os.PathLike, *, required: tuple[str, ...] = ()
) -> PromptTemplate:
    """Read a template by path or by name; ``required`` placeholders must be present."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        path = candidate
    else:
        name = str(name_or_path)
        filename = name if name.endswith(".txt") else f"{name}.txt"
        found = [d / filename for d in prompt_dirs() if (d / filename).is_file()]
        if not found:
            looked = ", ".join(str(d) for d in prompt_dirs()) or "no prompt folders"
            raise FileNotFoundError(
                f"prompt template {name!r} is neither a file nor a known name (looked in {looked})"
            )
        path = found[0]
    text = path.read_text(encoding="utf-8")
    missing = [p for p in required if "{" + p + "}" not in text]
    if missing:
        raise ValueError(
            f"prompt template {path} lacks the placeholder(s) "
            + ", ".join("{" + m + "}" for m in missing)
        )
    return PromptTemplate(name=path.stem, text=text, path=str(path))
