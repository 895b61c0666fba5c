"""Reading benchmark data laid out the way users get it offline: hub dataset snapshots
(parquet shards with embedded images, from ``hf download <dataset> --repo-type dataset
--local-dir DIR``) and the benchmarks' own JSON / JSONL releases.

Suites use these helpers so that every suite fails the same way on missing data (a usage
error that says which dataset and files to place where) and materialises embedded images the
same way: written once, as their original bytes, under the run's ``inputs/`` folder, so the
batch runner and report.html read plain files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from uniedit_cli.errors import InputError, UsageError


def missing_data(suite, problem: str) -> UsageError:
    """The one error for absent or unusable benchmark data: what is wrong and the suite's
    ``data_help`` (which dataset, which files, where)."""
    return UsageError(f"--suite {suite.name}: {problem}", hint=suite.data_help or None)


def hub_snapshot(repo: str, patterns: tuple[str, ...]) -> Path | None:
    """The local snapshot of a hub dataset (only ``patterns``): from the hub cache, downloaded
    first when the hub is reachable; None when neither works (offline and not cached)."""
    from uniedit_cli.models.base import hub_reachable

    try:
        from huggingface_hub import snapshot_download

        online = hub_reachable()
        if online:
            from rich.console import Console

            Console(stderr=True).print(f"[dim]fetching {repo} ({', '.join(patterns)}) into the hub cache[/]")
        return Path(snapshot_download(repo, repo_type="dataset", allow_patterns=list(patterns),
                                      local_files_only=not online))
    except Exception:  # not cached offline, gated, a network failure: the caller says what to do
        return None


def require_data(suite) -> Path:
    """``--data`` as given; without it, the suite's hub dataset from the cache (or downloaded
    when online); else the error that says what to download and where to put it."""
    if suite.data is None:
        hub = suite.hub_data() if callable(getattr(suite, "hub_data", None)) else None
        if hub is None:
            raise missing_data(suite, "this suite needs --data (its benchmark data is not on the hub in a layout "
                                      "uniedit reads, so nothing is downloaded).")
        path = hub_snapshot(*hub)
        if path is None:
            raise missing_data(suite, f"no --data given, and the hub dataset {hub[0]} is neither in the hub cache nor "
                                      "downloadable here (offline?).")
        return path
    path = suite.data.expanduser()
    if not path.exists():
        raise missing_data(suite, f"--data {str(suite.data)!r}: no such file or folder.")
    return path


def find(root: Path, patterns: Iterable[str]) -> list[Path]:
    """Files under ``root`` (or ``root`` itself) matching any glob pattern, sorted, no hidden
    or cache folders (a hub snapshot's ``.cache/`` holds lock and metadata files)."""
    if root.is_file():
        return [root] if any(root.match(p) for p in patterns) else []
    found: set[Path] = set()
    for pattern in patterns:
        for path in root.glob(pattern):
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
                found.add(path)
    return sorted(found)


def iter_parquet(paths: Iterable[Path], *, columns: list[str] | None = None, batch_rows: int = 256) -> Iterator[dict]:
    """Rows of parquet shards as dicts, streamed in small batches: a VQAv2 shard embeds an image
    in every row, so whole tables are never held in memory."""
    import pyarrow.parquet as pq

    for path in paths:
        try:
            handle = pq.ParquetFile(path)
            names = set(handle.schema_arrow.names)
            wanted = [c for c in columns if c in names] if columns else None
            for batch in handle.iter_batches(batch_size=batch_rows, columns=wanted):
                yield from batch.to_pylist()
        except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for a bad file
            raise UsageError(f"{str(path)!r} is not a readable parquet file ({str(exc).splitlines()[0]}).",
                             hint="Re-download the shard.") from None


def parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{str(path)!r} is not a readable parquet file ({str(exc).splitlines()[0]}).",
                         hint="Re-download the shard.") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{str(path)!r} is not valid JSON ({exc}).", hint="Re-download or repair the file.") from None


