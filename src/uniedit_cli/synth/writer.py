"""Writing synth output: parquet shards (images embedded as the ``datasets`` Image feature),
rejected rows, ``uniedit-data.json`` and ``preview.html``.

Each shard is one deterministic chunk of planned rows, written to a temporary file and renamed
when complete, so a killed run loses at most the chunks in flight and a rerun skips finished
ones (DESIGN.md, "Data written by synth"). ``datasets.load_dataset("parquet", data_dir=out)``
loads the folder; the first three columns are what diffusers' instruct-pix2pix example reads.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from uniedit_cli.synth.records import COLUMNS

MANIFEST = "uniedit-data.json"
REJECTED_DIR = "rejected"
PLAN_REJECTIONS = "plan.jsonl"
CHUNK_NOTES_DIR = ".chunks"


SPLITS = ("train", "test")


def shard_name(index: int, total: int) -> str:
    return f"data-{index:05d}-of-{total:05d}.parquet"


def shard_path(out_dir: Path, split: str, index: int, total: int) -> Path:
    """Kept rows live in ``<out>/<split>/``: a split keyword in the path is what makes
    ``datasets.load_dataset("parquet", data_dir=out)`` read the shards and nothing else there
    (preview.html, rejected/, the manifest)."""
    return out_dir / split / shard_name(index, total)


def renumber_shards(folder: Path, total: int) -> list[Path]:
    """Once every chunk is done: name the shards in ``folder`` ``data-{j}-of-{n}`` with ``n`` the
    number of files there, in chunk order (a chunk with no row for a split writes no shard, so
    test/ and rejected/ hold fewer than ``total``; ``-of-N`` must not announce shards that do not
    exist). Shards still named by chunk (``-of-{total}``) follow those already renamed, so a run
    killed in the middle of this finishes it when rerun. Returns the shards in order."""
    import re

    pattern = re.compile(r"data-(\d{5,})-of-(\d{5,})\.parquet")
    renamed, by_chunk = [], []
    for path in folder.glob("data-*-of-*.parquet"):
        match = pattern.fullmatch(path.name)
        if match:
            (by_chunk if int(match.group(2)) == total else renamed).append((int(match.group(1)), path))
    ordered = [path for _, path in sorted(renamed)] + [path for _, path in sorted(by_chunk)]
    final = []
    for j, path in enumerate(ordered):
        target = folder / shard_name(j, len(ordered))
        if path != target:
            os.replace(path, target)
        final.append(target)
    return final


def features(*, with_reason: bool = False):
    from datasets import Features, Image, Value

    cols = {
        "input_image": Image(),
        "edit_prompt": Value("string"),
        "edited_image": Image(),
        "id": Value("string"),
        "source": Value("string"),
        "source_id": Value("string"),
        "image_id": Value("string"),
        "task_category": Value("string"),
        "original_question": Value("string"),
        "original_answer": Value("string"),
        "process_answer": Value("string"),
        "style": Value("string"),
        "condition_holds": Value("bool"),
        "expected_after_edit": {"question": Value("string"), "answer": Value("string")},
        "program": Value("string"),
        "editor": Value("string"),
        "seed": Value("int64"),
        "judge_answer": Value("string"),
        "judge_ok": Value("bool"),
        "clip_dir": Value("float32"),
        "clip_img": Value("float32"),
        "quality": Value("float32"),
    }
    assert tuple(cols) == COLUMNS
    if with_reason:
        cols["reject_reason"] = Value("string")
    return Features(cols)


def png_bytes(img) -> dict | None:
    if img is None:
        return None
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=1)  # speed over size: shards are rewritten rarely
    return {"bytes": buffer.getvalue(), "path": None}


def write_rows(path: Path, rows: list[dict[str, Any]], *, with_reason: bool = False) -> Path:
    """Write ``rows`` (dicts with COLUMNS; images as PIL or None) as one parquet file, atomically."""
    import pyarrow.parquet as pq

    feats = features(with_reason=with_reason)
    columns: dict[str, list] = {name: [] for name in feats}
    for row in rows:
        for name in feats:
            value = row.get(name)
            if name in ("input_image", "edited_image"):
                value = png_bytes(value)
            columns[name].append(value)
    table = _arrow_table(columns, feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _arrow_table(columns: dict[str, list], feats):
    """An arrow table whose schema carries the datasets feature metadata (so Image columns load
    back as images)."""
    import pyarrow as pa

    schema = feats.arrow_schema
    arrays = [pa.array(columns[field.name], type=field.type) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def read_shard(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def write_plan_rejections(out_dir: Path, rejections: list[dict]) -> None:
    from uniedit_cli.io import write_text

    path = out_dir / REJECTED_DIR / PLAN_REJECTIONS
    write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rejections))


def write_preview(out_dir: Path, rows: list[dict], *, limit: int = 48, title: str = "uniedit synth preview",
                  meta: str = "") -> Path:
    """preview.html: source, instruction, target and scores for a sample of kept rows."""
    from PIL import Image

    from uniedit_cli.gallery import write_gallery
    from uniedit_cli.io import save_image

    preview_dir = out_dir / "preview"
    gallery_rows = []
    for row in rows[:limit]:
        cells: dict[str, dict] = {}
        for column in ("input_image", "edited_image"):
            value = row.get(column)
            if value is None:
                cells[column] = {"text": "(none)"}
                continue
            img = value if isinstance(value, Image.Image) else Image.open(io.BytesIO(value["bytes"]))
            path = preview_dir / f"{row['id']}-{'source' if column == 'input_image' else 'target'}.png"
            save_image(img, path)
            cells[column] = {"image": path}
        expected = row.get("expected_after_edit") or {}
        scores = {k: row.get(k) for k in ("judge_answer", "judge_ok", "clip_dir", "clip_img", "quality") if row.get(k) is not None}
        gallery_rows.append({
            "source": cells["input_image"],
            "instruction": {"text": row["edit_prompt"]},
            "target": cells["edited_image"],
            "details": {"text": "\n".join([
                f"{row['task_category']} / {row['style']}" + (f" (condition {'holds' if row['condition_holds'] else 'fails'})"
                                                               if row.get("condition_holds") is not None else ""),
                f"Q: {row['original_question']}  A: {row['original_answer']}",
                f"re-ask: {expected.get('question', '')} -> {expected.get('answer', '')}",
                *(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in scores.items()),
            ])},
        })
    return write_gallery(out_dir / "preview.html", title=title, columns=["source", "instruction", "target", "details"],
                         rows=gallery_rows, meta=meta)
