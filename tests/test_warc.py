"""The WARC reader on files corrupted on purpose: lying Content-Lengths, missing blank
lines, WARC/0.18 headers with LF line ends, junk between records, broken gzip members."""

from __future__ import annotations

import gzip
import random

import pytest

from humpback_plugin.core.config import CorpusConfig
from humpback_plugin.core.errors import InputError
from humpback_plugin.stages.corpus.readers import WarcReader
from humpback_plugin.stages.corpus.stage import segment_corpus
from humpback_plugin.stages.corpus.warc import iter_warc, split_http
from tests.test_corpus import para


def page(i: int) -> bytes:
    return (
        f"<html><body><h2>Topic number {i}</h2><p>{para(900, f'w{i}x')}</p></body></html>"
    ).encode()


def record(
    i: int,
    *,
    version: str = "WARC/1.0",
    eol: str = "\r\n",
    length_delta: int = 0,
    trailer: str | None = None,
    http: bytes | None = None,
) -> bytes:
    """One response record; ``length_delta`` makes its Content-Length lie."""
    body = page(i)
    http = http or (
        b"HTTP/1.1 200 OK" + eol.encode() + b"Content-Type: text/html; charset=utf-8"
        + eol.encode() + eol.encode() + body
    )  # fmt: skip
    head = eol.join(
        [
            version,
            "WARC-Type: response",
            f"WARC-Target-URI: http://e.com/{i}",
            f"WARC-Record-ID: <urn:uuid:{i}>",
            "Content-Type: application/http;msgtype=response",
            f"Content-Length: {len(http) + length_delta}",
        ]
    )
    trailer = eol * 2 if trailer is None else trailer
    return (head + eol + eol).encode() + http + trailer.encode()


def read(path, strict: bool = False) -> tuple[list, list]:
    problems: list = []
    options = {} if strict else {"on_error": lambda *e: problems.append(e)}
    return list(WarcReader().read(str(path), options)), problems


def urls(docs) -> list[str]:
    return [d.url for d in docs]


def test_clean_file_reads_every_record_without_problems(tmp_path):
    path = tmp_path / "ok.warc"
    path.write_bytes(b"".join(record(i) for i in range(5)))
    docs, problems = read(path)
    assert urls(docs) == [f"http://e.com/{i}" for i in range(5)] and problems == []
    assert "Topic number 3" in docs[3].html and docs[0].offset == 0


@pytest.mark.parametrize("delta", [-300, -1, 5, 50, 5000])
def test_lying_content_length_is_cut_at_the_next_record(tmp_path, delta):
    chunks = [record(i, length_delta=delta if i == 2 else 0) for i in range(5)]
    path = tmp_path / "lie.warc"
    path.write_bytes(b"".join(chunks))
    docs, problems = read(path)
    assert urls(docs) == [f"http://e.com/{i}" for i in range(5)]
    assert len(problems) == 1
    source, where, message = problems[0]
    assert source == str(path) and where == f"byte {len(chunks[0]) + len(chunks[1])}"
    assert "Content-Length" in message and "wrong" in message
    # The recovered record holds the whole page, and only it.
    assert docs[2].html.rstrip().endswith("</html>") and "Topic number 3" not in docs[2].html


@pytest.mark.parametrize("delta", [1, 2, 3])
def test_a_length_that_ends_inside_the_blank_lines_loses_nothing(tmp_path, delta):
    # Indistinguishable from a correct record with a stray CR/LF at the end of its body.
    path = tmp_path / "near.warc"
    path.write_bytes(b"".join(record(i, length_delta=delta if i == 1 else 0) for i in range(3)))
    docs, _problems = read(path)
    assert urls(docs) == [f"http://e.com/{i}" for i in range(3)]
    assert docs[1].html.rstrip().endswith("</html>")


def test_lying_length_of_the_last_record(tmp_path):
    path = tmp_path / "last.warc"
    path.write_bytes(record(0) + record(1, length_delta=10_000))
    docs, problems = read(path)
    assert urls(docs) == ["http://e.com/0", "http://e.com/1"] and len(problems) == 1
    assert docs[1].html.rstrip().endswith("</html>")


def test_missing_blank_lines_and_warc_018_with_lf(tmp_path):
    """ClueWeb09 style: WARC/0.18, LF line ends, records not followed by blank lines."""
    path = tmp_path / "clueweb.warc"
    chunks = [record(i, version="WARC/0.18", eol="\n", trailer="") for i in range(4)]
    path.write_bytes(b"".join(chunks))
    docs, problems = read(path)
    assert urls(docs) == [f"http://e.com/{i}" for i in range(4)] and problems == []
    assert all("Topic number" in d.html for d in docs)


def test_junk_between_records_is_skipped_with_its_offset(tmp_path):
    chunks = [record(i) for i in range(3)]
    junk = b"garbage that is not a record\r\nat all\r\n\r\n"
    path = tmp_path / "junk.warc"
    path.write_bytes(chunks[0] + junk + chunks[1] + chunks[2])
    docs, problems = read(path)
    assert urls(docs) == [f"http://e.com/{i}" for i in range(3)]
    assert [(p[1], p[2].split(":")[1].strip()) for p in problems] == [
        (f"byte {len(chunks[0])}", "not a WARC record; skipped to the next WARC/ line")
    ]


