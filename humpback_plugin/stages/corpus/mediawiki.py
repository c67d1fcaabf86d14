"""MediaWiki XML dumps (``pages-articles.xml[.bz2]``): one document per article.

The reader streams the dump with ``iterparse`` (one page in memory at a time, whatever
the dump's size; ``.bz2`` and ``.gz`` are decompressed on the fly) and yields each article's
raw wikitext, marked ``meta["markup"] = "wikitext"``. Redirects and pages outside the
article namespace (talk, user, templates, categories...) are skipped and counted. The
wikitext is turned into text in the worker processes (:func:`wikitext_to_markdown`, with
mwparserfromhell), where ``== Section ==`` headings become markdown headers, so each
article's sections become header-delimited segments under the article's title.
"""

from __future__ import annotations

import bz2
import gzip
import re
import zlib
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree

from humpback_plugin.core.errors import InputError
from humpback_plugin.core.records import Document
from humpback_plugin.stages.corpus.readers import SUPPORTED_FORMATS, UnrecognisedFormat, _name

# Sections that hold lists of links and citations, not prose.
SKIPPED_SECTIONS = frozenset(
    [
        "references",
        "external links",
        "see also",
        "further reading",
        "notes",
        "bibliography",
        "sources",
        "citations",
        "footnotes",
        "notes and references",
    ]
)
# Tags whose content is not running text.
_DROPPED_TAGS = frozenset(["ref", "references", "gallery", "math", "timeline", "score", "table"])
_NAMESPACED = re.compile(r"^\s*:?\s*[A-Za-z][\w -]*:")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _open(path: str) -> Any:
    name = _name(path)
    if name.endswith(".bz2"):
        return bz2.open(path, "rb")
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


class MediaWikiReader:
    """Articles of a MediaWiki XML export (``.xml``, ``.xml.bz2``, ``.xml.gz``).

    A file whose root element is not ``<mediawiki>`` stops the run with an error naming
    it (an ``.xml`` that is not a dump would otherwise give an empty output).
    """

    name = "mediawiki"

    def matches(self, path: str) -> bool:
        return _name(path).removesuffix(".bz2").removesuffix(".gz").endswith(".xml")

    def read(self, path: str, options: dict[str, Any]) -> Iterator[Document]:
        on_skip = options.get("on_skip", lambda source, why: None)
        pages = 0
        try:
            with _open(path) as fh:
                events = ElementTree.iterparse(fh, events=("start", "end"))
                _event, root = next(events)
                if _local(root.tag) != "mediawiki":
                    raise UnrecognisedFormat(
                        path,
                        None,
                        f"not a MediaWiki XML dump (root element <{_local(root.tag)}>); "
                        f"supported: {SUPPORTED_FORMATS}",
                    )
                base_url = None
                for event, elem in events:
                    if event != "end":
                        continue
                    tag = _local(elem.tag)
                    if tag == "base" and base_url is None:
                        base_url = (elem.text or "").rsplit("/", 1)[0] + "/"
                    elif tag == "page":
                        pages += 1
                        doc = _page_document(path, elem, base_url, on_skip)
                        # Free the page (and the root's reference to it): memory stays flat.
                        elem.clear()
                        root.clear()
                        if doc is not None:
                            yield doc
        except ElementTree.ParseError as exc:
            line, column = exc.position
            raise InputError(
                path, f"line {line}", f"broken XML after {pages} pages (column {column}): {exc}"
            ) from exc
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(path, f"after {pages} pages", f"unreadable: {exc}") from exc


def _child(elem: Any, name: str) -> Any:
    for child in elem:
        if _local(child.tag) == name:
            return child
    return None


def _page_document(path: str, page: Any, base_url: str | None, on_skip: Any) -> Document | None:
    title = (getattr(_child(page, "title"), "text", None) or "").strip()
    namespace = (getattr(_child(page, "ns"), "text", None) or "0").strip()
    page_id = (getattr(_child(page, "id"), "text", None) or "").strip()
    if _child(page, "redirect") is not None:
        on_skip(path, "redirect page")
        return None
    if namespace != "0":
        on_skip(path, "not an article (namespace)")
        return None
    revision = _child(page, "revision")
    text = getattr(_child(revision, "text"), "text", None) if revision is not None else None
    if not text or not text.strip():
        on_skip(path, "empty page")
        return None
    if text.lstrip()[:9].lower() == "#redirect":
        on_skip(path, "redirect page")
        return None
    url = f"{base_url}{title.replace(' ', '_')}" if base_url else None
    return Document(
        source=path,
        offset=f"page {page_id or title}",
        url=url,
        text=text,
        meta={"id": page_id or title, "title": title, "markup": "wikitext"},
    )


# --- wikitext to text ----------------------------------------------------------------------


def _drop_markup(wikicode: Any) -> None:
    """Remove citations, tables, galleries, files, categories and interlanguage links."""
    doomed = [
        node
        for node in wikicode.filter_tags(recursive=True)
        if str(node.tag).strip().lower() in _DROPPED_TAGS or node.wiki_markup == "{|"
    ]
    doomed += [
        node
        for node in wikicode.filter_wikilinks(recursive=True)
        if _NAMESPACED.match(str(node.title))
    ]
    for node in doomed:
        try:
            wikicode.remove(node)
        except ValueError:  # already gone with an enclosing node
            continue


def _clean_text(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.replace("\xa0", " ").split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def wikitext_to_markdown(wikitext: str, title: str | None = None) -> str:
    """Plain text of an article with its headings as markdown headers (``== A ==`` ->
    ``## A``), the title as ``#`` on top; citations, templates, tables, files and link
    sections (references, external links, see also ...) left out."""
    import mwparserfromhell
    from mwparserfromhell.nodes import Heading
    from mwparserfromhell.wikicode import Wikicode

    wikicode = mwparserfromhell.parse(wikitext)
    _drop_markup(wikicode)
    parts: list[str] = [f"# {title}"] if title else []
    run: list[Any] = []
    skip_below: int | None = None

    def flush() -> None:
        if run and skip_below is None:
            text = _clean_text(Wikicode(run).strip_code())
            if text:
                parts.append(text)
        run.clear()

    for node in wikicode.nodes:
        if isinstance(node, Heading):
            flush()
            heading = " ".join(node.title.strip_code().split())
            if skip_below is not None and node.level <= skip_below:
                skip_below = None
            if skip_below is None and heading.lower() in SKIPPED_SECTIONS:
                skip_below = node.level
            if skip_below is None and heading:
                parts.append(f"{'#' * min(node.level, 6)} {heading}")
        else:
            run.append(node)
    flush()
    return "\n\n".join(parts)
