"""Any VQA data as JSON lines: ``{"image", "question", "answer"}`` per line.

This is the shape the released Uni-Edit pipeline started from (an instruction mix of
single-image VQA samples), and the way to bring any other set in. Per line:

* required: ``image`` (a path; relative paths are resolved against the JSONL file's folder, or
  ``image_root``; ``image_path`` is accepted as a synonym), ``question``, ``answer`` (a number
  or boolean is turned into text: ``3``, ``yes``);
* optional: ``id`` (or ``question_id``; default ``<file name>:<line number>``), ``image_id``
  (default: the image path as written), ``program`` (GQA-style ``[{operation, argument,
  dependencies}]``, as a list or a JSON string), ``scene_graph`` (GQA schema, object or JSON
  string), ``answers``, ``question_type``, ``choices``, ``annotations``; any other key is kept in
  ``VQARecord.extra``.

``path`` is one ``.jsonl`` file or a folder of them (read in name order). Blank lines are
skipped; every other line is one item: a record, or a BadRecord (``malformed_json`` for a
line that is not a JSON object or not UTF-8, ``missing_field``, ``missing_image``,
``bad_program``, ``bad_scene_graph``, ``bad_field``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from uniedit_cli.errors import UsageError
from uniedit_cli.synth.records import BadRecord, VQARecord
from uniedit_cli.synth.sources._base import (FileCheck, Item, ProgramError, VQASource, as_answer, check_scene_graph,
                                             mapping, natural_key, normalize_program)

KNOWN_KEYS = {"id", "question_id", "image", "image_path", "image_id", "question", "answer", "answers", "program",
              "scene_graph", "question_type", "choices", "annotations"}
SUFFIXES = (".jsonl", ".ndjson")

LAYOUT_HELP = ('Pass a .jsonl file (or a folder of them) with one {"image": PATH, "question": ..., "answer": ...} '
               "object per line; relative image paths are resolved against the file's folder.")


class JSONLSource(VQASource):
    """VQA rows from JSON lines. Options: ``limit`` (first N items), ``image_root`` (the folder
    relative image paths are resolved against, instead of each file's own folder)."""

    name = "jsonl"
    default_split = None  # a JSONL file is one split; --split is ignored

    def __init__(self, path, split: str | None = None, *, limit: int | None = None, image_root: str | None = None):
        super().__init__(path, split, limit=limit)
        self.image_root = Path(image_root).expanduser() if image_root else None
        self.files: list[Path] = []
        self._exists = FileCheck()

    def _check(self) -> None:
        root = self._require_path(LAYOUT_HELP)
        if root.is_dir():
            files = sorted((p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES),
                           key=lambda p: natural_key(p.name))
            if not files:
                raise UsageError(f"--vqa jsonl: the folder {str(root)!r} holds no .jsonl files.", hint=LAYOUT_HELP)
        else:
            files = [root]
        for f in files:
            try:
                with open(f, "rb") as fh:
                    fh.read(1)
            except OSError as exc:
                raise UsageError(f"--vqa jsonl: cannot read {str(f)!r} ({exc.strerror or exc}).") from None
        if self.image_root is not None and not self.image_root.is_dir():
            raise UsageError(f"--vqa jsonl: image_root {str(self.image_root)!r} is not a folder.")
        self.files = files

    def _describe(self) -> dict[str, Any]:
        return {"files": [str(f) for f in self.files], "image_root": str(self.image_root) if self.image_root else None}

    def _lines(self) -> Iterator[tuple[Path, int, bytes]]:
        """Non-blank lines as bytes (decoded per line, so one bad byte costs one line)."""
        for f in self.files:
            try:
                with open(f, "rb") as fh:
                    for number, line in enumerate(fh, start=1):
                        if line.strip():
                            yield f, number, line
            except OSError as exc:
                # the file vanished or the disk failed after check(): one item says so
                yield f, 0, exc

    def _count(self) -> int:
        return sum(1 for _ in self._lines())

    def _items(self, start: int) -> Iterator[Item]:
        for index, (f, number, line) in enumerate(self._lines()):
            if index < start:
                continue  # skipping costs a line split, not a JSON parse
            yield self._record(f, number, line)

    def _record(self, f: Path, number: int, line: bytes | OSError) -> Item:
        where = f"{f.name}:{number}"
        if isinstance(line, OSError):
            return BadRecord(f.name, "malformed_json", f"cannot read: {line.strerror or line}")
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            return BadRecord(where, "malformed_json", "not UTF-8 text")
        except json.JSONDecodeError as exc:
            return BadRecord(where, "malformed_json", f"{exc.msg} at column {exc.colno}")
        if not isinstance(row, dict):
            return BadRecord(where, "malformed_json", f"a JSON {type(row).__name__}, not an object")
        rid = row.get("id", row.get("question_id"))
        source_id = str(rid) if rid not in (None, "") else where
        image = row.get("image", row.get("image_path"))
        question, answer = row.get("question"), as_answer(row.get("answer"))
        missing = [n for n, v in (("image", image), ("question", question), ("answer", answer))
                   if v is None or (isinstance(v, str) and not v.strip())]
        if missing:
            return BadRecord(source_id, "missing_field", ", ".join(missing))
        if not isinstance(image, str) or not isinstance(question, str):
            return BadRecord(source_id, "bad_field", "image must be a path string and question a string")
        if image.startswith(("http://", "https://", "data:")):
            return BadRecord(source_id, "missing_image", f"{image[:60]}: URLs are not fetched; download the images")
        path = Path(image).expanduser()
        if not path.is_absolute():
            path = (self.image_root or f.parent) / path
        if not self._exists(path):
            return BadRecord(source_id, "missing_image", str(path))
        try:
            program = normalize_program(row.get("program"))
        except ProgramError as exc:
            return BadRecord(source_id, "bad_program", str(exc))
        try:
            scene_graph = check_scene_graph(row.get("scene_graph"))
        except ValueError as exc:
            return BadRecord(source_id, "bad_scene_graph", str(exc))
        answers = row.get("answers")
        if answers is not None:
            if not isinstance(answers, list):
                return BadRecord(source_id, "bad_field", "answers must be a list")
            answers = [a for a in (as_answer(x.get("answer") if isinstance(x, dict) else x) for x in answers) if a]
        choices = row.get("choices")
        if choices is not None and not isinstance(choices, list):
            return BadRecord(source_id, "bad_field", "choices must be a list")
        image_id = row.get("image_id")
        return VQARecord(
            source=self.name, source_id=source_id, image_id=str(image_id) if image_id not in (None, "") else image,
            question=question.strip(), answer=answer, image_path=str(path), answers=answers or None,
            program=program, scene_graph=scene_graph, annotations=mapping(row.get("annotations")),
            question_type=str(row["question_type"]) if row.get("question_type") else None,
            choices=[str(c) for c in choices] if choices else None,
            extra={k: v for k, v in row.items() if k not in KNOWN_KEYS},
        )
