"""VQAv2 as a VQA source: the lmms-lab/VQAv2 parquet layout and the official JSON release.

Hub layout (REFERENCE.md, "VQA sources"): shards ``data/{split}-0000k-of-0000n.parquet`` with
``question_id, question, image (bytes), image_id, answers (10 x {answer, answer_confidence,
answer_id}), multiple_choice_answer, answer_type, question_type``. Split names are the hub's
(``validation``, ``testdev``, ``test``); ``val`` is accepted for ``validation``.

Official release (https://visualqa.org/download.html): ``v2_OpenEnded_mscoco_{subset}_questions.json``
(``{"questions": [{image_id, question, question_id}]}``), ``v2_mscoco_{subset}_annotations.json``
(``{"annotations": [{question_id, answers, multiple_choice_answer, answer_type, question_type,
...}]}``) and the COCO images ``{subset}/COCO_{subset}_{image_id:012d}.jpg``, subset
``train2014`` or ``val2014``. The VQA v1 file names (without ``v2_``) are accepted too.

VQAv2 has no programs (grounding needs a detector or a VLM). ``answer`` is the majority of the
ten human answers (:func:`majority_answer`), ``answers`` keeps all ten in ``answer_id`` order,
``question_type`` is the ``answer_type`` (yes/no, number, other); VQAv2's own ``question_type``
(the question's first words, e.g. "what color is the") goes to ``extra["question_prefix"]``.
"""

from __future__ import annotations

import re
import sys
from collections import Counter, OrderedDict
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

from uniedit_cli.errors import UsageError
from uniedit_cli.synth.records import BadRecord, VQARecord
from uniedit_cli.synth.sources._base import (ImageDir, Item, VQASource, as_answer, first_existing, hub_roots, nested,
                                             natural_key)
from uniedit_cli.synth.sources._jsonstream import JSONStreamError, iter_array, probe
from uniedit_cli.synth.sources._parquet import ParquetRows, RowError, image_value

HUB_SPLITS = {"val": "validation", "validation": "validation", "train": "train", "testdev": "testdev",
              "test-dev": "testdev", "test": "test"}
OFFICIAL_SUBSETS = {"train": "train2014", "val": "val2014", "validation": "val2014", "train2014": "train2014",
                    "val2014": "val2014", "test": "test2015", "test2015": "test2015", "testdev": "test-dev2015",
                    "test-dev": "test-dev2015", "test-dev2015": "test-dev2015"}
HUB_COLUMNS = ("question_id", "question", "image", "image_id", "answers", "multiple_choice_answer", "answer_type",
               "question_type")


def layout_help(split: str) -> str:
    hub = HUB_SPLITS.get(split, split)
    subset = OFFICIAL_SUBSETS.get(split, split)
    return (
        "VQAv2 is read from either layout. (1) lmms-lab/VQAv2 from the hub: `hf download lmms-lab/VQAv2 --repo-type "
        f"dataset --include 'data/{hub}-*' --local-dir FOLDER` gives FOLDER/data/{hub}-*.parquet. (2) The official "
        f"release (https://visualqa.org/download.html): FOLDER/v2_OpenEnded_mscoco_{subset}_questions.json, "
        f"FOLDER/v2_mscoco_{subset}_annotations.json and the COCO images FOLDER/{subset}/COCO_{subset}_<id:012d>.jpg. "
        "Pass FOLDER with --vqa-path."
    )


def _norm(answer: str) -> str:
    """Light normalisation for counting votes: case and spacing only (annotators' "Yes" and
    "yes " are one vote; the official accuracy's heavier normalisation belongs to evaluation)."""
    return " ".join(answer.lower().split())


def majority_answer(answers: list[dict | str], preferred: str | None = None) -> str | None:
    """The most frequent of the human answers, normalised for case and spacing.

    Ties are broken deterministically, in this order: the tied answer equal to ``preferred``
    (VQAv2's ``multiple_choice_answer``, itself the annotators' most frequent answer, so the
    two agree whenever there is a clear majority); then the most ``answer_confidence == "yes"``
    votes; then the earliest answer given (lowest ``answer_id``, else list position).
    """
    votes: Counter = Counter()
    confident: Counter = Counter()
    first_seen: dict[str, tuple[int, int]] = {}
    for position, item in enumerate(answers):
        if isinstance(item, dict):
            text, conf, aid = item.get("answer"), item.get("answer_confidence"), item.get("answer_id")
        else:
            text, conf, aid = item, None, None
        text = as_answer(text)
        if text is None:
            continue
        key = _norm(text)
        votes[key] += 1
        confident[key] += conf == "yes"
        order = (int(aid) if isinstance(aid, int) or (isinstance(aid, str) and aid.isdigit()) else 10**9, position)
        first_seen[key] = min(first_seen.get(key, order), order)
    if not votes:
        return None
    best = max(votes.values())
    tied = [k for k in votes if votes[k] == best]
    pref = _norm(preferred) if isinstance(preferred, str) and preferred.strip() else None
    if pref in tied:
        return pref
    return min(tied, key=lambda k: (-confident[k], first_seen[k]))


