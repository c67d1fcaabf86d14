"""Corpus readers, segmenters and the `humpback segment` command."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from humpback_plugin.commands.segment import segment_command
from humpback_plugin.core.config import CorpusConfig
from humpback_plugin.core.errors import InputError
from humpback_plugin.core.records import Document, Segment
from humpback_plugin.plugins import components
from humpback_plugin.stages.corpus.readers import HtmlReader, WarcReader, decode_html
from humpback_plugin.stages.corpus.segmenters import html_headers, text_headers
from humpback_plugin.stages.corpus.stage import segment_corpus

LOREM = (
    "The backward model reads a web document and writes the question it answers. "
    "Each sentence here is different from the others, so nothing looks repetitive. "
)


def para(n: int, seed: str = "") -> str:
    """About ``n`` characters of distinct English sentences."""
    sentences = []
    size = i = 0
    while size < n:
        sentences.append(f"Sentence {seed}{i} explains a different idea about topic number {i}.")
        size += len(sentences[-1]) + 1
        i += 1
    return " ".join(sentences)


PAGE = f"""<!doctype html><html><head><title>t</title><script>var x = 1;</script>
<style>p {{color: red}}</style></head><body>
<nav><a href="/">Home</a> <a href="/news">News</a></nav>
<div class="cookie-banner">We use cookies</div>
<article>
<h1>Growing tomatoes</h1>
<p>{para(200, "intro")}</p>
<h2>Soil</h2>
<p>{para(400, "soil")}</p>
<h3>Compost</h3>
<p>{para(300, "compost")}</p>
<ul><li>first item</li><li>second item</li></ul>
<h2>Watering</h2>
<p>{para(700, "water")}</p>
</article>
<aside><h2>Related articles</h2><p>Other things</p></aside>
<footer>Copyright 2024</footer>
</body></html>"""


def seg(doc_html: str) -> list[Segment]:
    return list(html_headers(Document(source="page.html", offset=0, html=doc_html), {}))


def run(args: list[str]) -> object:
    return CliRunner().invoke(segment_command, args, catch_exceptions=False)


# --- segmenters ----------------------------------------------------------------------------


def test_html_segments_are_header_subtrees():
    segments = seg(PAGE)
    by_header = {s.header: s for s in segments}
    assert list(by_header) == ["Growing tomatoes", "Soil", "Compost", "Watering"]
    soil = by_header["Soil"]
    # The h2 segment contains its h3 child's header and text, and stops at the next h2.
    assert "Compost" in soil.text and "compost0" in soil.text
    assert "water0" not in soil.text
    assert "first item\nsecond item" in soil.text
    assert by_header["Compost"].meta["header_level"] == 3
    assert [s.position for s in segments] == [0, 1, 2, 3]
    assert soil.source == "page.html" and soil.id == Segment.make_id(soil.text)


def test_html_boilerplate_is_removed():
    text = "\n".join(s.text for s in seg(PAGE))
    for junk in ("var x", "color: red", "Home", "We use cookies", "Other things", "Copyright"):
        assert junk not in text
    assert "Related articles" not in {s.header for s in seg(PAGE)}


def test_html_without_headers_falls_back_only_when_asked():
    page = f"<html><body><p>{para(900)}</p><p>{para(900, 'b')}</p></body></html>"
    doc = Document(source="x.html", offset=0, html=page)
    assert list(html_headers(doc, {})) == []
    chunks = list(html_headers(doc, {"no_header_fallback": "paragraphs", "max_chars": 3000}))
    assert len(chunks) == 1 and chunks[0].header is None


def test_html_edge_cases():
    assert seg("") == []
    assert seg("<?xml version='1.0' encoding='utf-8'?><html><body><h2>A</h2><p>b</p></body></html>")
    assert decode_html("<meta charset='latin-1'><p>caf\xe9</p>".encode("latin-1")).endswith(
        "café</p>"
    )
    assert "\ufffd" in decode_html(b"<p>bad \xff\xfe utf8</p>")


def test_text_markdown_headers():
    text = (
        f"# Title\n\n{para(100)}\n\n## Part A\n\n{para(300, 'a')}\n\n"
        "### Sub\n\nsub text\n\n## Part B\n\nlast words"
    )
    segments = list(text_headers(Document(source="t.md", offset=0, text=text), {}))
    headers = [s.header for s in segments]
    assert headers == ["Title", "Part A", "Sub", "Part B"]
    part_a = segments[1]
    assert "Sub" in part_a.text and "sub text" in part_a.text and "last words" not in part_a.text


def test_text_title_lines_and_paragraph_groups():
    intro = f"Intro line that is long enough to be a paragraph. {para(200)}"
    text = f"{intro}\n\nHow To Water\n\n{para(800, 'w')}"
    segments = list(text_headers(Document(source="t.txt", offset=0, text=text), {}))
    assert segments[0].header is None
    assert segments[-1].header == "How To Water"
    # No headers at all: paragraphs grouped, none longer than the window.
    plain = "\n\n".join(para(700, str(i)) for i in range(10))
    chunks = list(text_headers(Document(source="p.txt", offset=0, text=plain), {"max_chars": 3000}))
    assert all(len(c.text) <= 3000 for c in chunks) and len(chunks) >= 3
    # One huge line without paragraph breaks is cut at sentence ends.
    line = para(20000)
    chunks = list(text_headers(Document(source="l.txt", offset=0, text=line), {}))
    assert all(len(c.text) <= 3000 for c in chunks)
    assert sum(len(c.text) for c in chunks) >= len(line) - len(chunks) * 2


# --- WARC ----------------------------------------------------------------------------------


def _warc_record(writer, url: str, html: str, status: str = "200 OK", ctype="text/html") -> None:
    from warcio.statusandheaders import StatusAndHeaders

    headers = StatusAndHeaders(
        status, [("Content-Type", f"{ctype}; charset=utf-8")], protocol="HTTP/1.1"
    )
    record = writer.create_warc_record(
        url, "response", payload=io.BytesIO(html.encode()), http_headers=headers
    )
    writer.write_record(record)


def make_warc(path: Path, pages: list[tuple[str, str]], gzipped: bool = True) -> list[bytes]:
    """Write a WARC; returns each record's bytes so tests can splice in broken ones."""
    from warcio.warcwriter import WARCWriter

    chunks = []
    for url, html in pages:
        buf = io.BytesIO()
        _warc_record(WARCWriter(buf, gzip=gzipped), url, html)
        chunks.append(buf.getvalue())
    path.write_bytes(b"".join(chunks))
    return chunks


