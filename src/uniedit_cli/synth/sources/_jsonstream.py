"""Streaming reads of the very large JSON files VQA datasets ship.

GQA's train questions and scene graphs, and CLEVR's train questions, are files of hundreds of
megabytes to gigabytes. ``json.load`` turns such a file into several times its size of Python
objects and makes ``--num-rows 100`` wait for the whole parse. These
helpers walk the top level of a file one entry at a time instead (the standard library's
``JSONDecoder.raw_decode`` on a sliding buffer), so memory stays at one entry plus a read
buffer, a limited read stops early, and each entry's byte span can be remembered for random
access later (:class:`OffsetIndex`).

Only the *top level* is streamed: ``{"key": value, ...}`` (GQA questions and scene graphs),
``[value, ...]``, and ``{"...": ..., "questions": [value, ...]}`` (CLEVR, VQAv2). Each value is
decoded whole, which is right for these files (a value is one question or one scene).

A malformed file raises :class:`JSONStreamError` where the damage is found; sources turn that
into one ``BadRecord("malformed_json")`` and stop, since nothing after a syntax error can be
trusted to line up with the entries the file meant.
"""

from __future__ import annotations

import codecs
import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

_WS = re.compile(r"[ \t\r\n]*")
_DECODER = json.JSONDecoder()
CHUNK = 1 << 20  # 1 MiB reads: large enough that a GQA question or scene rarely spans two reads


class JSONStreamError(ValueError):
    """The file is not the JSON it should be; ``offset`` is the byte where that was found."""

    def __init__(self, message: str, offset: int):
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


