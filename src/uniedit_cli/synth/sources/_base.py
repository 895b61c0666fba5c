"""What every external VQA source shares: the iteration contract and the small helpers.

The contract (the pipeline relies on it):

* ``Source(path, split=..., **options)`` does no I/O; ``check()`` validates the paths and the
  layout and raises :class:`UsageError` (what is missing, the layout expected, where to get
  it) before any work starts. Iterating calls ``check()`` first, so nothing can fail half way
  through for a reason that could have been found up front.
* Iteration yields :class:`VQARecord` or :class:`BadRecord`, one *item* per entry of the
  source (a question, a parquet row, a non-empty JSONL line), in a stable order: the files'
  own order, files sorted by name. Position ``i`` in that sequence is the item's index;
  ``iter_range(start, stop)`` yields items ``start..stop-1`` (skipping cheaply where the
  format allows), so a pipeline cut into chunks can resume by index.
* A bad entry never raises: it becomes ``BadRecord(source_id, reason, detail)`` with one of
  :data:`BAD_REASONS`. Images are never decoded here (the pipeline decodes lazily through
  ``VQARecord.load_image()``); an image file's existence is checked with one directory
  listing per folder.
* ``count()`` is the number of items iteration will yield (``limit`` included); ``len()``
  works only where that is cheap (parquet metadata), and ``has_cheap_len`` says which.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator

from uniedit_cli.errors import UsageError
from uniedit_cli.synth.records import BadRecord, VQARecord

Item = VQARecord | BadRecord

# The reasons a source gives for a BadRecord (the pipeline counts rejections per reason).
BAD_REASONS = {
    "missing_image": "the image file is absent, or the image is not in the images table/folder",
    "malformed_json": "a line or file that is not valid JSON, or not a JSON object where one is expected",
    "missing_field": "a required field (question, answer, image) is absent or empty",
    "bad_field": "a field of the wrong type or shape",
    "bad_program": "a reasoning program that is not a list of {operation, argument, dependencies}",
    "bad_scene_graph": "a scene graph that is not {width, height, objects: {...}}",
    "unknown_operation": "a program step the converter does not know (CLEVR)",
    "unreadable_parquet": "a parquet row group that could not be read (corrupt shard)",
}


class VQASource:
    """Base of the external sources (gqa, vqav2, clevr, jsonl)."""

    name: ClassVar[str] = ""
    default_split: ClassVar[str | None] = "val"

    def __init__(self, path: str | os.PathLike | None, split: str | None = None, *, limit: int | None = None):
        self.path = Path(path).expanduser() if path not in (None, "") else None
        self.split = split or self.default_split
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise UsageError(f"{self.name}: limit must be a non-negative integer, got {limit!r}.")
        self.limit = limit
        self._checked = False

    # --- the public contract ------------------------------------------------------------------

    def check(self) -> "VQASource":
        """Validate paths and layout (raises UsageError); cheap, idempotent, returns self."""
        if not self._checked:
            self._check()
            self._checked = True
        return self

    def __iter__(self) -> Iterator[Item]:
        return self.iter_range(0)

    def iter_range(self, start: int = 0, stop: int | None = None) -> Iterator[Item]:
        """Items ``start`` .. ``stop - 1`` of the stable order (``stop=None``: to the end)."""
        self.check()
        if start < 0:
            raise ValueError("start must be >= 0")
        if self.limit is not None:
            stop = self.limit if stop is None else min(stop, self.limit)
        if stop is not None and stop <= start:
            return iter(())
        return _bounded(self._items(start), None if stop is None else stop - start)

    def count(self) -> int:
        """How many items iteration yields (records and bad records alike)."""
        self.check()
        n = self._count()
        return n if self.limit is None else min(n, self.limit)

    @property
    def has_cheap_len(self) -> bool:
        self.check()
        return self._cheap_count()

    def __bool__(self) -> bool:
        # without this, `if source:` would call __len__ and could raise for a JSON-backed source
        return True

    def __len__(self) -> int:
        # list() and friends ask len() for a size hint and ignore a TypeError, so a source whose
        # count needs a full pass is not read twice by accident.
        if not self.has_cheap_len:
            raise TypeError(f"{self.name} source: counting needs a full pass; call count()")
        return self.count()

    def describe(self) -> dict[str, Any]:
        """What was found where (for the run manifest and error reports)."""
        self.check()
        return {"source": self.name, "path": str(self.path) if self.path else None, "split": self.split,
                "limit": self.limit, **self._describe()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, split={self.split!r}, limit={self.limit!r})"

    # --- for subclasses ----------------------------------------------------------------------

    def _check(self) -> None:
        raise NotImplementedError

    def _items(self, start: int) -> Iterator[Item]:
        """All items from index ``start`` on, skipping the ones before it as cheaply as the
        format allows (no record building, no image checks)."""
        raise NotImplementedError

    def _count(self) -> int:
        return sum(1 for _ in self._items(0))

    def _cheap_count(self) -> bool:
        return False

    def _describe(self) -> dict[str, Any]:
        return {}

    # --- shared helpers ----------------------------------------------------------------------

    def _require_path(self, layout_help: str) -> Path:
        if self.path is None:
            raise UsageError(f"--vqa {self.name} needs --vqa-path (the dataset folder or file).", hint=layout_help)
        if not self.path.exists():
            raise UsageError(f"--vqa {self.name}: {str(self.path)!r} does not exist.", hint=layout_help)
        return self.path


def _bounded(it: Iterator[Item], n: int | None) -> Iterator[Item]:
    """At most ``n`` items of ``it``, closing it (and its open files) when stopping early."""
    try:
        if n is None:
            yield from it
        else:
            for i, item in enumerate(it):
                yield item
                if i + 1 >= n:
                    break
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


# --- images on disk -------------------------------------------------------------------------

class ImageDir:
    """Cheap existence checks for many files of one folder: one ``scandir`` listing (GQA has
    148k images in one folder: one listing beats 148k ``stat`` calls), made on first use.
    Names with a folder part fall back to a single ``isfile``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._names: set[str] | None = None

    def _listing(self) -> set[str]:
        if self._names is None:
            try:
                with os.scandir(self.folder) as entries:
                    self._names = {e.name for e in entries}
            except OSError:
                self._names = set()
        return self._names

    def path(self, name: str) -> Path:
        return self.folder / name

    def has(self, name: str) -> bool:
        if "/" in name or os.sep in name:
            return (self.folder / name).is_file()
        return name in self._listing()

    def __getstate__(self):  # a worker re-lists rather than receiving a big set
        return {"folder": self.folder, "_names": None}