def test_ninety_percent_of_a_badly_broken_clueweb_file(tmp_path):
    """A fifth of the lengths lie (both ways), some records lack blank lines, WARC/0.18:
    at least 90% of the records come back, each problem counted with its offset."""
    rng = random.Random(13)
    chunks, lies = [], 0
    for i in range(200):
        delta = 0
        if rng.random() < 0.2:
            delta = rng.choice([-1, 1]) * rng.randint(1, 3000)
            lies += 1
        trailer = "" if rng.random() < 0.2 else "\n\n"
        chunks.append(record(i, version="WARC/0.18", eol="\n", length_delta=delta, trailer=trailer))
    path = tmp_path / "clueweb09.warc"
    path.write_bytes(b"".join(chunks))
    docs, problems = read(path)
    assert len(docs) >= 180
    assert len(docs) == 200 and len(problems) == lies  # here every record is recovered
    offsets = [int(p[1].split()[1]) for p in problems]
    starts = {sum(len(c) for c in chunks[:i]) for i in range(200)}
    assert set(offsets) <= starts and offsets == sorted(offsets)
    # Through the whole stage: the problems are counted and listed with offsets.
    summary = segment_corpus(
        [str(path)], tmp_path / "o.jsonl", CorpusConfig(filters=["length"]), progress=False,
        warn=lambda m: None,
    )  # fmt: skip
    assert summary.documents == 200 and summary.bad_records == lies
    assert all(e["offset"].startswith("byte ") for e in summary.errors)


def test_gzip_members_with_a_broken_one_and_a_lie(tmp_path):
    members = [gzip.compress(record(i, length_delta=40 if i == 4 else 0)) for i in range(6)]
    broken = bytearray(members[2])
    broken[20:40] = b"\x00" * 20  # deflate data destroyed
    members[2] = bytes(broken)
    path = tmp_path / "crawl.warc.gz"
    path.write_bytes(b"".join(members))
    docs, problems = read(path)
    assert urls(docs) == [f"http://e.com/{i}" for i in (0, 1, 3, 4, 5)]
    offset = {i: sum(len(m) for m in members[:i]) for i in range(6)}
    wheres = [p[1] for p in problems]
    assert f"byte {offset[2]}" in wheres  # the broken member
    assert f"byte {offset[4]}" in wheres  # the lying length
    assert docs[3].offset == offset[4]  # documents carry their member's offset, as warcio's


def test_truncated_gzip_keeps_the_records_before(tmp_path):
    blob = b"".join(gzip.compress(record(i)) for i in range(4))
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(blob[: len(blob) - 200])
    docs, problems = read(path)
    assert urls(docs) == [f"http://e.com/{i}" for i in range(3)]
    assert any("gzip data breaks off" in p[2] for p in problems)


def test_strict_stops_at_the_first_problem(tmp_path):
    chunks = [record(i, length_delta=7 if i == 1 else 0) for i in range(3)]
    path = tmp_path / "lie.warc"
    path.write_bytes(b"".join(chunks))
    with pytest.raises(InputError, match=rf"lie\.warc:byte {len(chunks[0])}: .*Content-Length"):
        read(path, strict=True)


def test_single_gzip_stream_and_http_encodings(tmp_path):
    """A whole file gzipped as one stream (not per record), chunked transfer encoding and
    a gzip content encoding."""
    html = page(7)
    chunked = b"".join(
        f"{len(html[k : k + 500]):x}\r\n".encode() + html[k : k + 500] + b"\r\n"
        for k in range(0, len(html), 500)
    ) + b"0\r\n\r\n"  # fmt: skip
    http_chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked
    )
    http_gzip = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n\r\n"
        + gzip.compress(html)
    )
    path = tmp_path / "one.warc.gz"
    path.write_bytes(
        gzip.compress(record(0) + record(1, http=http_chunked) + record(2, http=http_gzip))
    )
    docs, problems = read(path)
    assert problems == [] and len(docs) == 3
    assert docs[1].html == docs[2].html == html.decode()
    assert split_http(b"not http") == (None, {}, b"not http")


def test_non_html_and_errors_are_skipped(tmp_path):
    gif = b"HTTP/1.1 200 OK\r\nContent-Type: image/gif\r\n\r\nGIF89a"
    missing = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n\r\n<p>gone</p>"
    path = tmp_path / "mixed.warc"
    path.write_bytes(record(0) + record(1, http=gif) + record(2, http=missing))
    skipped: list[str] = []
    docs = list(WarcReader().read(str(path), {"on_skip": lambda s, why: skipped.append(why)}))
    assert urls(docs) == ["http://e.com/0"] and sorted(skipped) == ["HTTP status 404", "not HTML"]


def test_iter_warc_reports_headers_without_length(tmp_path):
    bad = b"WARC/1.0\r\nWARC-Type: metadata\r\n\r\nno length here\r\n\r\n"
    path = tmp_path / "nolen.warc"
    path.write_bytes(record(0) + bad + record(1))
    problems: list = []
    with open(path, "rb") as fh:
        records = list(iter_warc(fh, False, lambda where, msg: problems.append((where, msg))))
    assert [r.type for r in records] == ["response", "metadata", "response"]
    assert records[1].block == b"no length here"
    assert problems == [(f"byte {len(record(0))}", problems[0][1])]
    assert "no Content-Length (the record has 14 bytes)" in problems[0][1]


def test_shared_wget_warcs_read_as_before(shared_data):
    """The real wget WARCs (request/response pairs, chunked bodies) read without problems."""
    docs: list = []
    for name in ("dolma_wget_sample-0000.warc.gz", "dolma_wget_sample-0001.warc.gz"):
        got, problems = read(shared_data / "web" / "warc" / name)
        assert problems == []
        docs += got
    assert len(docs) == 37
    assert all(d.url.startswith("http") and "<" not in d.url for d in docs)
    assert sum("<html" in d.html.lower()[:2000] for d in docs) >= 30
