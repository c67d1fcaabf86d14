"""MediaWiki XML dumps, built here: sections become segments; redirects and other
namespaces are skipped; broken and unrecognised inputs stop or are counted, never an
empty output."""

from __future__ import annotations

import bz2
import json
from xml.sax.saxutils import escape

import pytest
from click.testing import CliRunner

from humpback_plugin.commands.segment import segment_command
from humpback_plugin.core.config import CorpusConfig
from humpback_plugin.core.errors import InputError
from humpback_plugin.stages.corpus.mediawiki import MediaWikiReader, wikitext_to_markdown
from humpback_plugin.stages.corpus.readers import UnrecognisedFormat
from humpback_plugin.stages.corpus.stage import segment_corpus
from tests.test_corpus import para


def article(seed: str) -> str:
    return f"""{{{{Infobox scientist|name=Ada|birth_date=1815}}}}
'''Ada {seed}''' was an [[England|English]] writer.<ref>{{{{cite web|title=SECRETREF}}}}</ref>
{para(700, seed + "i")}

[[File:Ada.jpg|thumb|CAPTIONTEXT of [[Ada]].]]

== Early life ==
Her father was [[Lord Byron]].&nbsp;{para(900, seed + "e")}<ref name="a">REFTEXT</ref>

=== Education ===
* {para(300, seed + "d")}
* second item
{{| class="wikitable"
|-
| TABLECELL || other cell
|}}

== Work ==
''{para(1200, seed + "w")}''

== See also ==
* [[Charles Babbage]] and a long enough line of links to other articles here

== References ==
{{{{reflist}}}}
[[Category:CATEGORYNAME]]
[[fr:Ada Lovelace]]
"""


def dump(pages: list[tuple[str, int, str, bool]]) -> str:
    """A MediaWiki export: (title, namespace, wikitext, is_redirect) per page."""
    rows = []
    for i, (title, ns, text, redirect) in enumerate(pages, start=1):
        rows.append(
            f"<page><title>{escape(title)}</title><ns>{ns}</ns><id>{i}</id>"
            + ('<redirect title="X" />' if redirect else "")
            + f'<revision><id>{100 + i}</id><text bytes="{len(text)}" xml:space="preserve">'
            + f"{escape(text)}</text></revision></page>"
        )
    return (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11">'
        "<siteinfo><sitename>Wikipedia</sitename>"
        "<base>https://en.wikipedia.org/wiki/Main_Page</base></siteinfo>\n"
        + "\n".join(rows)
        + "\n</mediawiki>\n"
    )


PAGES = [
    ("Ada Lovelace", 0, article("a"), False),
    ("Lovelace", 0, "#REDIRECT [[Ada Lovelace]]", True),
    ("Talk:Ada Lovelace", 1, "Talk page " + para(900, "t"), False),
    ("Template:Infobox", 10, "template " + para(900, "x"), False),
    ("Grace Hopper", 0, article("g"), False),
]


@pytest.fixture()
def wiki_dump(tmp_path):
    path = tmp_path / "enwiki-pages-articles.xml.bz2"
    path.write_bytes(bz2.compress(dump(PAGES).encode()))
    return path


def test_wikitext_sections_become_markdown_headers():
    text = wikitext_to_markdown(article("a"), "Ada Lovelace")
    assert text.startswith("# Ada Lovelace\n\nAda a was an English writer.")
    assert "\n## Early life\n" in text and "\n### Education\n" in text and "\n## Work\n" in text
    for gone in ("SECRETREF", "REFTEXT", "CAPTIONTEXT", "TABLECELL", "CATEGORYNAME", "fr:",
                 "See also", "References", "Infobox", "[[", "'''", "{{"):  # fmt: skip
        assert gone not in text, gone
    assert "Lord Byron." in text and "second item" in text


def test_dump_articles_become_header_segments(wiki_dump, tmp_path):
    skipped: list[str] = []
    docs = list(MediaWikiReader().read(str(wiki_dump), {"on_skip": lambda s, w: skipped.append(w)}))
    assert [d.meta["title"] for d in docs] == ["Ada Lovelace", "Grace Hopper"]
    assert docs[0].url == "https://en.wikipedia.org/wiki/Ada_Lovelace"
    assert sorted(skipped) == ["not an article (namespace)"] * 2 + ["redirect page"]
    out = tmp_path / "wiki.jsonl"
    summary = segment_corpus([str(wiki_dump)], out, progress=False, warn=lambda m: None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.documents == 2 and summary.bad_records == 0
    assert summary.skipped == {"redirect page": 1, "not an article (namespace)": 2}
    headers = [(r["header"], r["meta"]["doc_id"]) for r in rows]
    # Each article: its lead under its title, "Early life" (holding "Education"), "Work".
    assert headers == [
        ("Ada Lovelace", "1"),
        ("Early life", "1"),
        ("Work", "1"),
        ("Grace Hopper", "5"),
        ("Early life", "5"),
        ("Work", "5"),
    ]
    assert rows[0]["meta"]["lead"] is True and "ai0" in rows[0]["text"]
    assert "Education" in rows[1]["text"] and "second item" in rows[1]["text"]
    assert all(600 <= len(r["text"]) <= 3000 for r in rows)


def test_plain_xml_and_truncated_bz2(tmp_path):
    plain = tmp_path / "small.xml"
    plain.write_text(dump(PAGES))
    summary = segment_corpus([str(plain)], tmp_path / "a.jsonl", progress=False)
    assert summary.documents == 2 and summary.kept == 6
    # bz2 decompresses in blocks of 900 kB: cut the last quarter of a four-block dump.
    blob = bz2.compress(dump(PAGES * 300).encode())
    cut = tmp_path / "cut.xml.bz2"
    cut.write_bytes(blob[: len(blob) * 3 // 4])
    summary = segment_corpus(
        [str(cut)], tmp_path / "b.jsonl", CorpusConfig(filters=[]), progress=False,
        warn=lambda m: None,
    )  # fmt: skip
    # The pages before the break are kept; the break is counted, not silent.
    assert 0 < summary.documents < 600 and summary.bad_records == 1
    assert "after" in summary.errors[0]["offset"]
    with pytest.raises(InputError, match=r"cut\.xml\.bz2"):
        segment_corpus([str(cut)], tmp_path / "c.jsonl", strict=True, progress=False)
    assert not (tmp_path / "c.jsonl").exists()


def test_xml_that_is_not_a_dump_stops_naming_file_and_formats(tmp_path):
    rss = tmp_path / "feed.xml"
    rss.write_text("<rss><channel><item><title>x</title></item></channel></rss>")
    out = tmp_path / "o.jsonl"
    with pytest.raises(UnrecognisedFormat, match=r"feed\.xml: not a MediaWiki XML dump .*WARC"):
        segment_corpus([str(rss)], out, CorpusConfig(), progress=False)
    assert not out.exists()


def test_unknown_format_stops_before_any_output(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text(para(900))
    odd = tmp_path / "dump.sql.gz"
    odd.write_bytes(b"\x1f\x8b\x08\x00junk")
    out = tmp_path / "o.jsonl"
    result = CliRunner().invoke(segment_command, [str(good), str(odd), "-o", str(out)])
    assert result.exit_code == 1
    assert "dump.sql.gz: no reader for this file type; supported: WARC/WET" in result.output
    assert "MediaWiki XML dumps" in result.output and not out.exists()