def read_jsonl(path: Path) -> list[dict]:
    """Every object of a JSONL file; a malformed line is an error naming the line (benchmark
    metadata is small and must be whole, unlike a user's batch file)."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {str(path)!r} ({exc}).") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{str(path)!r} line {number}: malformed JSON ({exc.msg}).",
                             hint="Re-download or repair the file.") from None
        if not isinstance(row, dict):
            raise UsageError(f"{str(path)!r} line {number}: not a JSON object.")
        rows.append(row)
    return rows


def records(path: Path) -> list[dict]:
    """Rows of a JSON list, a JSON object of objects (key -> row, the key kept as ``_key``), or
    a JSONL file."""
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    data = read_json(path)
    if isinstance(data, list):
        return [row for row in data if isinstance(row, dict)]
    if isinstance(data, dict):
        rows = []
        for key, value in data.items():
            if isinstance(value, dict):
                rows.append({"_key": str(key), **value})
        return rows
    raise UsageError(f"{str(path)!r} holds neither a list nor an object of records.")


def nested(value: Any) -> Any:
    """A nested column: some dataset revisions store it as a JSON string, others as a struct."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def first(row: dict, names: Iterable[str], default: Any = None) -> Any:
    """The first present, non-null field of ``row`` among ``names`` (benchmarks name columns
    differently across releases)."""
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    return default


# --- images ---------------------------------------------------------------------------------

_FORMAT_SUFFIX = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"RIFF": ".webp", b"BM": ".bmp"}


def _suffix_for(data: bytes, hint: str | None) -> str:
    for magic, suffix in _FORMAT_SUFFIX.items():
        if data.startswith(magic):
            return suffix
    if hint and Path(hint).suffix:
        return Path(hint).suffix.lower()
    return ".img"  # unknown bytes: written as is; reading them later fails per sample


def safe_name(key: str) -> str:
    """A file name for a sample or image key; ids with '/' (MME) or odd characters stay unique
    through a short hash of the original."""
    import re

    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", str(key)).strip("._")[:80] or "item"
    if clean != str(key):
        clean += "-" + hashlib.sha1(str(key).encode("utf-8")).hexdigest()[:8]
    return clean


def materialize(value: Any, cache_dir: Path, key: str, *, base: Path | None = None) -> str | None:
    """A path on disk for an image cell: an embedded ``{"bytes", "path"}`` struct (the datasets
    Image feature) or raw bytes are written once to ``cache_dir``; a path string is resolved
    against ``base``. Returns None for an empty cell (reported per sample by the suite)."""
    if value is None:
        return None
    if isinstance(value, dict):
        data, hint = value.get("bytes"), value.get("path")
        if data is None:
            return materialize(hint, cache_dir, key, base=base) if hint else None
    elif isinstance(value, (bytes, bytearray)):
        data, hint = bytes(value), None
    elif isinstance(value, (str, os.PathLike)):
        path = Path(value).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        return str(path)
    elif hasattr(value, "save"):  # a PIL image handed over by a caller
        from uniedit_cli.io import save_image

        target = cache_dir / f"{safe_name(key)}.png"
        if not target.exists():
            save_image(value, target)
        return str(target)
    else:
        return None
    target = cache_dir / f"{safe_name(key)}{_suffix_for(data, hint)}"
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=cache_dir)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)  # ranks may race on the same image: the rename is atomic
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return str(target)


def open_output_image(path: Any, what: str = "output image"):
    """``(RGB image, None)`` or ``(None, reason)``: a missing or corrupt generated image is a
    per-sample problem, never fatal."""
    from uniedit_cli.io import load_image

    if path is None or path == "":
        return None, "no output" if what == "output image" else f"no {what}"
    try:
        return load_image(path, what=what), None
    except InputError as exc:
        return None, str(exc.message)


def cache_dir_of(suite) -> Path:
    """Where a suite writes images it extracts from parquet (``inputs/`` of the eval run)."""
    given = suite.options.get("cache_dir")
    if given:
        return Path(given)
    from uniedit_cli.registry import tiny_home

    return tiny_home().parent / "eval-inputs" / suite.name
