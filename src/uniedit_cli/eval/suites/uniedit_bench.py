"""uniedit-bench: held-out rows written by ``uniedit synth`` (the parquet shards of its
``test/`` split, held out by image, with the columns of ``synth.records.COLUMNS``), edited by
the model under test.

- ``judge_acc`` (every source, needs ``--judge``): the question embedded in the instruction
  (``expected_after_edit``) is re-asked on the model's edit and the judge's answer compared
  with the expected one by the rule synth's verifier uses (``synth.verify.answers_match``:
  VQAv2 answer normalisation). The Uni-Edit idea: an edit is right when
  the image it makes answers the question right.
- For the built-in scene world (``source == "shapes"``) the target is rendered exactly from
  the edited scene graph, so there is ground truth:
  ``l1``: MagicBrush-style L1 between the edit (resized to the target's size) and the true
  target, in [0, 1];
  ``property_acc``: whether the edited property is right, read off the pixels the edit must
  change (where the true target differs from the source). Over that region the edit's
  progress is p = (|out - source| - |out - target|) / |target - source| (means over the
  region): 1 for the exact target, -1 for an unchanged source, about 0 for noise; the property
  counts as right when p >= 0.5. An edit that must change nothing (a conditional whose
  condition is false) is right when the output stays within L1 0.05 of the source.
  ``edit_region_l1``: the L1 over that region alone.
Rows from other sources have editor-made targets, so they get ``judge_acc`` only.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, ClassVar

from uniedit_cli.eval.suites import loading
from uniedit_cli.eval.suites.base import Sample, Suite, SuiteResult
from uniedit_cli.eval.suites.judged import JudgeQuery, ask_judge

WORLD_SOURCE = "shapes"
CHANGE_THRESHOLD = 24 / 255  # a pixel belongs to the edit region when a channel moves more than this (anti-aliasing is smaller)
MIN_REGION = 0.0005  # a region smaller than this fraction of the picture is "nothing to change"
PROGRESS_OK = 0.5
NOOP_L1_OK = 0.05
PERCENT_METRICS = ("judge_acc", "property_acc")


class UniEditBenchSuite(Suite):
    name = "uniedit-bench"
    task = "edit"
    output_kind = "image"
    convention = "uniedit-bench (judge re-asks expected_after_edit; exact targets on the scene world)"
    default_metrics = ("judge_acc", "l1", "property_acc")
    all_metrics = ("judge_acc", "l1", "property_acc", "edit_region_l1")
    judge_metrics: ClassVar[tuple[str, ...]] = ("judge_acc",)
    lower_is_better: ClassVar[tuple[str, ...]] = ("l1", "edit_region_l1")
    option_help: ClassVar[dict[str, str]] = {"split": "the split folder to score (default test: synth's held-out rows)"}
    data_help = (
        "Pass --data the folder written by `uniedit synth` (its test/ shards are the held-out rows), e.g. "
        "`uniedit synth --out uniedit-data/` (the built-in scene world, no downloads) then --data uniedit-data/."
    )

    def shards(self, root: Path) -> list[Path]:
        """The held-out split: ``<data>/<split>/*.parquet`` (synth writes train/ and test/, held
        out by image), or the shards of ``--data`` itself when it is a split folder or a file."""
        split = str(self.options.get("split", "test"))
        held_out = loading.find(root / split, ["*.parquet"]) if root.is_dir() else []
        if held_out:
            return held_out
        if root.is_file() or not (root / "train").is_dir():
            direct = loading.find(root, ["*.parquet"])
            if direct:
                return direct
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.parquet"))) if root.is_dir() else []
        raise loading.missing_data(self, f"no held-out {split}/ shards under {str(root)!r}"
                                         + (f" (found {', '.join(found)}/; training rows are not a benchmark)." if found else "."))

    def samples(self) -> list[Sample]:
        root = loading.require_data(self)
        shards = self.shards(root)
        columns = loading.parquet_columns(shards[0])
        missing = [c for c in ("input_image", "edit_prompt", "id", "expected_after_edit") if c not in columns]
        if missing:
            raise loading.missing_data(self, f"{shards[0].name} lacks the synth column(s) {', '.join(missing)}; "
                                             "is this a `uniedit synth` output folder?")
        limit = int(self.options["limit"]) if self.options.get("limit") else None
        cache = loading.cache_dir_of(self)
        out = []
        for row in loading.iter_parquet(shards, batch_rows=64):
            out.append(self._sample(row, cache))
            if limit and len(out) >= limit:
                break
        return out

    @staticmethod
    def _sample(row: dict, cache: Path) -> Sample:
        row_id = str(row["id"])
        expected = loading.nested(row.get("expected_after_edit")) or {}
        expected = expected if isinstance(expected, dict) else {}
        return Sample(
            id=row_id, task="edit",
            inputs={"image": loading.materialize(row.get("input_image"), cache / "sources", row_id),
                    "instruction": str(row.get("edit_prompt") or "")},
            reference={"target": loading.materialize(row.get("edited_image"), cache / "targets", row_id),
                       "question": expected.get("question"), "answer": expected.get("answer")},
            meta={"source": row.get("source"), "task_category": row.get("task_category"), "style": row.get("style"),
                  "condition_holds": row.get("condition_holds")},
        )

    # -- judge --

    def judge_queries(self, samples: list[Sample], outputs: dict[str, Any], metrics: list[str]) -> list[JudgeQuery]:
        if "judge_acc" not in metrics:
            return []
        return [JudgeQuery(f"{s.id}|reask", s.id, "reask", [str(outputs[s.id])], str(s.reference["question"]))
                for s in samples if outputs.get(s.id) and s.reference.get("question")]

    # -- scoring --

    def score(self, samples: list[Sample], outputs: dict[str, Any], metrics: list[str], *,
              device: str = "auto", judge=None) -> SuiteResult:
        from uniedit_cli.synth.verify import answers_match  # the rule synth's verifier keeps rows by

        replies = ask_judge(self.judge_queries(samples, outputs, metrics), judge) if "judge_acc" in metrics else {}
        exact = [m for m in ("l1", "property_acc", "edit_region_l1") if m in metrics]
        per_sample: dict[str, dict] = {}
        for sample in samples:
            row: dict[str, Any] = {}
            per_sample[sample.id] = row
            output = outputs.get(sample.id)
            if not output:
                row["error"] = "no output"
                if "judge_acc" in metrics:
                    row["judge_acc"] = 0.0
                continue
            image, problem = loading.open_output_image(output)
            if image is None:
                row["error"] = problem
                if "judge_acc" in metrics:
                    row["judge_acc"] = 0.0
                continue
            if "judge_acc" in metrics:
                reply = replies.get(f"{sample.id}|reask")
                row["judge_answer"] = reply
                row["expected_answer"] = sample.reference.get("answer")
                if reply is None:
                    row["error"] = ("the judge gave no reply" if sample.reference.get("question")
                                    else "row has no expected_after_edit question")
                row["judge_acc"] = float(answers_match(reply, str(sample.reference.get("answer") or "")))
            if exact and sample.meta.get("source") == WORLD_SOURCE:
                row.update({k: v for k, v in self._exact(sample, image).items()
                            if k in metrics or k in ("edit_progress", "error")})

        values: dict[str, list[float]] = defaultdict(list)
        by_category: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for sample in samples:
            row = per_sample[sample.id]
            for metric in metrics:
                if isinstance(row.get(metric), (int, float)):
                    values[metric].append(float(row[metric]))
                    by_category[metric][str(sample.meta.get("task_category") or "unknown")].append(float(row[metric]))
        def mean(metric: str, v: list[float]) -> float:
            # accuracies are reported in percent; a sample's own value is 0 or 1
            return (100.0 if metric in PERCENT_METRICS else 1.0) * sum(v) / len(v)

        headline = {m: mean(m, v) for m, v in values.items() if v}
        breakdown = {f"{m} by task_category": {c: mean(m, v) for c, v in sorted(cats.items())}
                     for m, cats in by_category.items()}
        scored = sum(1 for row in per_sample.values()
                     if not row.get("error") and any(isinstance(row.get(m), (int, float)) for m in metrics))
        return SuiteResult(metrics={m: headline[m] for m in metrics if m in headline}, per_sample=per_sample,
                           n=scored, breakdown=breakdown)

    @staticmethod
    def _exact(sample: Sample, output) -> dict[str, Any]:
        """L1 to the rendered target and the edited-property check (see the module docstring)."""
        import numpy as np

        from uniedit_cli.io import load_image

        target_path, source_path = sample.reference.get("target"), sample.inputs.get("image")
        if not target_path or not source_path:
            return {"error": "row has no target or source image"}
        target = load_image(target_path, what="target image")
        source = load_image(source_path, what="source image")
        size = target.size
        # MagicBrush's convention: the output is resized to the ground truth's size (PIL default filter)
        from uniedit_cli.eval.metrics.image import pixel_distances

        result: dict[str, Any] = {"l1": pixel_distances(output, target)[0]}
        out = np.asarray(output.resize(size) if output.size != size else output, dtype=np.float64) / 255.0
        tgt = np.asarray(target, dtype=np.float64) / 255.0
        src = np.asarray(source.resize(size) if source.size != size else source, dtype=np.float64) / 255.0
        region = (np.abs(tgt - src) > CHANGE_THRESHOLD).any(axis=-1)
        if region.mean() < MIN_REGION:
            # nothing may change (e.g. a conditional whose condition is false)
            result["property_acc"] = float(np.abs(out - src).mean() <= NOOP_L1_OK)
            return result
        err_target = float(np.abs(out - tgt)[region].mean())
        err_source = float(np.abs(out - src)[region].mean())
        change = float(np.abs(tgt - src)[region].mean())
        progress = (err_source - err_target) / change
        result.update(edit_region_l1=err_target, edit_progress=progress, property_acc=float(progress >= PROGRESS_OK))
        return result
