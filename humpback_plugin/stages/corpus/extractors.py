"""Extractors: the main content of an HTML page as blocks, before header segmentation.

An extractor is ``extract(html: str, options: dict) -> list[Block]``: the page's content in
reading order as ``(level, text, tag)`` blocks, level 1-6 for headers and 0 for text, so
the segmenters can cut header-delimited segments from any of them. Built-ins, picked by
name (``corpus.extractor``, ``--extractor``; ``register_extractors`` adds more):

``resiliparse`` (the default)
    Resiliparse's main-content extraction with minimal HTML markup, which keeps the
    headers; about 2.5x the lxml path's speed and the cleanest segments of the three
    (figures in the README).
``trafilatura``
    trafilatura's markdown output, its headers kept, the page title on top: about as
    clean, several times slower.
``lxml``
    the original fast path: lxml with boilerplate removal by tag, class, id and role;
    keeps everything else (related links, captions, comment prompts).
"""

from __future__ import annotations

import re
from typing import Any

from humpback_plugin.core.errors import UsageError

Block = tuple[int, str, str]

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


def parse_html(html: str) -> Any:
    """An lxml document for ``html``, or None when there is nothing to parse."""
    import lxml.html
    from lxml import etree

    html = html.lstrip()
    if html.startswith("<?xml"):
        # lxml refuses str input that declares its own encoding.
        html = html[html.find("?>") + 2 :]
    if not html.strip():
        return None
    try:
        return lxml.html.document_fromstring(html)
    except (etree.ParserError, ValueError):
        return None


def tree_blocks(body: Any) -> list[Block]:
    """The blocks of an lxml element in reading order (headers with their level)."""
    blocks: list[Block] = []
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


def lxml_extract(html: str, options: dict[str, Any]) -> list[Block]:
    """The whole page minus boilerplate removed by tag, class, id and role."""
    root = parse_html(html)
    if root is None:
        return []
    return tree_blocks(clean_html_tree(root))


def html_blocks(html: str) -> list[Block]:
    """The page as blocks through the lxml path (kept for plugins that used it)."""
    return lxml_extract(html, {})


# --- main-content extractors ---------------------------------------------------------------

# Elements Resiliparse's main-content heuristics keep but that are not the article: photo
# captions and credits, cookie, newsletter and promotion boxes, related links, and hover
# cards (a person's name link that opens a hidden list of other articles).
RESILIPARSE_SKIP = (
    "figure",
    "figcaption",
    "[class*=caption]",
    "[class*=credit]",
    "[class*=cookie]",
    "[class*=newsletter]",
    "[class*=subscribe]",
    "[class*=related]",
    "[class*=promo]",
    "[class*=rollover]",
    "[class*=tooltip]",
    "[class*=popover]",
    "[class*=hovercard]",
)

# Page furniture that extractors leave inside the main text, one line at a time: cookie
# notices, subscription and newsletter prompts, "click here" / "read more" links, social
# media prompts, affiliate disclosures, copyright lines, comment prompts, photo and
# reporting credits. Only lines up to BOILERPLATE_MAX_CHARS are judged: an article's own
# long paragraph that mentions a newsletter stays.
BOILERPLATE_LINE = re.compile(
    r"""(?ix)
      \b(?:uses?|using|accept|allow|enable)\s+cookies\b
    | \bcookie\s+(?:policy|settings|preferences|consent)\b
    | \bnewsletters?\b | \bsubscri(?:be|bers?|ptions?)\b | \bsign[ -]?up\b | \binbox\b
    | \bclick\ here\b | \bread\ more\b | ^also\ on\b | ^\[?related\b | ^(?:see\ also|more)\s*:
    | \bfollow\ (?:us|me)\b | \baffiliate\b
    | \b(?:earn|receive|get)\s+(?:a\s+)?(?:small\s+)?commission\b
    | \ball\ rights\ reserved\b | © | ^copyright\b | \bcopyright\s+(?:\(c\)|\d{4})
    | \b(?:leave|post|add|write|view|show|load)\s+(?:a\s+|your\s+)?comments?\b
    | \bcomments?\s+(?:policy|section|are\ closed)\b | \bas\ you\ comment\b | \bcommenters\b
    | \bjoin\ (?:our|the)\b[^.]{0,40}\b(?:forums?|community|discussion)\b
    | \bnews\ tips?\b | \bbreaking\ news\ alerts\b
    | \((?:[^()]*/)?\s*(?:AP|AFP|Reuters|Getty(?:\ Images)?|EPA|Shutterstock|Bloomberg)\s*\)\s*$
    | \b(?:photo|image|picture)s?\s*(?:credit)?\s*: | \bfile\ photo\b
    | ^(?:additional\ )?(?:reporting|writing|editing)\ by\b
    | \b(?:twitter|facebook|instagram|youtube|linkedin|whatsapp|pinterest)\b
    """
)
BOILERPLATE_MAX_CHARS = 400
# Every line BOILERPLATE_LINE matches contains one of these (lower-cased), starts with one
# of the prefixes or ends with ")": a cheap test that spares the full pattern most lines.
_BOILERPLATE_HINTS = (
    "cookie", "newsletter", "subscri", "sign up", "signup", "sign-up", "inbox", "click here",
    "read more", "follow ", "affiliate", "commission", "rights reserved", "©", "copyright",
    "comment", "join ", "news tip", "breaking news", "photo", "image", "picture", "twitter",
    "facebook", "instagram", "youtube", "linkedin", "whatsapp", "pinterest",
)  # fmt: skip
_BOILERPLATE_PREFIXES = (
    "also on", "related", "[related", "see also", "more", "reporting", "writing", "editing",
    "additional",
)  # fmt: skip


