"""MME: yes/no questions, two per image, over 14 subtasks.

Scoring (REFERENCE.md, "Evaluation protocols", and MME's own eval tool): per category, acc =
share of questions answered right, acc+ = share of images with both questions right, and the
category score is acc*100 + acc+*100 (max 200); perception sums its ten categories (max 2000),
cognition its four (max 800). Answers are read as yes/no the way MME's tool and lmms-eval do
(``eval.metrics``); anything else is wrong. The question is asked as released (it already ends
with "Please answer yes or no.").

Sample ids: MME's question_id names the image (e.g. ``artwork/10002.jpg``) and is shared by the
image's two questions, so a sample id is ``<question_id>:<k>`` with k = 0, 1 in release order.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

from uniedit_cli.eval.suites import loading
from uniedit_cli.eval.suites.base import Sample, Suite, SuiteResult

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_RELEASED_SUFFIX = " Please answer yes or no."
_LMMS_EVAL_SUFFIX = "\nAnswer the question using a single word or phrase."


class MMESuite(Suite):
    name = "mme"
    task = "ask"
    output_kind = "text"
    convention = "mme-official (acc + acc+ per category; perception /2000, cognition /800)"
    default_metrics = ("perception", "cognition", "total")
    all_metrics = ("perception", "cognition", "total")
    option_help: ClassVar[dict[str, str]] = {
        "prompt": "'released' (default: the question as released) or 'lmms-eval' (its short-answer suffix instead)",
    }
    data_help = (
        "Without --data lmms-lab/MME is read from the hub cache (downloaded when online). Offline: on a machine with "
        "network run `hf download lmms-lab/MME --repo-type dataset --local-dir DIR` (data/test-*.parquet with "
        "question_id, image, question, answer, category), copy DIR here and pass --data DIR; or pass the official "
        "MME_Benchmark_release_version folder (<category>/ with images and question .txt files)."
    )

    def hub_data(self) -> tuple[str, tuple[str, ...]]:
        return "lmms-lab/MME", ("data/*",)

    def samples(self) -> list[Sample]:
        root = loading.require_data(self)
        limit = int(self.options["limit"]) if self.options.get("limit") else None
        style = str(self.options.get("prompt", "released"))
        if style not in ("released", "lmms-eval"):
            from uniedit_cli.errors import UsageError

            raise UsageError(f"--suite-option prompt={style!r}: expected 'released' or 'lmms-eval'.")
        shards = loading.find(root, ["**/test-*.parquet", "**/*.parquet"])
        rows = self._from_hub(shards, limit) if shards else self._from_official(root, limit)
        if not rows:
            raise loading.missing_data(self, f"no MME parquet shards or category folders under {str(root)!r}.")
        seen: dict[str, int] = defaultdict(int)
        out = []
        for question_id, image, question, answer, category in rows:
            k = seen[question_id]
            seen[question_id] += 1
            if style == "lmms-eval":
                question = question.replace(_RELEASED_SUFFIX, "") + _LMMS_EVAL_SUFFIX
            out.append(Sample(id=f"{question_id}:{k}", task="ask", inputs={"image": image, "question": question},
                              reference={"answer": answer},
                              meta={"category": category, "image_key": question_id}))
        return out

    def _from_hub(self, shards: list[Path], limit: int | None) -> list[tuple]:
        cache = loading.cache_dir_of(self) / "images"
        rows = []
        for row in loading.iter_parquet(shards, batch_rows=32):
            question_id = str(row.get("question_id"))
            image = loading.materialize(row.get("image"), cache, question_id)
            rows.append((question_id, image, str(row.get("question", "")).strip(), str(row.get("answer", "")),
                         str(row.get("category", question_id.split("/")[0]))))
            if limit and len(rows) >= limit:
                break
        return rows

    def _from_official(self, root: Path, limit: int | None) -> list[tuple]:
        """<category>/questions_answers_YN/<name>.txt with the image in <category>/images/, or the
        .txt next to the image; each .txt holds "question<TAB>answer" lines."""
        rows = []
        for category in [*PERCEPTION, *COGNITION]:
            folder = root / category
            if not folder.is_dir():
                continue
            texts = sorted((folder / "questions_answers_YN").glob("*.txt")) or sorted(folder.glob("*.txt"))
            for text in texts:
                image_dir = folder / "images" if (folder / "images").is_dir() else folder
                image = next((image_dir / f"{text.stem}{ext}" for ext in (".jpg", ".png", ".jpeg")
                              if (image_dir / f"{text.stem}{ext}").exists()), image_dir / f"{text.stem}.jpg")
                for line in text.read_text(encoding="utf-8", errors="replace").splitlines():
                    question, sep, answer = line.partition("\t")
                    if not sep:
                        continue
                    rows.append((f"{category}/{image.name}", str(image), question.strip(), answer.strip(), category))
                    if limit and len(rows) >= limit:
                        return rows
        return rows

    def score(self, samples: list[Sample], outputs: dict[str, Any], metrics: list[str], *,
              device: str = "auto", judge=None) -> SuiteResult:
        from uniedit_cli.eval.metrics.text import mme_parse_answer, mme_scores

        per_sample: dict[str, dict] = {}
        table = []
        for sample in samples:
            answer = outputs.get(sample.id)
            parsed = mme_parse_answer(answer)
            per_sample[sample.id] = {"correct": parsed == str(sample.reference["answer"]).strip().lower(), "parsed": parsed}
            if answer is None:
                per_sample[sample.id]["error"] = "no answer"
            table.append({"category": sample.meta["category"], "image": sample.meta["image_key"],
                          "answer": sample.reference["answer"], "prediction": answer})
        scores = mme_scores(table)
        categories = scores["categories"]
        headline = {"perception": scores["perception"], "cognition": scores["cognition"], "total": scores["total"]}
        breakdown = {
            "score": {c: v["score"] for c, v in categories.items()},
            "acc": {c: v["acc"] for c, v in categories.items()},
            "acc+": {c: v["acc_plus"] for c, v in categories.items()},
        }
        return SuiteResult(metrics={k: v for k, v in headline.items() if k in metrics}, per_sample=per_sample,
                           n=len(samples), breakdown=breakdown)
