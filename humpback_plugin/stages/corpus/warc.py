"""A WARC reader that survives malformed records.

Real crawls break the format: ClueWeb09-era ``WARC/0.18`` files carry Content-Length
fields that are wrong, records without the blank lines that should end them, LF instead of
CRLF, and truncated or corrupt gzip members. A reader that trusts Content-Length (warcio,
FastWARC) loses the record and often every record after it. This one checks each record
against what follows it:

* after ``Content-Length`` bytes of block there must be the end of the record: blank lines
  then ``WARC/`` (or the end of the file), or ``WARC/`` at once (blank lines missing,
  tolerated silently);
* when that is not so, the length lied: the block is taken up to the next ``WARC/``
  version line that starts a header block, and reading goes on from there;
* bytes that are not a record at all are skipped up to the next version line;
* a corrupt gzip member is skipped to the next gzip member.

Every problem is reported through ``on_problem(where, message)`` with its byte offset
(the offset of the gzip member in a ``.gz`` file, as warcio counts, else of the record).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

CHUNK = 1 << 18
FEED = 1 << 16
# A version line followed by a header line: the start of a record.
_VERSION_LINE = re.compile(rb"WARC/\d+\.\d+\r?\n(?=[A-Za-z-]+:)")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_GZIP_MAGIC = b"\x1f\x8b\x08"
# Above this a Content-Length is not believed without looking for the next record.
MAX_RECORD_BYTES = 256 << 20


@dataclass
class WarcRecord:
    """One record: its headers (names lower-cased) and its block (the HTTP message for a
    response, the text for a WET conversion)."""

    offset: int | str
    version: str
    headers: dict[str, str]
    block: bytes

    @property
    def type(self) -> str:
        return self.headers.get("warc-type", "").lower()


class _Stream:
    """The decompressed bytes of a plain or multi-member gzip file, read ahead in a buffer
    that drops what was consumed. Knows where each gzip member began, and where broken
    gzip data made bytes go missing."""

    def __init__(self, fh: BinaryIO, gzipped: bool, on_problem: Callable[[str, str], None]):
        self.fh = fh
        self.gzipped = gzipped
        self.on_problem = on_problem
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        self.eof = False
        self.raw_pos = 0  # compressed bytes consumed
        self.members: list[tuple[int, int]] = []  # (stream offset, file offset) per member
        self.breaks: list[int] = []  # stream offsets where data was lost
        self._decomp: Any = None
        self._pending = b""

    def where(self, offset: int) -> str:
        if not self.gzipped:
            return f"byte {offset}"
        member = None
        for start, file_offset in self.members:
            if start > offset:
                break
            member = (start, file_offset)
        if member and member[0] == offset:
            return f"byte {member[1]}"
        if member:
            return f"byte {member[1]} (gzip member; record at decompressed byte {offset})"
        return f"decompressed byte {offset}"

    def doc_offset(self, offset: int) -> int:
        """The offset a document records: the gzip member's file offset when the record
        starts one (as warcio counts), else the stream offset."""
        if self.gzipped:
            for start, file_offset in self.members:
                if start == offset:
                    return file_offset
        return offset

    def _read_more(self) -> bool:
        if self.eof:
            return False
        if not self.gzipped:
            data = self.fh.read(CHUNK)
            if not data:
                self.eof = True
                return False
            self.buf += data
            return True
        while True:
            if not self._pending:
                self._pending = self.fh.read(CHUNK)
                if not self._pending:
                    if self._decomp is not None:
                        self.on_problem(
                            f"byte {self.members[-1][1]}", "gzip data breaks off at the end"
                        )
                        self.breaks.append(self.end)
                    self.eof = True
                    return False
            if self._decomp is None:
                self.members.append((self.end, self.raw_pos))
                self._decomp = zlib.decompressobj(31)
            # Small feeds: zlib copies what follows a member's end into unused_data.
            data = self._pending[:FEED]
            try:
                out = self._decomp.decompress(data)
            except zlib.error as exc:
                self._skip_broken_member(exc)
                continue
            used = len(data) - len(self._decomp.unused_data) if self._decomp.eof else len(data)
            self.raw_pos += used
            self._pending = self._pending[used:]
            if self._decomp.eof:
                self._decomp = None
            if out:
                self.buf += out
                return True

    def _skip_broken_member(self, exc: Exception) -> None:
        member_offset = self.members[-1][1] if self.members else self.raw_pos
        self.on_problem(f"byte {member_offset}", f"broken gzip data: {exc}")
        self.breaks.append(self.end)
        # Look for the next member start after the broken one's first byte.
        data = self._pending
        start = self.raw_pos
        search_from = max(0, member_offset + 1 - start)
        while True:
            found = data.find(_GZIP_MAGIC, search_from)
            if found >= 0:
                self.raw_pos = start + found
                self._pending = data[found:]
                break
            more = self.fh.read(CHUNK)
            if not more:
                self._pending = b""
                self.raw_pos = start + len(data)
                break
            keep = data[-(len(_GZIP_MAGIC) - 1) :]
            start += len(data) - len(keep)
            data = keep + more
            search_from = 0
        self._decomp = None

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def ensure(self, offset: int) -> bool:
        """Buffer up to stream ``offset``; False when the stream ends before it."""
        while self.end < offset:
            if not self._read_more():
                return False
        return True

    def get(self, start: int, stop: int) -> bytes:
        return bytes(self.buf[start - self.base : stop - self.base])

    def find(self, pattern: re.Pattern[bytes], start: int) -> re.Match[bytes] | None:
        """The first match at or after ``start``, reading ahead as needed; match offsets
        are relative to the buffer (add ``self.base``)."""
        pos = start
        while True:
            match = pattern.search(self.buf, pos - self.base)
            if match and (match.end() < len(self.buf) or self.eof):
                return match
            if match is None:
                pos = max(start, self.end - 64)
            if not self._read_more():
                return pattern.search(self.buf, pos - self.base)

    def drop_before(self, offset: int) -> None:
        cut = offset - self.base
        if cut > CHUNK:
            del self.buf[:cut]
            self.base = offset
            # Keep the member that holds ``offset`` and those after it.
            first = 0
            for i, (start, _file_offset) in enumerate(self.members):
                if start <= offset:
                    first = i
            del self.members[:first]

    def lost_between(self, start: int, stop: int) -> bool:
        return any(start < b <= stop for b in self.breaks)


def _parse_headers(raw: bytes) -> tuple[str, dict[str, str]] | None:
    lines = raw.decode("utf-8", "replace").replace("\r\n", "\n").split("\n")
    version = lines[0].strip()
    if not version.startswith("WARC/"):
        return None
    headers: dict[str, str] = {}
    last = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and last:
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            last = name.strip().lower()
            headers[last] = value.strip()
    return version, headers


def iter_warc(
    fh: BinaryIO, gzipped: bool, on_problem: Callable[[str, str], None]
) -> Iterator[WarcRecord]:
    """Every record of a WARC file that can be recovered, in file order."""
    stream = _Stream(fh, gzipped, on_problem)
    pos = 0
    while True:
        stream.drop_before(pos)
        # Blank lines between records are not an error.
        while stream.ensure(pos + 1) and stream.buf[pos - stream.base] in b"\r\n \t":
            pos += 1
        if not stream.ensure(pos + 1):
            return
        if not stream.ensure(pos + 5) or stream.get(pos, pos + 5) != b"WARC/":
            match = stream.find(_VERSION_LINE, pos)
            on_problem(stream.where(pos), "not a WARC record; skipped to the next WARC/ line")
            if match is None:
                return
            pos = stream.base + match.start()
            continue
        header_end = stream.find(_BLANK_LINE, pos)
        if header_end is None:
            on_problem(stream.where(pos), "WARC headers break off at the end of the file")
            return
        parsed = _parse_headers(stream.get(pos, stream.base + header_end.start()))
        body_start = stream.base + header_end.end()
        if parsed is None:
            on_problem(stream.where(pos), "unreadable WARC version line; skipped")
            match = stream.find(_VERSION_LINE, body_start)
            if match is None:
                return
            pos = stream.base + match.start()
            continue
        version, headers = parsed
        length_text = headers.get("content-length", "").strip()
        length = int(length_text) if length_text.isdigit() else None
        if length is not None and _length_holds(stream, body_start, body_start + length):
            body_end = next_pos = body_start + length
        else:
            # The length lied (or is missing): the record ends where the next one starts.
            match = stream.find(_VERSION_LINE, body_start)
            next_pos = stream.end if match is None else stream.base + match.start()
            body_end = body_start + len(stream.get(body_start, next_pos).rstrip(b"\r\n"))
            claimed = (
                f"Content-Length {length_text} is wrong" if length_text else "no Content-Length"
            )
            on_problem(
                stream.where(pos),
                f"{claimed} (the record has {body_end - body_start} bytes); "
                "read up to the next WARC/ line",
            )
        if stream.lost_between(pos, body_end):
            on_problem(stream.where(pos), "record lost to broken gzip data")
        else:
            yield WarcRecord(
                offset=stream.doc_offset(pos),
                version=version,
                headers=headers,
                block=stream.get(body_start, body_end),
            )
        pos = next_pos


def _length_holds(stream: _Stream, body_start: int, body_end: int) -> bool:
    """Whether the record really ends ``body_end``: the file ends there (blank lines
    aside), or the next record starts (blank lines missing tolerated), or the proper
    blank lines follow and no record starts inside the block (then what follows is junk,
    reported as such by the next step)."""
    if body_end - body_start > MAX_RECORD_BYTES:
        return False
    complete = stream.ensure(body_end + 64)
    if not complete and stream.end < body_end:
        return False
    tail = stream.get(body_end, min(body_end + 64, stream.end))
    rest = tail.lstrip(b"\r\n")
    if rest.startswith(b"WARC/") or (not rest and not complete):
        return True
    if not (tail.startswith(b"\r\n\r\n") or tail.startswith(b"\n\n")):
        return False
    block = stream.buf[body_start - stream.base : body_end - stream.base]
    return block.find(b"WARC/") < 0 or _VERSION_LINE.search(block) is None


# --- HTTP inside a response record ----------------------------------------------------------


def split_http(block: bytes) -> tuple[int | None, dict[str, str], bytes]:
    """(status, headers with lower-case names, decoded body) of an HTTP response block.
    Chunked transfer encoding and gzip/deflate/brotli content encoding are undone; a body
    that does not decode as declared is kept as it is."""
    match = re.search(rb"\r?\n\r?\n", block)
    if match is None or not block.startswith(b"HTTP/"):
        return None, {}, block
    head = block[: match.start()].decode("latin-1").replace("\r\n", "\n").split("\n")
    body = block[match.end() :]
    parts = head[0].split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    encoding = headers.get("content-encoding", "").lower().strip()
    if encoding in ("gzip", "x-gzip", "deflate", "br"):
        body = _decode_content(body, encoding)
    return status, headers, body


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        line_end = body.find(b"\n", pos)
        if line_end < 0:
            return body if not out else bytes(out)
        size_text = body[pos:line_end].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return body if not out else bytes(out)
        if size == 0:
            return bytes(out)
        out += body[line_end + 1 : line_end + 1 + size]
        pos = line_end + 1 + size
        while pos < len(body) and body[pos : pos + 1] in (b"\r", b"\n"):
            pos += 1


def _decode_content(body: bytes, encoding: str) -> bytes:
    try:
        if encoding == "br":
            import brotli

            return brotli.decompress(body)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -15)
        return zlib.decompress(body, 47)
    except Exception:  # noqa: BLE001 - undecodable: the bytes as they are
        return body