def page_html(i: int) -> str:
    return f"<html><body><h2>Topic {i}</h2><p>{para(800, f'p{i}x')}</p></body></html>"


@pytest.mark.parametrize("gzipped", [True, False])
def test_warc_malformed_record_in_the_middle(tmp_path, gzipped):
    path = tmp_path / ("crawl.warc.gz" if gzipped else "crawl.warc")
    chunks = make_warc(path, [(f"http://e.com/{i}", page_html(i)) for i in range(4)], gzipped)
    broken = b"this is not a WARC record\r\n\r\n"
    if gzipped:
        broken = gzip.compress(broken)
    path.write_bytes(b"".join(chunks[:2]) + broken + b"".join(chunks[2:]))
    errors = []
    docs = list(WarcReader().read(str(path), {"on_error": lambda *e: errors.append(e)}))
    assert [d.url for d in docs] == [f"http://e.com/{i}" for i in range(4)]
    assert len(errors) == 1
    assert errors[0][1] == f"byte {len(chunks[0]) + len(chunks[1])}"
    assert "malformed WARC record" in errors[0][2]
    # Strict: the same file fails naming the offset, and no output is left behind.
    out = tmp_path / "out.jsonl"
    with pytest.raises(InputError, match=r"crawl\.warc.*:byte \d+"):
        segment_corpus([str(path)], out, strict=True, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def test_warc_skips_requests_and_non_html(tmp_path):
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "mixed.warc.gz"
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        _warc_record(writer, "http://e.com/a", page_html(1))
        _warc_record(writer, "http://e.com/img", "GIF89a", ctype="image/gif")
        _warc_record(writer, "http://e.com/404", page_html(2), status="404 Not Found")
    skipped = []
    docs = list(WarcReader().read(str(path), {"on_skip": lambda s, why: skipped.append(why)}))
    assert [d.url for d in docs] == ["http://e.com/a"]
    assert sorted(skipped) == ["HTTP status 404", "not HTML"]


# --- bad input through the whole stage -----------------------------------------------------


def test_jsonl_bad_lines_are_counted_and_the_rest_read(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = json.dumps({"text": para(900), "extra": {"unknown": 1}})
    path.write_bytes(
        (good + "\n{not json\n").encode()
        + b'{"text": "caf\xe9"}\n'
        + json.dumps({"body": "no text field"}).encode()
        + b"\n"
        + json.dumps({"text": para(900, "z")}).encode()
        + b"\n"
    )
    out = tmp_path / "seg.jsonl"
    summary = segment_corpus([str(path)], out, CorpusConfig(filters=["length"]), progress=False)
    assert summary.documents == 2 and summary.kept == 2
    assert summary.bad_records == 3
    where = [(e["offset"], e["message"].split()[0]) for e in summary.errors]
    assert where == [(2, "malformed"), (3, "not"), (4, "field")]
    with pytest.raises(InputError, match=r"rows\.jsonl:2: malformed JSON"):
        segment_corpus([str(path)], tmp_path / "strict.jsonl", strict=True, progress=False)
    assert not (tmp_path / "strict.jsonl").exists()


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    rows = "".join(json.dumps({"text": para(900, str(i))}) + "\n" for i in range(300))
    blob = gzip.compress(rows.encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(blob[: len(blob) * 2 // 3])
    summary = segment_corpus(
        [str(path)], tmp_path / "o.jsonl", CorpusConfig(filters=["length"]), progress=False
    )
    assert 0 < summary.documents < 300
    assert summary.bad_records == 1 and "unreadable" in summary.errors[0]["message"]
    assert "after line" in str(summary.errors[0]["offset"])


def test_empty_files_and_missing_files(tmp_path):
    for name in ("empty.jsonl", "empty.txt", "empty.html"):
        (tmp_path / name).write_text("")
    out = tmp_path / "o.jsonl"
    summary = segment_corpus([str(tmp_path)], out, progress=False)
    assert summary.files == 3 and summary.kept == 0 and out.read_text() == ""
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        segment_corpus([str(tmp_path / "nope.jsonl")], tmp_path / "x.jsonl", progress=False)
    with pytest.raises(InputError, match="matches no files"):
        segment_corpus([str(tmp_path / "*.warc")], tmp_path / "x.jsonl", progress=False)
    assert not (tmp_path / "x.jsonl").exists()


def test_ten_megabyte_line(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps({"text": para(10_000_000)}) + "\n")
    summary = segment_corpus(
        [str(path)],
        tmp_path / "o.jsonl",
        CorpusConfig(filters=["length", "exact_dedup"]),
        progress=False,
    )
    assert summary.documents == 1 and summary.kept > 3000


def test_text_per_line_non_utf8(tmp_path):
    path = tmp_path / "wiki.txt"
    first = para(900, "a").encode() + b"\n"
    path.write_bytes(first + b"\xff\xfe broken\n" + para(900, "b").encode())
    summary = segment_corpus(
        [str(path)],
        tmp_path / "o.jsonl",
        CorpusConfig(text_per_line=True, filters=[]),
        progress=False,
    )
    assert summary.documents == 2 and summary.errors[0]["offset"] == 2
    summary = segment_corpus(
        [str(path)], tmp_path / "o.jsonl", CorpusConfig(filters=[]), progress=False
    )
    assert summary.documents == 0 and summary.errors[0]["offset"] == f"byte {len(first)}"


def test_parquet_and_hf(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table({"content": [para(900, "a"), para(900, "b")], "url": ["u1", "u2"]}), path
    )
    out = tmp_path / "o.jsonl"
    summary = segment_corpus(
        [str(path)], out, CorpusConfig(text_field="content", filters=["length"]), progress=False
    )
    assert summary.kept == 2
    assert [json.loads(line)["url"] for line in out.read_text().splitlines()] == ["u1", "u2"]
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(InputError, match="pip install datasets"):
        segment_corpus(["hf:allenai/c4"], tmp_path / "hf.jsonl", strict=True, progress=False)


# --- the command ---------------------------------------------------------------------------


def test_segment_command_outputs(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "a.html").write_text(PAGE)
    with gzip.open(pages / "b.html.gz", "wt") as fh:
        fh.write(PAGE)  # same page: exact duplicates
    out, rejected, summary = tmp_path / "s.jsonl", tmp_path / "r.jsonl", tmp_path / "sum.json"
    result = run(
        [
            str(pages),
            "-o",
            str(out),
            "--keep-rejected",
            str(rejected),
            "--summary",
            str(summary),
            "-O",
            "length.min_chars=300",
            "-O",
            "length.max_chars=1500",
            "--filters",
            "length,nav_header,exact_dedup",
        ]
    )
    assert result.exit_code == 0, result.output
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    # "Soil" fits the window, so its sub-section "Compost" and its lead (its text before
    # "Compost") are not segments of their own, in either copy of the page.
    assert [k["header"] for k in kept] == ["Soil", "Watering"]
    info = json.loads(summary.read_text())
    assert info["kept"] == 2 and info["rejected"]["exact_dedup:duplicate"] == 2
    assert info["rejected"]["overlap:inside_parent"] == 4
    assert info["filters"] == ["length", "nav_header", "exact_dedup"]
    rows = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert {r["reason"] for r in rows} == {
        "length:too_long",
        "length:too_short",
        "exact_dedup:duplicate",
        "overlap:inside_parent",
    }
    assert "Segments by outcome" in result.output


def test_segment_command_errors(tmp_path):
    result = CliRunner().invoke(segment_command, ["missing.warc", "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "missing.warc: no such file" in result.output
    (tmp_path / "a.txt").write_text(para(900))
    result = CliRunner().invoke(
        segment_command, [str(tmp_path / "a.txt"), "-o", str(tmp_path / "o"), "--filters", "nope"]
    )
    assert result.exit_code == 2 and "unknown segment filter 'nope'" in result.output
    result = CliRunner().invoke(
        segment_command, [str(tmp_path / "a.txt"), "-o", str(tmp_path / "o"), "-O", "length"]
    )
    assert result.exit_code == 2 and "FILTER.OPTION=VALUE" in result.output
    assert not (tmp_path / "o").exists()
    result = CliRunner().invoke(segment_command, ["--help"])
    assert "--strict" in result.output and "header_caps_ratio" in result.output


def test_components_are_registered():
    assert {"warc", "html", "jsonl", "text", "parquet", "hf"} <= set(
        components("register_corpus_readers")
    )
    assert {"html_headers", "text_headers"} <= set(components("register_segmenters"))


def test_third_party_reader_plugin(tmp_path):
    from humpback_plugin.hookspecs import hookimpl
    from humpback_plugin.plugins import pm

    class Shouty:
        name = "shouty"

        def matches(self, path):
            return path.endswith(".shout")

        def read(self, path, options):
            yield Document(source=path, offset=0, text=Path(path).read_text().lower())

    class Plugin:
        @hookimpl
        def register_corpus_readers(self, register):
            register("shouty", Shouty())

    (tmp_path / "a.shout").write_text(para(900).upper())
    pm.register(Plugin(), name="test-shouty")
    try:
        summary = segment_corpus(
            [str(tmp_path / "a.shout")],
            tmp_path / "o.jsonl",
            CorpusConfig(filters=["length"]),
            progress=False,
        )
    finally:
        pm.unregister(name="test-shouty")
    assert summary.kept == 1


# --- the shared real data ------------------------------------------------------------------


def test_shared_html_pages(shared_data, tmp_path):
    pages = sorted((shared_data / "web" / "html").glob("*.html.gz"))
    assert len(pages) == 120
    reader = HtmlReader()
    with_segments = sum(1 for p in pages if list(html_headers(next(reader.read(str(p), {})), {})))
    assert with_segments == 117  # 3 pages have no h1-h6 at all
    summary = segment_corpus(
        [str(shared_data / "web" / "html")], tmp_path / "o.jsonl", progress=False
    )
    assert summary.documents == 120 and summary.bad_records == 0
    # In-gold share and the held-out pages: tests/test_extraction.py.
    assert 130 <= summary.kept <= 300
    assert summary.rejected["length:too_short"] > 100


def test_shared_warc_wet_jsonl_text(shared_data, tmp_path):
    web = shared_data / "web"
    inputs = [
        str(web / "warc" / "*.warc.gz"),
        str(web / "warc" / "*.wet.gz"),
        str(web / "c4_demo.jsonl"),
        str(web / "dolma_cc_main_2019_30.jsonl.gz"),
    ]
    summary = segment_corpus(inputs, tmp_path / "o.jsonl", progress=False)
    docs = {k: v["documents"] for k, v in summary.by_source.items()}
    assert list(docs.values()) == [38, 1, 300, 697]
    assert summary.bad_records == 0
    kept = {k.rsplit("/", 1)[-1]: v["kept"] for k, v in summary.by_source.items()}
    assert kept["*.wet.gz"] == 0  # the Common Crawl page is Aragonese Wikipedia
    assert kept["c4_demo.jsonl"] > 250 and kept["dolma_cc_main_2019_30.jsonl.gz"] > 150
    assert summary.rejected["english:not_english"] > 300  # dolma sample is multilingual
    wiki = segment_corpus(
        [str(web / "wiki_demo.txt")],
        tmp_path / "w.jsonl",
        CorpusConfig(text_per_line=True),
        progress=False,
    )
    assert wiki.documents == 30 and wiki.kept > 300
    rows = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert all(600 <= len(r["text"]) <= 3000 for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
