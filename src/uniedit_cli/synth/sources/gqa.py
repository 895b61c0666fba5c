"""GQA as a VQA source: the official release and the lmms-lab/GQA hub layout.

Official release (REFERENCE.md, "VQA sources"; https://cs.stanford.edu/people/dorarad/gqa/):
questions JSON ``questionId -> {imageId, question, answer, fullAnswer, types, annotations,
semantic, ...}``, scene graphs JSON ``imageId -> {width, height, objects}`` (train and val only),
and ``images/<imageId>.jpg``. ``train_all`` ships as a folder of ten JSON parts.

Hub layout (lmms-lab/GQA saved locally): configs ``{split}_{balanced|all}_instructions`` (one
row per question, the same fields) and ``{split}_{balanced|all}_images`` (``id``, ``image``),
each a folder of parquet shards; questions join images on ``imageId == id``. Nested columns
(``semantic``, ``types``, ``annotations``, ``groups``) are JSON strings in some revisions and
structs in others: both are read the same (``_base.mapping`` / ``normalize_program``).

Every question becomes a :class:`VQARecord` with the GQA ``semantic`` program, the
``annotations``, ``types.detailed`` as ``question_type``, and the image's scene graph when a
scene-graph file is present (also next to a hub download), or a :class:`BadRecord`.
Order: the questions file's own order (parts in numeric order), or the parquet shards' order.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from uniedit_cli.errors import UsageError
from uniedit_cli.synth.records import BadRecord, VQARecord
from uniedit_cli.synth.sources._base import (ImageDir, Item, ProgramError, VQASource, as_answer, check_scene_graph,
                                             first_existing, hub_roots, mapping, natural_key, nested,
                                             normalize_program, parquet_under)
from uniedit_cli.synth.sources._jsonstream import JSONStreamError, OffsetIndex, iter_object
from uniedit_cli.synth.sources._parquet import ImageTable, ParquetRows, RowError

# Splits GQA publishes without answers: nothing to turn into edit data.
NO_ANSWER_SPLITS = ("test", "challenge", "submission")
SPLIT_ALIASES = {"validation": "val", "test-dev": "testdev", "test_dev": "testdev"}
QUESTION_FOLDERS = ("", "questions", "questions1.2", "questions1.3")
SCENE_GRAPH_FOLDERS = ("", "sceneGraphs", "scene_graphs")
# Extra question fields kept on the record (``VQARecord.extra``) for downstream steps.
EXTRA_FIELDS = ("fullAnswer", "isBalanced", "semanticStr", "entailed", "equivalent")
HUB_BATCH = 256  # questions per image fetch in the hub layout


def layout_help(split: str, kind: str) -> str:
    return (
        "GQA is read from either layout. (1) The official release (https://cs.stanford.edu/people/dorarad/gqa/"
        f"download.html): FOLDER/{split}_{kind}_questions.json (questions1.2.zip), FOLDER/{split}_sceneGraphs.json "
        "(sceneGraphs.zip; train and val only) and FOLDER/images/<imageId>.jpg (images.zip). (2) lmms-lab/GQA from "
        f"the hub: `hf download lmms-lab/GQA --repo-type dataset --include '{split}_{kind}_*/*' --local-dir FOLDER` "
        f"gives FOLDER/{split}_{kind}_instructions/*.parquet and FOLDER/{split}_{kind}_images/*.parquet. "
        "Pass FOLDER with --vqa-path."
    )


class GQASource(VQASource):
    """GQA questions with programs, annotations and scene graphs.

    Options: ``balanced`` (True: the ``balanced`` questions; False: ``all``), ``limit`` (first N
    items), ``image_dir`` (the images folder when it is not FOLDER/images), ``scene_graphs``
    (a scene-graph JSON when it is not next to the questions), ``layout`` ("auto", "official",
    "hub"), ``image_cache_mb`` (hub layout: image row groups kept in memory).
    """

    name = "gqa"
    default_split = "val"

    def __init__(self, path, split: str | None = None, *, balanced: bool = True, limit: int | None = None,
                 image_dir: str | None = None, scene_graphs: str | None = None, layout: str = "auto",
                 image_cache_mb: int = 512):
        super().__init__(path, split, limit=limit)
        # "testdev_balanced" / "val_all", as the hub configs and the eval suites name them
        for suffix, flag in (("_balanced", True), ("_all", False)):
            if self.split.endswith(suffix):
                self.split, balanced = self.split[: -len(suffix)], flag
        self.split = SPLIT_ALIASES.get(self.split, self.split)
        if layout not in ("auto", "official", "hub"):
            raise UsageError(f"gqa: layout must be auto, official or hub, got {layout!r}.")
        self.balanced = bool(balanced)
        self.kind = "balanced" if self.balanced else "all"
        self.image_dir_option = Path(image_dir).expanduser() if image_dir else None
        self.scene_graphs_option = Path(scene_graphs).expanduser() if scene_graphs else None
        self.layout_option = layout
        self.image_cache_mb = int(image_cache_mb)
        # resolved by check()
        self.layout: str | None = None
        self.question_files: list[Path] = []
        self.instructions: ParquetRows | None = None
        self.image_table: ImageTable | None = None
        self.images: ImageDir | None = None
        self.scene_index: OffsetIndex | None = None

    # --- discovery ---------------------------------------------------------------------------

    def _check(self) -> None:
        split, kind = self.split, self.kind
        help_text = layout_help(split, kind)
        root = self._require_path(help_text)
        if split in NO_ANSWER_SPLITS:
            raise UsageError(f"--vqa gqa: the {split} split has no answers, so it cannot become edit data.",
                             hint="Use --split train, val or testdev.")
        base = root
        if root.is_file():
            if root.suffix.lower() != ".json" or self.layout_option == "hub":
                raise UsageError(f"--vqa gqa: {str(root)!r} is not a GQA questions JSON file.", hint=help_text)
            self.layout, self.question_files, base = "official", [root], root.parent
        else:
            official = self._find_questions(root) if self.layout_option != "hub" else None
            hub = self._find_hub(root) if self.layout_option != "official" and not official else None
            if official:
                self.layout, self.question_files = "official", official
                base = official[0].parent if official[0].parent.name != f"{split}_all_questions" else official[0].parent.parent
            elif hub:
                self.layout = "hub"
            else:
                looked = [f"{split}_{kind}_questions.json"] if self.layout_option != "hub" else []
                if self.layout_option != "official":
                    looked.append(f"{split}_{kind}_instructions/*.parquet")
                present = _present(root)
                raise UsageError(f"--vqa gqa: no {split} ({kind}) questions under {str(root)!r} "
                                 f"(looked for {' and '.join(looked)})"
                                 + (f"; found {', '.join(present)} instead (pick it with --split)." if present else "."),
                                 hint=help_text)
        if self.layout == "official":
            for f in self.question_files:
                self._probe_questions(f, help_text)
            self.images = ImageDir(self._find_images(root, base, required=True))
        else:
            instr_files, image_files, hub_root = hub
            base = hub_root  # scene graphs may sit next to the config folders (a snapshot's root)
            self.instructions = ParquetRows(instr_files)
            self.instructions.check("--vqa gqa", help_text)
            columns = set(self.instructions.columns)
            missing = [c for c in ("imageId", "question", "answer") if c not in columns]
            if not ({"id", "questionId"} & columns):
                missing.insert(0, "id")
            if missing:
                raise UsageError(f"--vqa gqa: {str(instr_files[0].parent)!r} lacks the column(s) {', '.join(missing)} "
                                 "of lmms-lab/GQA's *_instructions configs.", hint=help_text)
            if image_files:
                table = ParquetRows(image_files)
                table.check("--vqa gqa", help_text)
                if not {"id", "image"} <= set(table.columns):
                    raise UsageError(f"--vqa gqa: {str(image_files[0].parent)!r} lacks the 'id' and 'image' columns "
                                     "of lmms-lab/GQA's *_images configs.", hint=help_text)
                self.image_table = ImageTable(image_files, cache_bytes=self.image_cache_mb << 20)
            else:
                # instructions from the hub, images from the official images.zip
                folder = self._find_images(root, hub_root, required=False)
                if folder is None:
                    raise UsageError(f"--vqa gqa: found {split}_{kind}_instructions but no images: neither "
                                     f"{split}_{kind}_images/*.parquet (nor {split}_{_other(kind)}_images) nor an "
                                     f"images/ folder under {str(root)!r}.", hint=help_text)
                self.images = ImageDir(folder)
        self.scene_index = self._find_scene_graphs(root, base, help_text)

    def _find_questions(self, root: Path) -> list[Path] | None:
        name = f"{self.split}_{self.kind}_questions"
        for sub in QUESTION_FOLDERS:
            folder = root / sub if sub else root
            single = folder / f"{name}.json"
            if single.is_file():
                return [single]
            parts = folder / name  # train_all_questions/train_all_questions_0.json ... _9.json
            if parts.is_dir():
                files = sorted((p for p in parts.glob("*.json") if p.is_file()), key=lambda p: natural_key(p.name))
                if files:
                    return files
        return None

    def _find_hub(self, root: Path) -> tuple[list[Path], list[Path], Path] | None:
        roots = hub_roots(root)
        if root.name.endswith(("_instructions", "_images")):  # pointed at a config folder itself
            roots.append(root.parent)
        for r in roots:
            instructions = parquet_under(r / f"{self.split}_{self.kind}_instructions")
            if instructions:
                # the balanced images are a subset of the "all" ones: either table serves
                images = (parquet_under(r / f"{self.split}_{self.kind}_images")
                          or parquet_under(r / f"{self.split}_{_other(self.kind)}_images"))
                return instructions, images, r
        return None

    def _find_images(self, root: Path, base: Path, *, required: bool) -> Path | None:
        if self.image_dir_option is not None:
            if not self.image_dir_option.is_dir():
                raise UsageError(f"--vqa gqa: image_dir {str(self.image_dir_option)!r} is not a folder.")
            return self.image_dir_option
        candidates = [base / "images", root / "images", base.parent / "images", root / "allImages" / "images"]
        found = first_existing(dict.fromkeys(candidates), kind="dir")
        if found is None and required:
            raise UsageError(
                f"--vqa gqa: no images folder for the questions in {str(base)!r} "
                f"(looked for {', '.join(str(c) for c in dict.fromkeys(candidates))}).",
                hint="Download images.zip from https://cs.stanford.edu/people/dorarad/gqa/download.html and unzip "
                     "it next to the questions so that images/<imageId>.jpg exists, or pass image_dir.")
        return found

    def _find_scene_graphs(self, root: Path, base: Path, help_text: str) -> OffsetIndex | None:
        if self.scene_graphs_option is not None:
            if not self.scene_graphs_option.is_file():
                raise UsageError(f"--vqa gqa: scene_graphs {str(self.scene_graphs_option)!r} is not a file.",
                                 hint=help_text)
            path = self.scene_graphs_option
        else:
            name = f"{self.split}_sceneGraphs.json"
            folders = [base, root, base.parent]
            candidates = [(f / sub if sub else f) / name for f in folders for sub in SCENE_GRAPH_FOLDERS]
            path = first_existing(dict.fromkeys(candidates))
            if path is None:
                return None  # testdev has none; questions are still usable without one
        problem = _first_entry_problem(path, lambda v: isinstance(v, dict) and isinstance(v.get("objects"), dict),
                                       "an imageId -> {width, height, objects} scene graph")
        if problem:
            raise UsageError(f"--vqa gqa: {str(path)!r} is not a GQA scene-graph file ({problem}).", hint=help_text)
        return OffsetIndex(path)

    def _probe_questions(self, path: Path, help_text: str) -> None:
        problem = _first_entry_problem(path, lambda v: isinstance(v, dict) and "question" in v and "imageId" in v,
                                       "a questionId -> {imageId, question, answer, ...} entry")
        if problem:
            raise UsageError(f"--vqa gqa: {str(path)!r} is not a GQA questions file ({problem}).", hint=help_text)

    def _describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"layout": self.layout, "balanced": self.balanced}
        if self.layout == "official":
            out["questions"] = [str(f) for f in self.question_files]
        elif self.instructions is not None:
            out["instructions"] = [str(f) for f in self.instructions.files]
        if self.image_table is not None:
            out["images"] = [str(f) for f in self.image_table.files]
        elif self.images is not None:
            out["images"] = str(self.images.folder)
        out["scene_graphs"] = str(self.scene_index.path) if self.scene_index else None
        return out

    # --- iteration ---------------------------------------------------------------------------

    def _cheap_count(self) -> bool:
        return self.layout == "hub"

    def _count(self) -> int:
        if self.layout == "hub":
            return self.instructions.num_rows
        return sum(1 for _ in self._raw_official())

    def _items(self, start: int) -> Iterator[Item]:
        if self.layout == "hub":
            return self._hub_items(start)
        return self._official_items(start)

    def _raw_official(self) -> Iterator[tuple[str, Any] | BadRecord]:
        """One entry per question (or one BadRecord where a file turns out malformed); parsing
        only, so counting and skipping to a resume index stay cheap."""
        for f in self.question_files:
            try:
                for qid, question, _, _ in iter_object(f):
                    yield qid, question
            except JSONStreamError as exc:
                # nothing after a syntax error lines up; the next part file is independent
                yield BadRecord(f"{f.name}@{exc.offset}", "malformed_json", str(exc))
            except OSError as exc:
                yield BadRecord(f.name, "malformed_json", f"cannot read: {exc.strerror or exc}")

    def _official_items(self, start: int) -> Iterator[Item]:
        for entry in islice(self._raw_official(), start, None):
            if isinstance(entry, BadRecord):
                yield entry
                continue
            qid, question = entry
            yield self._record(qid, question)

    def _hub_items(self, start: int) -> Iterator[Item]:
        rows = self.instructions.iter_rows(start)
        while True:
            batch = list(islice(rows, HUB_BATCH))
            if not batch:
                return
            fetched = {}
            if self.image_table is not None:
                fetched = self.image_table.fetch(str(r["imageId"]) for r in batch
                                                 if isinstance(r, dict) and r.get("imageId") is not None)
            for offset, row in enumerate(batch):
                if isinstance(row, RowError):
                    yield BadRecord(row.where, "unreadable_parquet", row.detail)
                    continue
                qid = row.get("id") if row.get("id") is not None else row.get("questionId")
                if qid is None:
                    yield BadRecord(f"{self.instructions.files[0].parent.name}#{start + offset}", "missing_field", "id")
                    continue
                image = fetched.get(str(row.get("imageId")))
                yield self._record(str(qid), row, image=image)
            start += len(batch)

    def _record(self, qid: str, q: Any, image: tuple | None = None) -> Item:
        qid = str(qid)
        if not isinstance(q, dict):
            return BadRecord(qid, "malformed_json", f"question entry is a {type(q).__name__}, not an object")
        image_id = q.get("imageId")
        question = q.get("question")
        answer = as_answer(q.get("answer"))
        missing = [name for name, value in (("imageId", image_id), ("question", question), ("answer", answer))
                   if value is None or (isinstance(value, str) and not value.strip())]
        if missing:
            return BadRecord(qid, "missing_field", ", ".join(missing))
        if not isinstance(question, str):
            return BadRecord(qid, "bad_field", f"question is a {type(question).__name__}")
        image_id = str(image_id)
        image_path = image_bytes = None
        if self.image_table is not None:
            data, path, error = image or (None, None, "not in the images table")
            if error:
                return BadRecord(qid, "missing_image", f"image {image_id}: {error}")
            image_bytes, image_path = data, (str(path) if path else None)
        else:
            name = f"{image_id}.jpg"
            if not self.images.has(name):
                return BadRecord(qid, "missing_image", str(self.images.path(name)))
            image_path = str(self.images.path(name))
        try:
            program = normalize_program(q.get("semantic"))
        except ProgramError as exc:
            return BadRecord(qid, "bad_program", str(exc))
        scene_graph = None
        if self.scene_index is not None:
            try:
                scene_graph = check_scene_graph(self.scene_index.get(image_id))
            except ValueError as exc:
                return BadRecord(qid, "bad_scene_graph", f"image {image_id}: {exc}")
        types = mapping(q.get("types")) or {}
        extra = {k: nested(q[k]) for k in EXTRA_FIELDS if q.get(k) is not None}
        if types:
            extra["types"] = types
        groups = mapping(q.get("groups"))
        if groups:
            extra["groups"] = groups
        return VQARecord(
            source=self.name, source_id=qid, image_id=image_id, question=question.strip(), answer=answer,
            image_path=image_path, image_bytes=image_bytes, program=program, scene_graph=scene_graph,
            annotations=mapping(q.get("annotations")), question_type=types.get("detailed"), extra=extra,
        )


def _present(root: Path) -> list[str]:
    """GQA question files and hub configs that are there, for a "did you mean" in errors."""
    found: set[str] = set()
    for r in [*(root / sub if sub else root for sub in QUESTION_FOLDERS), *hub_roots(root)]:
        if r.is_dir():
            found.update(p.name for p in r.iterdir() if p.name.endswith(("_questions.json", "_instructions")))
    return sorted(found)[:8]


def _other(kind: str) -> str:
    return "all" if kind == "balanced" else "balanced"


def _first_entry_problem(path: Path, looks_right, expected: str) -> str | None:
    """Parse only the first entry of a big JSON object file: is it what we expect?"""
    try:
        for _key, value, _, _ in iter_object(path):
            return None if looks_right(value) else f"its first entry is not {expected}"
        return None  # an empty object: valid, just nothing in it
    except JSONStreamError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