class _Reader:
    """A sliding text buffer over a UTF-8 file that can tell the byte offset of any position
    not yet dropped from the buffer."""

    def __init__(self, fh, chunk: int = CHUNK):
        self.fh = fh
        self.chunk = chunk
        # utf-8-sig: files saved by Windows tools may start with a byte-order mark
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf = ""
        self.pos = 0
        self.eof = False
        # byte offset of buf[mark]; moves forward only, so offsets cost O(file) in total
        self.mark = 0
        self.mark_bytes = 0

    def byte_offset(self, index: int) -> int:
        if index < self.mark:  # only forward queries are made; be correct anyway
            return self.mark_bytes - len(self.buf[index:self.mark].encode("utf-8"))
        self.mark_bytes += len(self.buf[self.mark:index].encode("utf-8"))
        self.mark = index
        return self.mark_bytes

    def fill(self, at_least: int = 0) -> bool:
        """Drop the consumed prefix and read more; False at the end of the file."""
        if self.eof:
            return False
        if self.pos:
            self.byte_offset(self.pos)
            self.buf = self.buf[self.pos:]
            self.mark -= self.pos
            self.pos = 0
        try:
            data = self.fh.read(max(self.chunk, at_least))
        except OSError as exc:
            raise JSONStreamError(f"read error: {exc}", self.byte_offset(self.pos)) from None
        try:
            if not data:
                self.buf += self.decoder.decode(b"", final=True)
                self.eof = True
                return False
            self.buf += self.decoder.decode(data)
        except UnicodeDecodeError as exc:
            raise JSONStreamError(f"not UTF-8 text ({exc.reason})", self.byte_offset(len(self.buf))) from None
        return True

    def peek(self) -> str | None:
        """The next non-blank character (not consumed), or None at the end of the file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return None

    def expect(self, chars: str, what: str) -> str:
        c = self.peek()
        if c is None or c not in chars:
            found = "the end of the file" if c is None else repr(c)
            raise JSONStreamError(f"expected {what}, found {found}", self.byte_offset(self.pos))
        self.pos += 1
        return c

    def value(self) -> tuple[Any, int, int]:
        """Decode the next JSON value; returns it with its start and end byte offsets."""
        if self.peek() is None:
            raise JSONStreamError("expected a value, found the end of the file", self.byte_offset(self.pos))
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # Cut off by the end of the buffer (the error sits at its very end, or a string
                # is still open): read more, doubling, so a large value costs O(n log n).
                if not self.eof and (exc.pos >= len(self.buf) - 16 or exc.msg.startswith("Unterminated string")):
                    self.fill(at_least=len(self.buf))
                    continue
                raise JSONStreamError(f"malformed JSON: {exc.msg}", self.byte_offset(exc.pos)) from None
            if end >= len(self.buf) and not self.eof:
                # a number or literal ending exactly at the buffer's end may go on in the next
                # read: read (which also shifts the buffer) and decode again
                self.fill()
                continue
            start = self.byte_offset(self.pos)
            self.pos = end
            return value, start, self.byte_offset(end)


def iter_object(path: str | Path, *, chunk: int = CHUNK) -> Iterator[tuple[str, Any, int, int]]:
    """``(key, value, start_byte, end_byte)`` for each entry of a top-level JSON object, in file order."""
    with open(path, "rb") as fh:
        r = _Reader(fh, chunk)
        r.expect("{", "a JSON object ('{')")
        if r.peek() == "}":
            return
        while True:
            if r.peek() != '"':
                raise JSONStreamError("expected a quoted key", r.byte_offset(r.pos))
            key, _, _ = r.value()
            r.expect(":", "':' after a key")
            value, start, end = r.value()
            yield key, value, start, end
            if r.expect(",}", "',' or '}'") == "}":
                return


def iter_array(path: str | Path, key: str | None = None, *, chunk: int = CHUNK) -> Iterator[tuple[Any, int, int]]:
    """``(value, start_byte, end_byte)`` for each element of the top-level array, or of the array
    under the top-level ``key`` (``{"info": ..., "questions": [...]}``)."""
    with open(path, "rb") as fh:
        r = _Reader(fh, chunk)
        if key is not None and r.peek() == "{":
            _seek_key(r, key)
        r.expect("[", "a JSON array ('[')" if key is None else f"an array under {key!r}")
        if r.peek() == "]":
            return
        while True:
            yield r.value()
            if r.expect(",]", "',' or ']'") == "]":
                return


def _seek_key(r: _Reader, key: str) -> None:
    """Position the reader at the value of top-level ``key`` (other values are decoded and dropped:
    they are small metadata such as CLEVR's ``info``)."""
    r.expect("{", "a JSON object ('{')")
    if r.peek() == "}":
        raise JSONStreamError(f"no {key!r} entry", r.byte_offset(r.pos))
    while True:
        if r.peek() != '"':
            raise JSONStreamError("expected a quoted key", r.byte_offset(r.pos))
        name, _, _ = r.value()
        r.expect(":", "':' after a key")
        if name == key:
            return
        r.value()
        if r.expect(",}", "',' or '}'") == "}":
            raise JSONStreamError(f"no {key!r} entry", r.byte_offset(r.pos))


def probe(path: str | Path, key: str | None = None) -> str | None:
    """Why ``path`` cannot be streamed (not JSON, not the expected shape), or None if it looks right.

    Reads only up to the first entry, so a check can run on a multi-gigabyte file instantly.
    ``key=None`` expects a top-level object of entries; a key expects an array under that key.
    """
    try:
        if key is None:
            for _ in iter_object(path):
                break
        else:
            for _ in iter_array(path, key):
                break
    except JSONStreamError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    return None


class OffsetIndex:
    """Random access by key into a large JSON file: one streaming pass records each entry's byte
    span, and ``get`` re-reads and parses just that span (a small LRU keeps recent entries, since
    consecutive questions usually share an image). Memory: a few dozen bytes per entry.

    Entries are the top-level object's ``key: value`` pairs (GQA scene graphs, keyed by imageId),
    or, with ``array_key``, the elements of that top-level array keyed by their ``key_field``
    (CLEVR scenes, keyed by ``image_index``). Built lazily on the first lookup so that a source
    whose questions never need it (``--num-rows`` cut short) pays nothing. Picklable.
    """

    def __init__(self, path: str | Path, *, array_key: str | None = None, key_field: str | None = None,
                 cache: int = 64):
        self.path = Path(path)
        self.array_key = array_key
        self.key_field = key_field
        self._spans: dict[str, tuple[int, int]] | None = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache
        self._fh = None
        self.error: str | None = None  # set when the file turned out malformed part way

    def _entries(self) -> Iterator[tuple[str, int, int]]:
        if self.array_key is None:
            for key, _value, start, end in iter_object(self.path):
                yield str(key), start, end
        else:
            for value, start, end in iter_array(self.path, self.array_key):
                if isinstance(value, dict) and value.get(self.key_field) is not None:
                    yield str(value[self.key_field]), start, end

    def _build(self) -> dict[str, tuple[int, int]]:
        spans: dict[str, tuple[int, int]] = {}
        try:
            for key, start, end in self._entries():
                spans.setdefault(key, (start, end))  # the first of duplicate keys, like a lookup table
        except (JSONStreamError, OSError) as exc:
            # keep what was read before the damage; lookups past it find nothing
            self.error = str(exc)
        return spans

    @property
    def spans(self) -> dict[str, tuple[int, int]]:
        if self._spans is None:
            self._spans = self._build()
        return self._spans

    def __contains__(self, key: object) -> bool:
        return str(key) in self.spans

    def __len__(self) -> int:
        return len(self.spans)

    def get(self, key: object) -> Any | None:
        # The cache holds the entry's bytes and every call parses them anew: records of one image
        # get their own dicts, so a consumer annotating one graph cannot corrupt the next record's
        # (json.loads of a few KB is faster than a deepcopy).
        key = str(key)
        if key in self._cache:
            self._cache.move_to_end(key)
            return json.loads(self._cache[key].decode("utf-8"))
        span = self.spans.get(key)
        if span is None:
            return None
        if self._fh is None:
            self._fh = open(self.path, "rb")
        self._fh.seek(span[0])
        raw = self._fh.read(span[1] - span[0])
        self._cache[key] = raw
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return json.loads(raw.decode("utf-8"))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __getstate__(self):  # for worker processes: no open handle, no cache
        state = self.__dict__.copy()
        state["_fh"] = None
        state["_cache"] = OrderedDict()
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
