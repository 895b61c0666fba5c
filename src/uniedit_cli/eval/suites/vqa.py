"""GQA (testdev-balanced exact match) and VQAv2 (official accuracy): image + question -> a
short answer.

Prompting follows lmms-eval, the harness these numbers are usually reported with: the
question, then "Answer the question using a single word or phrase." (lmms-eval
``tasks/gqa/utils.py`` and ``tasks/vqav2``). Scoring follows each benchmark's definition
(REFERENCE.md, "Evaluation protocols"): GQA is exact match after lowercasing and stripping
punctuation; VQAv2 is the official min(1, matches/3) averaged over the ten 9-answer subsets,
after the official answer normalisation. Both live in ``eval.metrics``. An unanswered
question counts as wrong, as in the official evaluators (every question must be answered for a
number to be comparable).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

from uniedit_cli.eval.suites import loading
from uniedit_cli.eval.suites.base import Sample, Suite, SuiteResult

SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."


def _limit(options: dict) -> int | None:
    value = options.get("limit")
    return int(value) if value else None


class _ShortAnswerSuite(Suite):
    task = "ask"
    output_kind = "text"
    option_help: ClassVar[dict[str, str]] = {
        "split": "which split to read",
        "prompt": "'lmms-eval' (default: append 'Answer the question using a single word or phrase.') or 'raw'",
    }

    def _prompt(self, question: str) -> str:
        style = str(self.options.get("prompt", "lmms-eval"))
        if style not in ("lmms-eval", "raw"):
            from uniedit_cli.errors import UsageError

            raise UsageError(f"--suite-option prompt={style!r}: expected 'lmms-eval' or 'raw'.")
        return question + (SHORT_ANSWER_PROMPT if style == "lmms-eval" else "")

    @staticmethod
    def _accuracies(samples: list[Sample], outputs: dict[str, Any], score_one) -> tuple[dict[str, dict], float]:
        """Per-sample accuracy from ``score_one(answer, sample)`` (a missing answer scores 0 and
        says so) and the mean in percent, as published."""
        per_sample: dict[str, dict] = {}
        for sample in samples:
            answer = outputs.get(sample.id)
            if answer is None:
                per_sample[sample.id] = {"accuracy": 0.0, "error": "no answer"}
            else:
                per_sample[sample.id] = {"accuracy": float(score_one(str(answer), sample))}
        n = len(samples)
        return per_sample, (100.0 * sum(v["accuracy"] for v in per_sample.values()) / n if n else 0.0)

    @staticmethod
    def _grouped_means(per_sample: dict[str, dict], samples: list[Sample], key: str, value: str) -> dict[str, float]:
        groups: dict[str, list[float]] = defaultdict(list)
        for sample in samples:
            label = sample.meta.get(key)
            if label is not None and value in per_sample.get(sample.id, {}):
                groups[str(label)].append(per_sample[sample.id][value])
        return {label: 100.0 * sum(v) / len(v) for label, v in sorted(groups.items())}


# --- GQA ------------------------------------------------------------------------------------

class GQASuite(_ShortAnswerSuite):
    name = "gqa"
    convention = "gqa-testdev-balanced-exact-match"
    default_metrics = ("accuracy",)
    all_metrics = ("accuracy",)
    data_help = (
        "Without --data the lmms-lab/GQA configs testdev_balanced_instructions and testdev_balanced_images are read "
        "from the hub cache (downloaded when online). Offline: on a machine with network run `hf download "
        "lmms-lab/GQA --repo-type dataset --include 'testdev_balanced_*/*' --local-dir DIR`, copy DIR here and pass "
        "--data DIR; or place the official release's testdev_balanced_questions.json next to its images/ folder "
        "(images/<imageId>.jpg) and pass that folder."
    )

    def hub_data(self) -> tuple[str, tuple[str, ...]]:
        split = str(self.options.get("split", "testdev_balanced"))
        return "lmms-lab/GQA", (f"{split}_instructions/*", f"{split}_images/*")

    def samples(self) -> list[Sample]:
        root = loading.require_data(self)
        split = str(self.options.get("split", "testdev_balanced"))
        limit = _limit(self.options)
        instructions = loading.find(root, [f"**/{split}_instructions/*.parquet"])
        if instructions:
            return self._from_hub(root, split, instructions, limit)
        questions = loading.find(root, [f"**/{split}_questions.json", f"{split}_questions.json"])
        if questions:
            return self._from_official(questions[0], limit)
        raise loading.missing_data(self, f"no {split}_instructions/*.parquet (lmms-lab/GQA) or {split}_questions.json "
                                         f"(official release) under {str(root)!r}.")

    def _from_hub(self, root: Path, split: str, instructions: list[Path], limit: int | None) -> list[Sample]:
        image_shards = loading.find(root, [f"**/{split}_images/*.parquet"])
        if not image_shards:
            raise loading.missing_data(self, f"found {split}_instructions but no {split}_images/*.parquet under {str(root)!r}.")
        rows = []
        for row in loading.iter_parquet(instructions):
            rows.append(row)
            if limit and len(rows) >= limit:
                break
        wanted = {str(row.get("imageId")) for row in rows}
        cache = loading.cache_dir_of(self) / "images"
        images: dict[str, str] = {}
        for row in loading.iter_parquet(image_shards, columns=["id", "image"], batch_rows=32):
            key = str(row.get("id"))
            if key in wanted and key not in images:
                images[key] = loading.materialize(row.get("image"), cache, key)
        return [self._sample(row, images.get(str(row.get("imageId")))) for row in rows]

    def _from_official(self, path: Path, limit: int | None) -> list[Sample]:
        data = loading.read_json(path)
        if not isinstance(data, dict):
            raise loading.missing_data(self, f"{str(path)!r} is not the official questions JSON (questionId -> question).")
        folder = next((p for p in (path.parent / "images", path.parent.parent / "images", path.parent / "allImages" / "images")
                       if p.is_dir()), path.parent / "images")
        out = []
        for qid, row in data.items():
            if not isinstance(row, dict):
                continue
            image_id = str(row.get("imageId", ""))
            image = next((folder / f"{image_id}{ext}" for ext in (".jpg", ".png", ".jpeg") if (folder / f"{image_id}{ext}").exists()),
                         folder / f"{image_id}.jpg")
            out.append(self._sample({"id": qid, **row}, str(image)))
            if limit and len(out) >= limit:
                break
        return out

    def _sample(self, row: dict, image: str | None) -> Sample:
        types = loading.nested(row.get("types")) or {}
        types = types if isinstance(types, dict) else {}
        return Sample(
            id=str(row.get("id", row.get("questionId"))), task="ask",
            inputs={"image": image, "question": self._prompt(str(row.get("question", "")))},
            reference={"answer": str(row.get("answer", "")), "full_answer": row.get("fullAnswer")},
            meta={"image_id": str(row.get("imageId")), "question": row.get("question"),
                  "structural": types.get("structural"), "semantic": types.get("semantic")},
        )

    def score(self, samples: list[Sample], outputs: dict[str, Any], metrics: list[str], *,
              device: str = "auto", judge=None) -> SuiteResult:
        from uniedit_cli.eval.metrics import text as m

        per_sample, accuracy = self._accuracies(
            samples, outputs, lambda answer, sample: m.gqa_exact_match(answer, sample.reference["answer"]))
        n = len(samples)
        breakdown = {
            "structural": self._grouped_means(per_sample, samples, "structural", "accuracy"),
            "semantic": self._grouped_means(per_sample, samples, "semantic", "accuracy"),
        }
        return SuiteResult(metrics={"accuracy": accuracy}, per_sample=per_sample, n=n,
                           breakdown={k: v for k, v in breakdown.items() if v})


# --- VQAv2 ----------------------------------------------------------------------------------

class VQAv2Suite(_ShortAnswerSuite):
    name = "vqav2"
    convention = "vqav2-official"
    default_metrics = ("accuracy",)
    all_metrics = ("accuracy",)
    data_help = (
        "Without --data lmms-lab/VQAv2's validation split is read from the hub cache (downloaded when online). "
        "Offline: on a machine with network run `hf download lmms-lab/VQAv2 --repo-type dataset "
        "--include 'data/validation-*' --local-dir DIR`, copy DIR here and pass --data DIR; or place the official "
        "v2_OpenEnded_mscoco_val2014_questions.json and v2_mscoco_val2014_annotations.json next to the val2014/ "
        "image folder and pass that folder. test-dev has no public answers: score it on EvalAI."
    )

    def hub_data(self) -> tuple[str, tuple[str, ...]]:
        return "lmms-lab/VQAv2", (f"data/{self.options.get('split', 'validation')}-*",)

    def samples(self) -> list[Sample]:
        root = loading.require_data(self)
        split = str(self.options.get("split", "validation"))
        limit = _limit(self.options)
        shards = loading.find(root, [f"**/{split}-*.parquet", f"**/{split}/*.parquet"])
        if shards:
            return self._from_hub(shards, split, limit)
        questions = loading.find(root, ["**/v2_OpenEnded_mscoco_*_questions.json"])
        annotations = loading.find(root, ["**/v2_mscoco_*_annotations.json"])
        if questions and annotations:
            return self._from_official(questions[0], annotations[0], limit)
        if questions:
            raise loading.missing_data(self, f"found {questions[0].name} but no v2_mscoco_*_annotations.json: answers "
                                             "are needed to score (test-dev answers are not public).")
        raise loading.missing_data(self, f"no {split}-*.parquet (lmms-lab/VQAv2) or official questions + annotations "
                                         f"JSON under {str(root)!r}.")

    def _from_hub(self, shards: list[Path], split: str, limit: int | None) -> list[Sample]:
        cache = loading.cache_dir_of(self) / "images"
        out = []
        for row in loading.iter_parquet(shards, batch_rows=64):
            answers = row.get("answers")
            if not answers:
                raise loading.missing_data(self, f"split {split!r} has no answers (test-dev / test are scored on EvalAI); "
                                                 "use the validation split.")
            image = loading.materialize(row.get("image"), cache, f"coco-{row.get('image_id')}")
            out.append(self._sample(row, image, answers))
            if limit and len(out) >= limit:
                break
        return out

    def _from_official(self, questions_path: Path, annotations_path: Path, limit: int | None) -> list[Sample]:
        questions = loading.read_json(questions_path)
        annotations = loading.read_json(annotations_path)
        try:
            by_id = {a["question_id"]: a for a in annotations["annotations"]}
            rows = questions["questions"]
            subtype = str(questions.get("data_subtype", "val2014"))
        except (KeyError, TypeError):
            raise loading.missing_data(self, f"{questions_path.name} / {annotations_path.name} are not the official "
                                             "VQAv2 questions and annotations files.") from None
        folder = next((p for p in (questions_path.parent / subtype, questions_path.parent.parent / subtype,
                                   questions_path.parent / "images" / subtype) if p.is_dir()),
                      questions_path.parent / subtype)
        out = []
        for q in rows:
            ann = by_id.get(q["question_id"])
            if ann is None:
                continue
            image = folder / f"COCO_{subtype}_{int(q['image_id']):012d}.jpg"
            out.append(self._sample({**ann, **q}, str(image), ann["answers"]))
            if limit and len(out) >= limit:
                break
        return out

    def _sample(self, row: dict, image: str | None, answers: Any) -> Sample:
        answers = loading.nested(answers)
        human = [str(a["answer"]) if isinstance(a, dict) else str(a) for a in answers]
        return Sample(
            id=str(row["question_id"]), task="ask",
            inputs={"image": image, "question": self._prompt(str(row.get("question", "")))},
            reference={"answers": human, "multiple_choice_answer": row.get("multiple_choice_answer")},
            meta={"image_id": row.get("image_id"), "question": row.get("question"),
                  "answer_type": row.get("answer_type"), "question_type": row.get("question_type")},
        )

    def score(self, samples: list[Sample], outputs: dict[str, Any], metrics: list[str], *,
              device: str = "auto", judge=None) -> SuiteResult:
        from uniedit_cli.eval.metrics import text as m

        per_sample, accuracy = self._accuracies(
            samples, outputs, lambda answer, sample: m.vqa_accuracy(answer, sample.reference["answers"]))
        n = len(samples)
        # the official evaluator reports accuracy per answer type (yes/no, number, other)
        by_type = self._grouped_means(per_sample, samples, "answer_type", "accuracy")
        return SuiteResult(metrics={"accuracy": accuracy}, per_sample=per_sample, n=n,
                           breakdown={"answer_type": by_type} if by_type else {})
