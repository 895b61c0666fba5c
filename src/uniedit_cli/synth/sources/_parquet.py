"""Reading hub datasets saved as parquet (``hf download <repo> --repo-type dataset --local-dir``).

pyarrow directly rather than ``datasets.load_dataset``: that would first copy every shard,
embedded images included, into an Arrow cache (a second copy of every image), while these
readers stream row groups in file order, read only the columns asked for, and skip row groups
by their metadata when resuming at an index.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from uniedit_cli.errors import UsageError

BATCH_ROWS = 256


@dataclass
class RowError:
    """Stands in for a row whose row group could not be read (a corrupt data page): the source
    turns it into a BadRecord, so a bad shard costs its rows, not the run."""

    where: str
    detail: str


def _pq():
    import pyarrow.parquet as pq

    return pq


def _short(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


class ParquetRows:
    """The rows of a list of parquet files, in order, as dicts."""

    def __init__(self, files: Iterable[Path]):
        self.files = [Path(f) for f in files]
        self._groups: list[list[int]] | None = None  # rows per row group, per file
        self._names: list[str] | None = None

    def check(self, what: str, hint: str) -> None:
        """Read every footer now (cheap) so that an unreadable shard is a usage error up front."""
        pq = _pq()
        groups, names = [], None
        for f in self.files:
            try:
                meta = pq.ParquetFile(f)
                groups.append([meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups)])
                if names is None:
                    names = list(meta.schema_arrow.names)
            except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError, ...: one message for all
                raise UsageError(f"{what}: {str(f)!r} is not a readable parquet file ({_short(exc)}).", hint=hint) from None
        self._groups, self._names = groups, names or []

    @property
    def columns(self) -> list[str]:
        if self._names is None:
            self.check("parquet", "")
        return list(self._names or [])

    @property
    def num_rows(self) -> int:
        if self._groups is None:
            self.check("parquet", "")
        return sum(sum(g) for g in self._groups or [])

    def iter_rows(self, start: int = 0, columns: list[str] | None = None,
                  batch_rows: int = BATCH_ROWS) -> Iterator[dict | RowError]:
        """Rows from global index ``start``; whole row groups before it are skipped unread."""
        pq = _pq()
        if self._groups is None:
            self.check("parquet", "")
        offset = 0
        for f, groups in zip(self.files, self._groups or []):
            file_rows = sum(groups)
            if offset + file_rows <= start:
                offset += file_rows
                continue
            handle = None
            file_start = offset
            for g, n in enumerate(groups):
                if offset + n <= start:
                    offset += n
                    continue
                skip = max(0, start - offset)
                try:
                    if handle is None:
                        handle = pq.ParquetFile(f)
                    wanted = [c for c in columns if c in handle.schema_arrow.names] if columns else None
                    seen = 0
                    for batch in handle.iter_batches(batch_size=batch_rows, row_groups=[g], columns=wanted):
                        rows = batch.to_pylist()
                        if seen + len(rows) <= skip:
                            seen += len(rows)
                            continue
                        first = max(0, skip - seen)
                        seen += len(rows)
                        for row in rows[first:]:
                            yield row
                        # rows yielded so far in this group, for the error path below
                        skip = max(skip, seen)
                except Exception as exc:  # noqa: BLE001 - a damaged page: every unread row of the group is bad
                    for r in range(max(skip, 0), n):
                        yield RowError(f"{f.name}#{offset - file_start + r}", _short(exc))
                offset += n


def image_value(value: Any, base: Path | None = None) -> tuple[bytes | None, Path | None]:
    """A ``datasets`` Image cell (``{"bytes", "path"}``), raw bytes, or a path string ->
    ``(bytes, None)`` or ``(None, existing file path)`` or ``(None, None)``."""
    if value is None:
        return None, None
    if isinstance(value, (bytes, bytearray)):
        return (bytes(value) or None), None
    if isinstance(value, dict):
        data = value.get("bytes")
        if data:
            return bytes(data), None
        value = value.get("path")
    if isinstance(value, str) and value:
        p = Path(value).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        return None, (p if p.is_file() else None)
    return None, None


class ImageTable:
    """Images of a separate "images" config (GQA on the hub), fetched by id.

    An index id -> (file, row group, row) is built from the id column alone on first use. Rows
    are fetched a batch of questions at a time, each needed row group read once per batch, and
    recently read row groups kept in an LRU bounded by bytes (always at least one group), so
    questions grouped by image, as GQA's are, read every image row group about once.
    """

    def __init__(self, files: Iterable[Path], *, id_column: str = "id", image_column: str = "image",
                 cache_bytes: int = 512 << 20):
        self.files = [Path(f) for f in files]
        self.id_column = id_column
        self.image_column = image_column
        self.cache_bytes = cache_bytes
        self._index: dict[str, tuple[int, int, int]] | None = None
        self._cache: OrderedDict[tuple[int, int], tuple[list, int]] = OrderedDict()
        self._cached = 0
        self.index_errors: list[str] = []

    def _build_index(self) -> dict[str, tuple[int, int, int]]:
        pq = _pq()
        index: dict[str, tuple[int, int, int]] = {}
        for fi, f in enumerate(self.files):
            try:
                handle = pq.ParquetFile(f)
                for g in range(handle.num_row_groups):
                    ids = handle.read_row_group(g, columns=[self.id_column]).column(0).to_pylist()
                    for r, image_id in enumerate(ids):
                        if image_id is not None:
                            index.setdefault(str(image_id), (fi, g, r))  # first copy wins, deterministically
            except Exception as exc:  # noqa: BLE001 - its images count as missing, reported per question
                self.index_errors.append(f"{f.name}: {_short(exc)}")
        return index

    @property
    def index(self) -> dict[str, tuple[int, int, int]]:
        if self._index is None:
            self._index = self._build_index()
        return self._index

    def _group(self, fi: int, g: int) -> list:
        key = (fi, g)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key][0]
        pq = _pq()
        column = pq.ParquetFile(self.files[fi]).read_row_group(g, columns=[self.image_column]).column(0)
        cells = column.to_pylist()
        size = column.nbytes
        self._cache[key] = (cells, size)
        self._cached += size
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, (_, dropped) = self._cache.popitem(last=False)
            self._cached -= dropped
        return cells

    def fetch(self, ids: Iterable[str]) -> dict[str, tuple[bytes | None, Path | None, str | None]]:
        """id -> (bytes, path, error); error is set when the id is unknown or its group unreadable."""
        wanted: dict[tuple[int, int], list[tuple[str, int]]] = {}
        out: dict[str, tuple[bytes | None, Path | None, str | None]] = {}
        for image_id in dict.fromkeys(ids):
            where = self.index.get(image_id)
            if where is None:
                out[image_id] = (None, None, "not in the images table" + (
                    f" (unreadable shards: {'; '.join(self.index_errors)})" if self.index_errors else ""))
            else:
                wanted.setdefault(where[:2], []).append((image_id, where[2]))
        for (fi, g) in sorted(wanted):  # file order: sequential reads
            try:
                cells = self._group(fi, g)
            except Exception as exc:  # noqa: BLE001
                for image_id, _ in wanted[(fi, g)]:
                    out[image_id] = (None, None, f"unreadable row group: {_short(exc)}")
                continue
            for image_id, r in wanted[(fi, g)]:
                data, path = image_value(cells[r], self.files[fi].parent)
                out[image_id] = (data, path, None if (data or path) else "empty image cell")
        return out

    def __getstate__(self):  # for worker processes: the index is rebuilt, the cache not sent
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        state["_cached"] = 0
        return state
