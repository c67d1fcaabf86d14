"""Corpus readers: turn input files into :class:`Document` records, one at a time.

Every reader streams (one record in memory at a time) and reports a record it cannot
parse through ``options["on_error"](source, offset, message)``, then goes on with the rest
of the file: real crawls contain malformed records. Registered through the
``register_corpus_readers`` hook by :mod:`humpback_plugin.stages.corpus.hooks`.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from humpback_plugin.core.errors import InputError, UnknownComponent
from humpback_plugin.core.hf import HF_PREFIX, load_hf_dataset
from humpback_plugin.core.jsonl_io import iter_json_records
from humpback_plugin.core.records import Document
from humpback_plugin.stages.corpus.warc import WarcRecord, iter_warc, split_http

SUPPORTED_FORMATS = (
    "WARC/WET (.warc, .wet, .arc[.gz]), HTML (.html, .htm[.gz]), JSONL/JSON (.jsonl, .json"
    "[.gz]), text (.txt, .md[.gz]), MediaWiki XML dumps (.xml[.bz2]), parquet, hf:NAME"
)


class UnrecognisedFormat(InputError):
    """A file no reader handles, or whose content is not the format its name says: the
    run stops (never an empty output), naming the file and the supported formats."""


def _name(path: str) -> str:
    return os.path.basename(path).lower()


def _report(options: dict[str, Any], source: str, offset: int | str | None, message: str) -> None:
    on_error = options.get("on_error")
    if on_error is None:
        raise InputError(source, offset, message)
    on_error(source, offset, message)


# --- decoding ------------------------------------------------------------------------------

# Only looks for the declared charset in the first bytes; lxml does the real parsing.
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def decode_html(data: bytes, declared: str | None = None) -> str:
    """Bytes of a web page to text: HTTP charset, else <meta> charset, else UTF-8.

    Web pages often lie about their encoding, so undecodable bytes are replaced rather
    than failing the page.
    """
    candidates = []
    if declared:
        candidates.append(declared)
    match = _META_CHARSET.search(data[:4096])
    if match:
        candidates.append(match.group(1).decode("ascii", "ignore"))
    candidates.append("utf-8")
    for encoding in candidates:
        try:
            codecs.lookup(encoding)
        except LookupError:
            continue
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


def _charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    match = re.search(r"charset=([\w.:-]+)", content_type, re.I)
    return match.group(1) if match else None


def _read_maybe_gzip(path: str) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(path, None, f"broken gzip data: {exc}") from exc
    return data


# --- readers -------------------------------------------------------------------------------


class WarcReader:
    """WARC response records with HTML (``.warc[.gz]``) and WET conversion records.

    Read with :func:`.warc.iter_warc`, which survives malformed records: a record whose
    Content-Length lies is cut at the next ``WARC/`` version line, junk between records and
    corrupt gzip members are skipped, and each problem is reported with its byte offset.
    Any WARC version is read (``WARC/0.18`` of ClueWeb09 as well as 1.0 and 1.1); ARC files
    go through warcio. Request, metadata, warcinfo and revisit records are skipped;
    responses that are not HTML or not 2xx are skipped and counted.
    """

    name = "warc"

    def matches(self, path: str) -> bool:
        name = _name(path).removesuffix(".gz")
        return name.endswith((".warc", ".wet", ".arc")) and ".wat" not in name

    def read(self, path: str, options: dict[str, Any]) -> Iterator[Document]:
        on_skip = options.get("on_skip", lambda source, why: None)

        def on_problem(where: str, message: str) -> None:
            _report(options, path, where, f"malformed WARC record: {message}")

        with open(path, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
            fh.seek(0)
            if _name(path).removesuffix(".gz").endswith(".arc") and not _starts_warc(fh, gzipped):
                yield from _read_arc(path, fh, on_skip)
                return
            for record in iter_warc(fh, gzipped, on_problem):
                doc = _warc_document(path, record, on_skip)
                if doc is not None:
                    yield doc


def _starts_warc(fh: Any, gzipped: bool) -> bool:
    head = fh.read(4096)
    fh.seek(0)
    if gzipped:
        try:
            head = zlib.decompressobj(31).decompress(head)
        except zlib.error:
            return False
    return head.lstrip().startswith(b"WARC/")


def _warc_document(path: str, record: WarcRecord, on_skip: Any) -> Document | None:
    url = record.headers.get("warc-target-uri", "").strip("<>") or None
    meta: dict[str, Any] = {
        "warc_record_id": record.headers.get("warc-record-id"),
        "warc_date": record.headers.get("warc-date"),
    }
    if record.type == "conversion":  # WET: text already extracted
        text = record.block.decode("utf-8", errors="replace")
        return Document(source=path, offset=record.offset, url=url, text=text, meta=meta)
    if record.type != "response":
        return None
    status, http_headers, body = split_http(record.block)
    content_type = http_headers.get("content-type", "")
    if status is not None and not 200 <= status < 300:
        on_skip(path, f"HTTP status {status}")
        return None
    if content_type and "html" not in content_type.lower():
        on_skip(path, "not HTML")
        return None
    html = decode_html(body, _charset(content_type))
    meta["content_type"] = content_type
    return Document(source=path, offset=record.offset, url=url, html=html, meta=meta)


def _read_arc(path: str, fh: Any, on_skip: Any) -> Iterator[Document]:
    """ARC files (the format before WARC), through warcio."""
    from warcio.archiveiterator import ArchiveIterator

    it = ArchiveIterator(fh, arc2warc=True)
    for record in it:
        if record.rec_type != "response":
            continue
        block = record.content_stream().read()
        content_type = ""
        if record.http_headers is not None:
            content_type = record.http_headers.get_header("Content-Type") or ""
            status = record.http_headers.get_statuscode()
            if status and not str(status).startswith("2"):
                on_skip(path, f"HTTP status {status}")
                continue
        if content_type and "html" not in content_type.lower():
            on_skip(path, "not HTML")
            continue
        url = record.rec_headers.get_header("WARC-Target-URI")
        html = decode_html(block, _charset(content_type))
        yield Document(source=path, offset=it.offset, url=url, html=html, meta={})


class HtmlReader:
    """One web page per ``.html``/``.htm`` file, gzipped or not.

    ``per_file``: the workers read the file themselves, so the main process neither
    reads nor sends it (a reader of one or a few documents per file may say so)."""

    name = "html"
    per_file = True

    def matches(self, path: str) -> bool:
        return _name(path).removesuffix(".gz").endswith((".html", ".htm", ".xhtml"))

    def read(self, path: str, options: dict[str, Any]) -> Iterator[Document]:
        data = _read_maybe_gzip(path)
        if not data.strip():
            options.get("on_skip", lambda s, w: None)(path, "empty file")
            return
        yield Document(source=path, offset=0, html=decode_html(data))


def _url_of(row: dict[str, Any]) -> str | None:
    url = row.get("url")
    meta = row.get("metadata")
    if not url and isinstance(meta, dict):
        url = meta.get("warc_url") or meta.get("url")
    return url if isinstance(url, str) else None


def _row_documents(
    path: str, rows: Iterator[tuple[Any, dict[str, Any]]], options: dict[str, Any]
) -> Iterator[Document]:
    field = options.get("text_field") or "text"
    html_field = options.get("html_field")
    for where, row in rows:
        value = row.get(html_field) if html_field else row.get(field)
        if not isinstance(value, str):
            got = "missing" if value is None else f"a {type(value).__name__}"
            fields = ", ".join(sorted(row)[:12])
            _report(
                options,
                path,
                where,
                f"field {html_field or field!r} is {got} (fields: {fields}); "
                "choose the field with --text-field",
            )
            continue
        meta = {"id": row["id"]} if "id" in row else {}
        if html_field:
            yield Document(source=path, offset=where, url=_url_of(row), html=value, meta=meta)
        else:
            yield Document(source=path, offset=where, url=_url_of(row), text=value, meta=meta)


class JsonlReader:
    """JSONL / JSON rows with the text in a configurable field (``text`` for C4 and dolma)."""

    name = "jsonl"

    def matches(self, path: str) -> bool:
        return _name(path).removesuffix(".gz").endswith((".jsonl", ".json", ".ndjson"))

    def read(self, path: str, options: dict[str, Any]) -> Iterator[Document]:
        rows = iter_json_records(path, on_error=options.get("on_error"))
        yield from _row_documents(path, rows, options)


class TextReader:
    """Plain text: one document per file, or one per line with ``text_per_line``."""

    name = "text"

    def matches(self, path: str) -> bool:
        return _name(path).removesuffix(".gz").endswith((".txt", ".text", ".md"))

    def read(self, path: str, options: dict[str, Any]) -> Iterator[Document]:
        if not options.get("text_per_line"):
            data = _read_maybe_gzip(path)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                _report(options, path, f"byte {exc.start}", "not UTF-8")
                return
            if text.strip():
                yield Document(source=path, offset=0, text=text)
            return
        opener = gzip.open if _name(path).endswith(".gz") else open
        lineno = 0
        try:
            with opener(path, "rb") as fh:  # type: ignore[operator]
                for lineno, raw in enumerate(fh, start=1):  # noqa: B007 - used after the loop
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        _report(options, path, lineno, f"not UTF-8 (byte {exc.start} of the line)")
                        continue
                    if line.strip():
                        yield Document(source=path, offset=lineno, text=line.strip())
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(path, f"after line {lineno}", f"unreadable: {exc}") from exc


class ParquetReader:
    """Parquet files (pyarrow), read in record batches with the configured text field."""

    name = "parquet"

    def matches(self, path: str) -> bool:
        return _name(path).endswith(".parquet")

    def read(self, path: str, options: dict[str, Any]) -> Iterator[Document]:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise InputError(
                path, None, "reading parquet needs pyarrow: pip install pyarrow"
            ) from exc
        field = options.get("text_field") or "text"
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if field not in names:
            raise InputError(path, None, f"no column {field!r} (columns: {', '.join(names)})")
        columns = [c for c in (field, "id", "url") if c in names]
        row = 0

        def rows() -> Iterator[tuple[str, dict[str, Any]]]:
            nonlocal row
            for batch in pf.iter_batches(batch_size=1000, columns=columns):
                for item in batch.to_pylist():
                    yield f"row {row}", item
                    row += 1

        yield from _row_documents(path, rows(), options)


class HuggingFaceReader:
    """A Hugging Face dataset: ``hf:NAME[:SPLIT]`` or a folder saved with ``save_to_disk``.

    Needs the optional ``datasets`` library; hub names are streamed.
    """

    name = "hf"

    def matches(self, path: str) -> bool:
        if path.startswith(HF_PREFIX):
            return True
        p = Path(path)
        return p.is_dir() and (
            (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()
        )

    def read(self, path: str, options: dict[str, Any]) -> Iterator[Document]:
        dataset = load_hf_dataset(path, options.get("split") or "train")
        rows = ((f"row {i}", row) for i, row in enumerate(dataset))
        yield from _row_documents(path, rows, options)


BUILTIN_READERS: dict[str, Any] = {
    "warc": WarcReader(),
    "html": HtmlReader(),
    "jsonl": JsonlReader(),
    "text": TextReader(),
    "parquet": ParquetReader(),
    "hf": HuggingFaceReader(),
}


# --- inputs --------------------------------------------------------------------------------


def expand_inputs(inputs: list[str], readers: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Each input argument with the files it names: a file, a folder (recursive), a glob
    or a dataset name. A missing file or an empty glob is an error before any work."""
    out = []
    for arg in inputs:
        if arg.startswith(HF_PREFIX):
            out.append((arg, [arg]))
            continue
        path = Path(arg)
        hf = readers.get("hf")
        if path.is_dir() and not (hf and hf.matches(arg)):
            files = [
                str(p)
                for p in sorted(path.rglob("*"))
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and any(r.matches(str(p)) for r in readers.values())
            ]
            if not files:
                raise InputError(arg, None, "folder has no files any corpus reader handles")
            out.append((arg, files))
        elif path.exists():
            out.append((arg, [arg]))
        elif glob.has_magic(arg):
            files = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            if not files:
                raise InputError(arg, None, "the pattern matches no files")
            out.append((arg, files))
        else:
            raise InputError(arg, None, "no such file")
    return out


def reader_for(path: str, readers: dict[str, Any], forced: str | None = None) -> Any:
    if forced:
        if forced not in readers:
            raise UnknownComponent(
                f"unknown corpus reader {forced!r}; available: {', '.join(sorted(readers))}"
            )
        return readers[forced]
    if readers.get("hf") is not None and readers["hf"].matches(path):
        return readers["hf"]
    for reader in readers.values():
        if reader.matches(path):
            return reader
    raise UnrecognisedFormat(
        path,
        None,
        f"no reader for this file type; supported: {SUPPORTED_FORMATS}; force one with --reader",
    )