class FileCheck:
    """``isfile`` with a small memo, for sources whose images live anywhere (JSONL)."""

    def __init__(self, size: int = 4096):
        self._seen: dict[str, bool] = {}
        self._size = size

    def __call__(self, path: Path) -> bool:
        key = str(path)
        hit = self._seen.get(key)
        if hit is None:
            hit = path.is_file()
            if len(self._seen) >= self._size:
                self._seen.clear()  # crude but bounded; consecutive rows usually share images
            self._seen[key] = hit
        return hit


def first_existing(candidates: Iterable[Path], *, kind: str = "file") -> Path | None:
    for c in candidates:
        if (kind == "file" and c.is_file()) or (kind == "dir" and c.is_dir()):
            return c
    return None


def natural_key(path: Path | str) -> list:
    """Sort key that puts ``x_2`` before ``x_10`` (GQA's train_all_questions_0..9.json, shards)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def parquet_under(folder: Path) -> list[Path]:
    """Parquet files under ``folder`` (recursively: hub ``<config>/<split>-0000k-of-0000n.parquet``
    and the parquet-converter's ``<config>/<split>/0000.parquet``), hidden folders skipped
    (a hub download's ``.cache/``), in natural order."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.rglob("*.parquet")
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(found, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


def hub_roots(root: Path) -> list[Path]:
    """Folders that may hold a hub dataset's config folders: the folder itself, ``data/``, and a
    Hugging Face cache entry's ``snapshots/<revision>/`` (the single one, or the newest)."""
    roots = [root, root / "data"]
    snapshots = root / "snapshots"
    if snapshots.is_dir():
        revisions = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: (p.stat().st_mtime, p.name))
        if revisions:
            roots.insert(0, revisions[-1])
    return roots


# --- values -----------------------------------------------------------------------------------

def as_answer(value: Any) -> str | None:
    """An answer as text: CLEVR stores counts as ints and some dumps store yes/no as booleans."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, str):
        text = value.strip()
        return text or None
    return None


def nested(value: Any) -> Any:
    """A nested column: a JSON string in some dataset revisions, a struct/list in others."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("{", "[") or text in ("null", ""):
            try:
                return json.loads(text) if text else None
            except json.JSONDecodeError:
                return value
    return value


def mapping(value: Any) -> dict | None:
    """A dict-like nested value as a plain dict, however the table stored it.

    Parquet cannot store a dict whose keys vary per row (GQA's annotations map token spans such
    as ``"4:6"`` to object ids) except as a JSON string, as a map (list of key/value pairs), or
    as a struct whose fields are the union of all rows' keys, with nulls where a row lacks one.
    All three come back as the row's own dict; null fields of the struct form are dropped.
    """
    value = nested(value)
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): (mapping(v) if isinstance(v, (dict, list)) and _looks_like_map(v) else v)
                for k, v in value.items() if v is not None}
    if isinstance(value, list) and _looks_like_map(value):
        out = {}
        for pair in value:
            k, v = (pair["key"], pair["value"]) if isinstance(pair, dict) else pair
            if v is not None:
                out[str(k)] = mapping(v) if isinstance(v, (dict, list)) and _looks_like_map(v) else v
        return out
    return None


def _looks_like_map(value: Any) -> bool:
    if isinstance(value, dict):
        return True
    return isinstance(value, list) and bool(value) and all(
        (isinstance(p, (tuple, list)) and len(p) == 2) or (isinstance(p, dict) and set(p) == {"key", "value"})
        for p in value)


class ProgramError(ValueError):
    pass


def normalize_program(value: Any) -> list[dict] | None:
    """A GQA-style semantic program as ``[{"operation", "argument", "dependencies"}]``.

    Accepts a list (or its JSON string) of dicts; ``argument`` defaults to ``""`` and
    ``dependencies`` to ``[]``; an empty list gives None. Raises :class:`ProgramError` for anything else, including a
    dependency that does not point at an earlier step (programs are evaluated in order).
    """
    value = nested(value)
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProgramError(f"expected a list of steps, got {type(value).__name__}")
    program = []
    for i, step in enumerate(value):
        if not isinstance(step, dict):
            raise ProgramError(f"step {i} is a {type(step).__name__}, not an object")
        op = step.get("operation")
        if not isinstance(op, str) or not op.strip():
            raise ProgramError(f"step {i} has no operation")
        arg = step.get("argument")
        arg = "" if arg is None else str(arg)
        deps = nested(step.get("dependencies"))
        deps = [] if deps is None else deps
        if not isinstance(deps, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in deps):
            raise ProgramError(f"step {i} ({op}) has dependencies {deps!r}, not a list of step numbers")
        if any(d < 0 or d >= i for d in deps):
            raise ProgramError(f"step {i} ({op}) depends on {deps!r}: only earlier steps are allowed")
        program.append({"operation": op.strip(), "argument": arg, "dependencies": [int(d) for d in deps]})
    return program or None  # an empty program is no program: downstream falls back to rules


def check_scene_graph(value: Any) -> dict | None:
    """A GQA-schema scene graph (``{width, height, objects: {id: {...}}}``) or None; raises
    ValueError when it is present but not that shape."""
    value = nested(value)
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("objects"), dict):
        raise ValueError("expected an object with an 'objects' mapping of id -> object")
    for oid, obj in value["objects"].items():
        if not isinstance(obj, dict):
            raise ValueError(f"object {oid!r} is not an object")
    return value
