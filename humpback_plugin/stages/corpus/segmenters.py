"""Segmenters: split a document into header-delimited segments, as in the paper.

A segment is a header plus the text that follows it up to the next header of the same or
a higher level, so an h2 segment contains its h3 children's text (v3 appendix). HTML first
goes through a main-content extractor (:mod:`.extractors`, passed as ``options["extract"]``)
that returns the page as header and text blocks. Plain text (WET, JSONL) is split on
markdown headers, else on short title lines, else its paragraphs are grouped to the length
window.

Nested sections overlap: an h2 segment holds its h3 children, each of which is a segment
too. Every segment says which one encloses it (``meta["parent"]``, the enclosing segment's
``position``), so the corpus stage can keep one of them (``corpus.overlap``). With
``options["split_long"]``, text that would otherwise be lost when a section is too long to
keep also gets segments, each a child of its section and with the section's header: the
section's *lead* (the text before its first sub-header, ``meta["lead"]``) when it has
sub-sections, and, when that text is itself longer than ``max_chars``, its *parts*
(paragraphs grouped into pieces of about equal size under ``max_chars``, ``meta["part"]``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from humpback_plugin.core.config import SEGMENT_MAX_CHARS
from humpback_plugin.core.records import Document, Segment
from humpback_plugin.stages.corpus.extractors import LIST_TAGS, Block, lxml_extract
from humpback_plugin.stages.corpus.mediawiki import wikitext_to_markdown


def _join(blocks: list[Block]) -> str:
    out: list[str] = []
    prev_tag = None
    for _level, text, tag in blocks:
        if out:
            out.append("\n" if tag in LIST_TAGS and prev_tag in LIST_TAGS else "\n\n")
        out.append(text)
        prev_tag = tag
    return "".join(out)


Section = tuple[str, int, str, "int | None", dict[str, Any]]


def header_sections(blocks: list[Block], split_long: int | None = None) -> Iterator[Section]:
    """``(header, level, text, parent, extra)`` for each header: the text until the next
    header of the same or a higher level, lower-level headers and their text included.
    ``parent`` is the index (in what this yields) of the enclosing section. With
    ``split_long`` (a length in characters), a section is followed by its lead (``extra``
    ``{"lead": True}``) when it has sub-sections, and by the parts of that text (``{"part":
    k}``) when it is longer than ``split_long``."""
    stack: list[tuple[int, int]] = []  # (level, index yielded) of the enclosing sections
    count = 0
    for i, (level, header, _tag) in enumerate(blocks):
        if not level:
            continue
        end = first_child = i + 1
        while end < len(blocks) and not (0 < blocks[end][0] <= level):
            end += 1
        while first_child < end and not blocks[first_child][0]:
            first_child += 1
        text = _join(blocks[i + 1 : end])
        if not text:
            continue
        while stack and stack[-1][0] >= level:
            stack.pop()
        yield header, level, text, stack[-1][1] if stack else None, {}
        stack.append((level, count))
        count += 1
        if split_long is None or first_child == i + 1:
            continue
        own = blocks[i + 1 : first_child]
        own_parent = stack[-1][1]
        if first_child < end:
            yield header, level, _join(own), own_parent, {"lead": True}
            own_parent = count
            count += 1
        if sum(len(t) + 2 for _l, t, _t in own) > split_long:
            for k, part in enumerate(balanced_groups(own, split_long)):
                yield header, level, _join(part), own_parent, {"part": k}
                count += 1


def balanced_groups(blocks: list[Block], max_chars: int) -> list[list[Block]]:
    """Consecutive text blocks in the fewest groups of about equal size, each joined
    under ``max_chars`` (a block longer than that is cut at sentence ends first)."""
    pieces = [(0, p, tag) for _l, text, tag in blocks for p in _pieces(text, max_chars)]
    total = sum(len(p) + 2 for _l, p, _t in pieces)
    for n_groups in range(max(1, -(-total // max_chars)), len(pieces) + 1):
        target = total / n_groups
        groups: list[list[Block]] = [[]]
        size = 0
        for piece in pieces:
            grow = len(piece[1]) + 2
            # Start a new group when this piece ends past the target by more than half.
            if groups[-1] and size + grow / 2 > target * len(groups):
                groups.append([])
            groups[-1].append(piece)
            size += grow
        if all(len(_join(g)) <= max_chars for g in groups):
            return groups
    return [[piece] for piece in pieces]


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


def text_blocks(text: str) -> tuple[list[Block], bool]:
    """Blocks of a plain text and whether it has headers (markdown or title lines)."""
    lines = [line.strip() for line in text.splitlines()]
    if any(_MD_HEADER.match(line) for line in lines):
        blocks: list[Block] = []
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


def _section_segments(
    doc: Document, blocks: list[Block], options: dict[str, Any], name: str, start: int = 0
) -> Iterator[Segment]:
    split_long = None
    if options.get("split_long"):
        split_long = int(options.get("max_chars", SEGMENT_MAX_CHARS))
    sections = header_sections(blocks, split_long)
    for index, (header, level, text, parent, extra) in enumerate(sections):
        yield _segment(
            doc,
            text,
            header,
            start + index,
            header_level=level,
            parent=None if parent is None else start + parent,
            **extra,
            segmenter=name,
        )


def html_headers(doc: Document, options: dict[str, Any]) -> Iterator[Segment]:
    """Header-delimited segments of an HTML page (a document with ``html``).

    Options: ``extract`` (the main-content extractor, default the lxml path),
    ``no_header_fallback`` ("skip", the paper's definition, or "paragraphs" to group a
    header-less page's text to the length window), ``max_chars`` (for the fallback),
    ``split_long``. A document with only ``text`` goes to :func:`text_headers`.
    """
    if not doc.html:
        yield from text_headers(doc, options)
        return
    blocks = options.get("extract", lxml_extract)(doc.html, options)
    found = False
    for segment in _section_segments(doc, blocks, options, "html_headers"):
        found = True
        yield segment
    if not found and options.get("no_header_fallback") == "paragraphs":
        paragraphs = [text for level, text, _tag in blocks if not level]
        chunks = group_paragraphs(paragraphs, int(options.get("max_chars", SEGMENT_MAX_CHARS)))
        for position, chunk in enumerate(chunks):
            yield _segment(doc, chunk, None, position, segmenter="html_paragraphs")


def text_headers(doc: Document, options: dict[str, Any]) -> Iterator[Segment]:
    """Segments of plain text: header sections where there are markdown headers or title
    lines (text before the first header is grouped as paragraphs), else paragraphs grouped
    to ``max_chars`` (default 3,000, the paper's upper length). MediaWiki wikitext
    (``meta["markup"] == "wikitext"``) is turned into text with its sections as headers
    first."""
    text = doc.text or ""
    if doc.meta.get("markup") == "wikitext":
        text = wikitext_to_markdown(text, doc.meta.get("title"))
    max_chars = int(options.get("max_chars", SEGMENT_MAX_CHARS))
    blocks, has_headers = text_blocks(text)
    position = 0
    first_header = next((i for i, b in enumerate(blocks) if b[0]), len(blocks))
    preamble = [t for _level, t, _tag in blocks[:first_header]]
    for chunk in group_paragraphs(preamble, max_chars):
        yield _segment(doc, chunk, None, position, segmenter="text_paragraphs")
        position += 1
    if has_headers:
        yield from _section_segments(doc, blocks, options, "text_headers", start=position)


BUILTIN_SEGMENTERS = {"html_headers": html_headers, "text_headers": text_headers}