class VQAv2Source(VQASource):
    """VQAv2 questions with ten human answers each.

    Options: ``limit`` (first N items), ``image_dir`` (official layout: the COCO folder when it
    is not FOLDER/<subset>), ``layout`` ("auto", "hub", "official").
    """

    name = "vqav2"
    default_split = "val"

    def __init__(self, path, split: str | None = None, *, limit: int | None = None, image_dir: str | None = None,
                 layout: str = "auto"):
        super().__init__(path, split, limit=limit)
        if layout not in ("auto", "hub", "official"):
            raise UsageError(f"vqav2: layout must be auto, hub or official, got {layout!r}.")
        self.layout_option = layout
        self.image_dir_option = Path(image_dir).expanduser() if image_dir else None
        self.layout: str | None = None
        self.rows: ParquetRows | None = None
        self.questions_file: Path | None = None
        self.annotations_file: Path | None = None
        self.subset: str | None = None
        self.images: ImageDir | None = None
        self._annotations: tuple[dict[str, tuple], str | None] | None = None

    # --- discovery ---------------------------------------------------------------------------

    def _check(self) -> None:
        help_text = layout_help(self.split)
        root = self._require_path(help_text)
        hub_files = self._find_hub(root) if self.layout_option != "official" else []
        official = self._find_official(root) if self.layout_option != "hub" and not hub_files else None
        if hub_files:
            self._check_hub(hub_files, help_text)
        elif official:
            self._check_official(root, *official, help_text=help_text)
        else:
            raise UsageError(f"--vqa vqav2: no {self.split} data under {str(root)!r} (looked for "
                             f"{HUB_SPLITS.get(self.split, self.split)}-*.parquet and "
                             f"v2_OpenEnded_mscoco_{OFFICIAL_SUBSETS.get(self.split, self.split)}_questions.json).",
                             hint=help_text)

    def _find_hub(self, root: Path) -> list[Path]:
        split = HUB_SPLITS.get(self.split, self.split)
        if root.is_file():
            return [root] if root.suffix == ".parquet" else []
        pattern = re.compile(rf"^{re.escape(split)}(?:[-_.]|$)")
        for r in hub_roots(root):
            # top level and one folder down (data/, or the parquet-converter's <config>/<split>/);
            # never a recursive walk: the folder may also hold 80k COCO images
            files = [p for p in list(r.glob("*.parquet")) + list(r.glob("*/*.parquet"))
                     if p.is_file() and (pattern.match(p.name) or p.parent.name == split)]
            if files:
                return sorted(files, key=lambda p: natural_key(p.relative_to(r).as_posix()))
        return []

    def _find_official(self, root: Path) -> tuple[Path, Path | None, str] | None:
        subset = OFFICIAL_SUBSETS.get(self.split, self.split)
        if root.is_file():
            if root.suffix != ".json":
                return None
            folders, questions = [root.parent], root
        else:
            folders = [root / d for d in ("", "Questions", "questions", "Annotations", "annotations")]
            questions = first_existing(f / n for f in folders for n in (
                f"v2_OpenEnded_mscoco_{subset}_questions.json", f"OpenEnded_mscoco_{subset}_questions.json"))
            if questions is None:
                return None
            folders = [questions.parent, *folders]
        annotations = first_existing(f / n for f in dict.fromkeys(folders) for n in (
            f"v2_mscoco_{subset}_annotations.json", f"mscoco_{subset}_annotations.json"))
        return questions, annotations, subset

    def _check_hub(self, files: list[Path], help_text: str) -> None:
        self.layout = "hub"
        self.rows = ParquetRows(files)
        self.rows.check("--vqa vqav2", help_text)
        missing = [c for c in ("question_id", "question", "image", "answers") if c not in self.rows.columns]
        if missing:
            raise UsageError(f"--vqa vqav2: {str(files[0])!r} lacks the column(s) {', '.join(missing)} of lmms-lab/VQAv2.",
                             hint=help_text)
        # testdev/test are published without answers: say so now rather than reject every row
        for row in islice(self.rows.iter_rows(0, columns=["answers", "multiple_choice_answer"]), 1):
            if isinstance(row, dict) and not nested(row.get("answers")) and not row.get("multiple_choice_answer"):
                raise UsageError(f"--vqa vqav2: the {self.split} split has no answers (VQAv2 publishes answers for "
                                 "train and validation only), so it cannot become edit data.",
                                 hint="Use --split val (lmms-lab/VQAv2's validation).")

    def _check_official(self, root: Path, questions: Path, annotations: Path | None, subset: str, *,
                        help_text: str) -> None:
        self.layout, self.subset = "official", subset
        if annotations is None:
            if subset.startswith("test"):
                raise UsageError(f"--vqa vqav2: the {subset} questions have no published answers, so they cannot "
                                 "become edit data.", hint="Use --split train or val.")
            raise UsageError(f"--vqa vqav2: found {str(questions)!r} but not v2_mscoco_{subset}_annotations.json next "
                             "to it (the answers).", hint=help_text)
        for path, key in ((questions, "questions"), (annotations, "annotations")):
            problem = probe(path, key)
            if problem:
                raise UsageError(f"--vqa vqav2: {str(path)!r} is not a VQAv2 {key} file ({problem}).", hint=help_text)
        if self.image_dir_option is not None:
            if not self.image_dir_option.is_dir():
                raise UsageError(f"--vqa vqav2: image_dir {str(self.image_dir_option)!r} is not a folder.")
            folder = self.image_dir_option
        else:
            base = root if root.is_dir() else root.parent
            candidates = list(dict.fromkeys([base / subset, questions.parent / subset, base / "images" / subset,
                                             base / "coco" / subset, base.parent / subset]))
            folder = first_existing(candidates, kind="dir")
            if folder is None:
                raise UsageError(f"--vqa vqav2: no COCO image folder {subset}/ (looked in "
                                 f"{', '.join(str(c) for c in candidates)}).",
                                 hint=f"Download {subset}.zip from https://cocodataset.org/#download and unzip it "
                                      f"into {str(base)!r}, or pass image_dir.")
        self.questions_file, self.annotations_file = questions, annotations
        self.images = ImageDir(folder)

    def _describe(self) -> dict[str, Any]:
        if self.layout == "hub":
            return {"layout": "hub", "files": [str(f) for f in self.rows.files]}
        return {"layout": "official", "questions": str(self.questions_file), "annotations": str(self.annotations_file),
                "images": str(self.images.folder)}

    # --- iteration ---------------------------------------------------------------------------

    def _cheap_count(self) -> bool:
        return self.layout == "hub"

    def _count(self) -> int:
        if self.layout == "hub":
            return self.rows.num_rows
        return sum(1 for _ in self._raw_questions())

    def _items(self, start: int) -> Iterator[Item]:
        if self.layout == "hub":
            return self._hub_items(start)
        return self._official_items(start)

    def _hub_items(self, start: int) -> Iterator[Item]:
        base = self.rows.files[0].parent
        # Every row embeds its image, though VQAv2 asks ~5 questions per COCO image and keeps them
        # together: records of one image share one bytes object, so a consumer that holds many
        # records (a plan) holds each image once, not five times.
        recent: OrderedDict[str, bytes] = OrderedDict()
        for index, row in enumerate(self.rows.iter_rows(start, columns=list(HUB_COLUMNS)), start=start):
            if isinstance(row, RowError):
                yield BadRecord(row.where, "unreadable_parquet", row.detail)
                continue
            qid = row.get("question_id")
            if qid is None:
                yield BadRecord(f"row{index}", "missing_field", "question_id")
                continue
            data, path = image_value(row.get("image"), base)
            if data is None and path is None:
                yield BadRecord(str(qid), "missing_image", "empty image cell")
                continue
            if data is not None and row.get("image_id") is not None:
                key = str(row["image_id"])
                if recent.get(key) == data:  # equal bytes, checked: an id alone is not trusted
                    data = recent[key]
                    recent.move_to_end(key)
                else:
                    recent[key] = data
                    if len(recent) > 64:
                        recent.popitem(last=False)
            yield self._record(qid, row, image_bytes=data, image_path=str(path) if path else None)

    def _raw_questions(self) -> Iterator[dict | BadRecord]:
        try:
            for question, _, _ in iter_array(self.questions_file, "questions"):
                yield question
        except (JSONStreamError, OSError) as exc:
            yield BadRecord(f"{self.questions_file.name}@{getattr(exc, 'offset', 0)}", "malformed_json", str(exc))

    def _load_annotations(self) -> tuple[dict[str, tuple], str | None]:
        """question_id -> the fields we keep, from one streaming pass over the annotations file
        (hundreds of MB for train), loaded once per source. Kept compact: answers as tuples of
        interned strings, since VQA answers repeat endlessly ("yes", "2", "white")."""
        if self._annotations is not None:
            return self._annotations
        table: dict[str, tuple] = {}
        error = None
        try:
            for ann, _, _ in iter_array(self.annotations_file, "annotations"):
                if not isinstance(ann, dict) or ann.get("question_id") is None:
                    continue
                answers = ann.get("answers")
                if isinstance(answers, list):
                    answers = tuple((_intern(a.get("answer")), _intern(a.get("answer_confidence")), a.get("answer_id"))
                                    if isinstance(a, dict) else (_intern(a), None, None) for a in answers)
                table.setdefault(str(ann["question_id"]), (
                    answers, _intern(ann.get("multiple_choice_answer")), _intern(ann.get("answer_type")),
                    _intern(ann.get("question_type"))))
        except (JSONStreamError, OSError) as exc:
            error = f"{self.annotations_file.name}: {exc}"  # questions past the damage get missing_field
        self._annotations = (table, error)
        return self._annotations

    def __getstate__(self):  # a worker reloads the annotations rather than receiving them pickled
        state = self.__dict__.copy()
        state["_annotations"] = None
        return state

    def _official_items(self, start: int) -> Iterator[Item]:
        annotations, error = self._load_annotations()
        for entry in islice(self._raw_questions(), start, None):
            if isinstance(entry, BadRecord):
                yield entry
                continue
            if not isinstance(entry, dict):
                yield BadRecord(f"{self.questions_file.name}", "malformed_json", "a question entry is not an object")
                continue
            qid = entry.get("question_id")
            if qid is None:
                yield BadRecord(f"{self.questions_file.name}", "missing_field", "question_id")
                continue
            ann = annotations.get(str(qid))
            if ann is None:
                yield BadRecord(str(qid), "missing_field", "no annotation (answers) for this question"
                                + (f"; {error}" if error else ""))
                continue
            image_id = entry.get("image_id")
            if image_id is None:
                yield BadRecord(str(qid), "missing_field", "image_id")
                continue
            try:
                name = f"COCO_{self.subset}_{int(image_id):012d}.jpg"
            except (TypeError, ValueError):
                yield BadRecord(str(qid), "bad_field", f"image_id {image_id!r} is not a number")
                continue
            if not self.images.has(name):
                yield BadRecord(str(qid), "missing_image", str(self.images.path(name)))
                continue
            answers, mc, answer_type, prefix = ann
            if isinstance(answers, tuple):
                answers = [{"answer": a, "answer_confidence": c, "answer_id": i} for a, c, i in answers]
            row = {**entry, "answers": answers, "multiple_choice_answer": mc, "answer_type": answer_type,
                   "question_type": prefix}
            yield self._record(qid, row, image_path=str(self.images.path(name)))

    def _record(self, qid: Any, row: dict, *, image_bytes: bytes | None = None, image_path: str | None = None) -> Item:
        qid = str(qid)
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            return BadRecord(qid, "missing_field", "question")
        answers = nested(row.get("answers"))
        if answers is not None and not isinstance(answers, list):
            return BadRecord(qid, "bad_field", f"answers is a {type(answers).__name__}, not a list")
        answers = answers or []
        mc = as_answer(row.get("multiple_choice_answer"))
        answer = majority_answer(answers, preferred=mc) or (_norm(mc) if mc else None)
        if answer is None:
            return BadRecord(qid, "missing_field", "answers")
        ordered = sorted(enumerate(answers), key=lambda p: (_answer_id(p[1], p[0]), p[0]))
        texts = [t for t in (as_answer(a.get("answer") if isinstance(a, dict) else a) for _, a in ordered) if t]
        extra = {}
        if row.get("question_type"):
            extra["question_prefix"] = row["question_type"]
        if mc:
            extra["multiple_choice_answer"] = mc
        confidences = [a.get("answer_confidence") for _, a in ordered if isinstance(a, dict)]
        if any(confidences):
            extra["answer_confidence"] = confidences
        image_id = row.get("image_id")
        return VQARecord(
            source=self.name, source_id=qid, image_id=str(image_id) if image_id is not None else qid,
            question=question.strip(), answer=answer, image_path=image_path, image_bytes=image_bytes,
            answers=texts or None, question_type=row.get("answer_type") or None, extra=extra,
        )


def _intern(value: Any) -> Any:
    return sys.intern(value) if isinstance(value, str) else value


def _answer_id(item: Any, position: int) -> int:
    aid = item.get("answer_id") if isinstance(item, dict) else None
    try:
        return int(aid)
    except (TypeError, ValueError):
        return position