def _boilerplate(line: str) -> bool:
    if len(line) > BOILERPLATE_MAX_CHARS:
        return False
    lowered = line.lower()
    hinted = (
        any(hint in lowered for hint in _BOILERPLATE_HINTS)
        or lowered.startswith(_BOILERPLATE_PREFIXES)
        or lowered.rstrip().endswith(")")
    )
    return hinted and bool(BOILERPLATE_LINE.search(line))


def _shouting(line: str) -> bool:
    """A long line with no lower-case letter: a teaser link ("'DANCING WITH THE STARS': ...")."""
    return len(line) >= 40 and line == line.upper() and line != line.lower()


def drop_boilerplate_lines(blocks: list[Block]) -> list[Block]:
    """Text blocks without their boilerplate lines (:data:`BOILERPLATE_LINE`, shouting
    teasers); headers are left for the segment filters to judge."""
    out: list[Block] = []
    for level, text, tag in blocks:
        if level:
            out.append((level, text, tag))
            continue
        lines = [line for line in text.split("\n") if not (_boilerplate(line) or _shouting(line))]
        if lines:
            out.append((level, "\n".join(lines), tag))
    return out


def _with_title(blocks: list[Block], title: str | None) -> list[Block]:
    """Text before the first header gets the page's title as its header: an article's
    lead paragraphs otherwise belong to no segment."""
    title = " ".join((title or "").split())
    if blocks and blocks[0][0] == 0 and title:
        return [(1, title, "h1"), *blocks]
    return blocks


def _first_h1(html_tree: Any) -> str | None:
    body = html_tree.body
    if body is None:
        return None
    h1 = body.query_selector("h1")
    if h1 is not None and h1.text.strip():
        return h1.text
    return html_tree.title or None


def resiliparse_extract(html: str, options: dict[str, Any]) -> list[Block]:
    """Resiliparse's main content with minimal markup (headers, paragraphs, lists kept);
    comments, bylines, alt texts, form fields, :data:`RESILIPARSE_SKIP` and boilerplate
    lines left out."""
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    if not html.strip():
        return []
    tree = HTMLTree.parse(html)
    marked_up = extract_plain_text(
        tree,
        preserve_formatting="minimal_html",
        main_content=True,
        list_bullets=False,
        alt_texts=False,
        links=False,
        form_fields=False,
        noscript=False,
        comments=False,
        post_meta=False,
        skip_elements=list(RESILIPARSE_SKIP),
    )
    if not marked_up.strip():
        return []
    root = parse_html(f"<html><body>{marked_up}</body></html>")
    if root is None:
        return []
    body = root.find("body")
    blocks = drop_boilerplate_lines(tree_blocks(body if body is not None else root))
    return _with_title(blocks, _first_h1(tree))


_MD_HEADER = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_MD_ITEM = re.compile(r"^(?:[-*+]\s+|\d+[.)]\s+|\|)")
_MD_EMPHASIS = re.compile(r"(\*{1,2}|_{2})(?=\S)(.+?)(?<=\S)\1")


def markdown_blocks(text: str) -> list[Block]:
    """Blocks of markdown: ``#`` headers, paragraphs (lines joined), list items and table
    rows one block each."""
    blocks: list[Block] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            blocks.append((0, " ".join(para), "p"))
            para.clear()

    for raw in text.splitlines():
        line = raw.strip()
        match = _MD_HEADER.match(line)
        if match:
            flush()
            blocks.append((len(match.group(1)), match.group(2), f"h{len(match.group(1))}"))
        elif not line:
            flush()
        elif _MD_ITEM.match(line):
            flush()
            blocks.append((0, line, "tr" if line.startswith("|") else "li"))
        else:
            para.append(line)
    flush()
    return blocks


def _front_matter(markdown: str) -> tuple[dict[str, str], str]:
    """trafilatura's ``---`` metadata block (only ``key: value`` lines) and the rest."""
    if not markdown.startswith("---\n"):
        return {}, markdown
    end = markdown.find("\n---\n", 4)
    if end < 0:
        return {}, markdown
    meta = {}
    for line in markdown[4:end].splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            meta[key.strip()] = value.strip().strip('"')
    return meta, markdown[end + 5 :]


def trafilatura_extract(html: str, options: dict[str, Any]) -> list[Block]:
    """trafilatura's main content as markdown (headers kept, comments left out), the
    page title from its metadata on top, emphasis markers and boilerplate lines removed."""
    try:
        import trafilatura
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UsageError(
            "the trafilatura extractor needs trafilatura: pip install 'humpback-plugin[extract]'"
        ) from exc
    if not html.strip():
        return []
    markdown = trafilatura.extract(
        html,
        output_format="markdown",
        with_metadata=True,
        include_comments=False,
        include_images=False,
        include_links=False,
        include_tables=True,
        deduplicate=False,
    )
    if not markdown:
        return []
    meta, body = _front_matter(markdown)
    blocks = drop_boilerplate_lines(markdown_blocks(_MD_EMPHASIS.sub(r"\2", body)))
    return _with_title(blocks, meta.get("title"))


BUILTIN_EXTRACTORS = {
    "resiliparse": resiliparse_extract,
    "trafilatura": trafilatura_extract,
    "lxml": lxml_extract,
}
