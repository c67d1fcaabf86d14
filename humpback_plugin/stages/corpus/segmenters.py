"""Segmenters: split a document into header-delimited segments, as in the paper.

A segment is a header plus the text that follows it up to the next header of the same or
a higher level, so an h2 segment contains its h3 children's text (v3 appendix). HTML is
parsed with lxml after removing boilerplate (scripts, navigation, footers, sidebars,
cookie banners...). Plain text (WET, JSONL) is split on markdown headers, else on short
title lines, else its paragraphs are grouped to the length window.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from humpback_plugin.core.config import SEGMENT_MAX_CHARS
from humpback_plugin.core.records import Document, Segment

HEADING_LEVELS = {f"h{i}": i for i in range(1, 7)}

# Never content: dropped with their subtree (their tail text is kept).
DROP_TAGS = (
    "script",
    "style",
    "noscript",
    "template",
    "svg",
    "math",
    "iframe",
    "object",
    "embed",
    "canvas",
    "video",
    "audio",
    "map",
    "nav",
    "footer",
    "aside",
    "form",
    "button",
    "select",
    "textarea",
    "input",
    "label",
    "dialog",
    "menu",
)

# Elements that start a new line of text.
BLOCK_TAGS = frozenset(
    [
        "p",
        "div",
        "li",
        "ul",
        "ol",
        "dl",
        "dt",
        "dd",
        "table",
        "thead",
        "tbody",
        "tfoot",
        "tr",
        "td",
        "th",
        "caption",
        "section",
        "article",
        "main",
        "blockquote",
        "pre",
        "figure",
        "figcaption",
        "hr",
        "address",
        "header",
        "details",
        "summary",
        "center",
        "body",
    ]
)
LIST_TAGS = frozenset({"li", "dt", "dd", "tr", "td", "th"})

# class/id words that mark page furniture rather than the article.
BOILERPLATE_WORDS = frozenset(
    [
        "nav",
        "navbar",
        "navigation",
        "menu",
        "footer",
        "sidebar",
        "breadcrumb",
        "breadcrumbs",
        "comment",
        "comments",
        "share",
        "sharing",
        "social",
        "advert",
        "advertisement",
        "ads",
        "ad",
        "adsense",
        "sponsored",
        "promo",
        "promotion",
        "cookie",
        "cookies",
        "consent",
        "gdpr",
        "related",
        "recommended",
        "newsletter",
        "subscribe",
        "subscription",
        "signup",
        "popup",
        "modal",
        "banner",
        "masthead",
        "toolbar",
        "pagination",
        "pager",
        "tags",
        "widget",
        "outbrain",
        "taboola",
        "disqus",
    ]
)
BOILERPLATE_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search"})
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


def _is_boilerplate(el: Any) -> bool:
    role = (el.get("role") or "").lower()
    if role in BOILERPLATE_ROLES:
        return True
    if el.get("hidden") is not None or (el.get("aria-hidden") or "").lower() == "true":
        return True
    style = (el.get("style") or "").replace(" ", "").lower()
    if "display:none" in style or "visibility:hidden" in style:
        return True
    names = f"{el.get('class') or ''} {el.get('id') or ''}".lower()
    if not names.strip():
        return False
    return not BOILERPLATE_WORDS.isdisjoint(_WORD_SPLIT.split(names))


def clean_html_tree(root: Any) -> Any:
    """Remove boilerplate from an lxml tree in place; returns the body (or root)."""
    for el in list(root.iter(*DROP_TAGS)):
        if el.getparent() is not None:
            el.drop_tree()
    candidates = [
        el
        for el in root.iter()
        if isinstance(el.tag, str)
        and el.tag not in ("html", "body", "main", "article")
        and _is_boilerplate(el)
    ]
    for el in candidates:
        # A wrapper that holds the article (class="page with-sidebar") is not furniture.
        if el.getparent() is None or el.find(".//article") is not None:
            continue
        if el.find(".//main") is not None or el.find(".//h1") is not None:
            continue
        el.drop_tree()
    body = root.find("body")
    return body if body is not None else root


def _collapse(text: str) -> str:
    lines = (" ".join(line.split()) for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def html_blocks(html: str) -> list[tuple[int, str, str]]:
    """The page as ``(level, text, tag)`` blocks in reading order; level 1-6 for headers,
    0 for text."""
    import lxml.html
    from lxml import etree

    html = html.lstrip()
    if html.startswith("<?xml"):
        # lxml refuses str input that declares its own encoding.
        html = html[html.find("?>") + 2 :]
    if not html.strip():
        return []
    try:
        root = lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError):
        return []
    body = clean_html_tree(root)
    blocks: list[tuple[int, str, str]] = []
    buf: list[str] = []
    current_tag = ["p"]

    def flush() -> None:
        if buf:
            text = _collapse("".join(buf))
            buf.clear()
            if text:
                blocks.append((0, text, current_tag[0]))

    def walk(el: Any) -> None:
        tag = el.tag
        if isinstance(tag, str):
            level = HEADING_LEVELS.get(tag)
            if level:
                flush()
                blocks.append((level, " ".join(el.text_content().split()), tag))
            else:
                block = tag in BLOCK_TAGS
                if block:
                    flush()
                    current_tag[0] = tag
                if tag == "br":
                    buf.append("\n")
                elif el.text:
                    buf.append(el.text)
                for child in el:
                    walk(child)
                if block:
                    flush()
                    current_tag[0] = tag
        if el.tail:
            buf.append(el.tail)

    walk(body)
    flush()
    return blocks


def _join(blocks: list[tuple[int, str, str]]) -> str:
    out: list[str] = []
    prev_tag = None
    for _level, text, tag in blocks:
        if out:
            out.append("\n" if tag in LIST_TAGS and prev_tag in LIST_TAGS else "\n\n")
        out.append(text)
        prev_tag = tag
    return "".join(out)


def header_sections(
    blocks: list[tuple[int, str, str]],
) -> Iterator[tuple[str, int, int, str]]:
    """``(header, level, block_index, text)`` for each header: the text until the next
    header of the same or a higher level, lower-level headers and their text included."""
    for i, (level, header, _tag) in enumerate(blocks):
        if not level:
            continue
        end = i + 1
        while end < len(blocks) and not (0 < blocks[end][0] <= level):
            end += 1
        text = _join(blocks[i + 1 : end])
        if text:
            yield header, level, i, text


# --- plain text ----------------------------------------------------------------------------

_MD_HEADER = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _is_title_line(line: str, following: str | None) -> bool:
    """A short line without closing punctuation followed by a longer paragraph."""
    if following is None or not 2 <= len(line) <= 80 or len(line.split()) > 12:
        return False
    if line[-1] in ".,;:!-|" or not (line[0].isupper() or line[0].isdigit()):
        return False
    return len(following) >= max(120, 2 * len(line))


def text_blocks(text: str) -> tuple[list[tuple[int, str, str]], bool]:
    """Blocks of a plain text and whether it has headers (markdown or title lines)."""
    lines = [line.strip() for line in text.splitlines()]
    if any(_MD_HEADER.match(line) for line in lines):
        blocks: list[tuple[int, str, str]] = []
        para: list[str] = []
        for line in lines + [""]:
            match = _MD_HEADER.match(line)
            if match or not line:
                if para:
                    blocks.append((0, " ".join(para), "p"))
                    para = []
                if match:
                    blocks.append((len(match.group(1)), match.group(2), "h"))
            else:
                para.append(line)
        return blocks, True
    nonempty = [line for line in lines if line]
    blocks = []
    found = False
    for i, line in enumerate(nonempty):
        following = nonempty[i + 1] if i + 1 < len(nonempty) else None
        if _is_title_line(line, following):
            blocks.append((1, line, "h"))
            found = True
        else:
            blocks.append((0, line, "p"))
    return blocks, found


def _pieces(paragraph: str, max_chars: int) -> Iterator[str]:
    """A paragraph cut at sentence ends (or, failing that, spaces) into pieces <= max_chars."""
    if len(paragraph) <= max_chars:
        yield paragraph
        return
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if current:
                yield current
                current = ""
            yield sentence[:cut]
            sentence = sentence[cut:].lstrip()
        if current and len(current) + 1 + len(sentence) > max_chars:
            yield current
            current = ""
        current = f"{current} {sentence}" if current else sentence
    if current:
        yield current


def group_paragraphs(paragraphs: list[str], max_chars: int) -> Iterator[str]:
    """Consecutive paragraphs joined while they fit in ``max_chars``."""
    current: list[str] = []
    size = 0
    for paragraph in paragraphs:
        for piece in _pieces(paragraph, max_chars):
            if current and size + 2 + len(piece) > max_chars:
                yield "\n\n".join(current)
                current, size = [], 0
            current.append(piece)
            size += len(piece) + (2 if size else 0)
    if current:
        yield "\n\n".join(current)


# --- segmenters ----------------------------------------------------------------------------


def _segment(doc: Document, text: str, header: str | None, position: int, **meta: Any) -> Segment:
    meta = {"doc_offset": doc.offset, **{k: v for k, v in meta.items() if v is not None}}
    if doc.meta.get("id") is not None:
        meta["doc_id"] = doc.meta["id"]
    return Segment(
        id=Segment.make_id(text),
        text=text,
        header=header,
        source=doc.source,
        url=doc.url,
        position=position,
        meta=meta,
    )


def html_headers(doc: Document, options: dict[str, Any]) -> Iterator[Segment]:
    """Header-delimited segments of an HTML page (a document with ``html``).

    Options: ``no_header_fallback`` ("skip", the paper's definition, or "paragraphs" to
    group a header-less page's text to the length window), ``max_chars`` (for the
    fallback). A document with only ``text`` goes to :func:`text_headers`.
    """
    if not doc.html:
        yield from text_headers(doc, options)
        return
    blocks = html_blocks(doc.html)
    found = False
    for position, (header, level, _i, text) in enumerate(header_sections(blocks)):
        found = True
        yield _segment(doc, text, header, position, header_level=level, segmenter="html_headers")
    if not found and options.get("no_header_fallback") == "paragraphs":
        paragraphs = [text for level, text, _tag in blocks if not level]
        chunks = group_paragraphs(paragraphs, int(options.get("max_chars", SEGMENT_MAX_CHARS)))
        for position, chunk in enumerate(chunks):
            yield _segment(doc, chunk, None, position, segmenter="html_paragraphs")


def text_headers(doc: Document, options: dict[str, Any]) -> Iterator[Segment]:
    """Segments of plain text: header sections where there are markdown headers or title
    lines (text before the first header is grouped as paragraphs), else paragraphs grouped
    to ``max_chars`` (default 3,000, the paper's upper length)."""
    text = doc.text or ""
    max_chars = int(options.get("max_chars", SEGMENT_MAX_CHARS))
    blocks, has_headers = text_blocks(text)
    position = 0
    first_header = next((i for i, b in enumerate(blocks) if b[0]), len(blocks))
    preamble = [t for _level, t, _tag in blocks[:first_header]]
    for chunk in group_paragraphs(preamble, max_chars):
        yield _segment(doc, chunk, None, position, segmenter="text_paragraphs")
        position += 1
    if has_headers:
        for header, level, _i, section in header_sections(blocks):
            yield _segment(
                doc, section, header, position, header_level=level, segmenter="text_headers"
            )
            position += 1


BUILTIN_SEGMENTERS = {"html_headers": html_headers, "text_headers": text_headers}
