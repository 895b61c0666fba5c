"""The synth pipeline: plan every row, then make targets, verify and write, one chunk at a time.

1. **Plan** (CPU, cheap, deterministic): read the source in its stable order, classify each
   record, drop and cap categories, and write its instruction with an rng seeded from the
   record, so the same arguments always plan the same rows. Anything dropped is recorded with
   its reason in ``rejected/plan.jsonl``.
2. **Chunks**: planned rows are cut into ``N`` fixed-size chunks; chunk ``k`` becomes shards
   ``train/data-k-of-N.parquet`` (always written, last: it marks the chunk done),
   ``test/data-k-of-N.parquet`` (held-out rows, if any) and ``rejected/data-k-of-N.parquet``
   (rows the verifier turned down, with ``reject_reason``, if any). A shard is written to a
   temporary file and renamed, so a killed run loses only the chunks in flight and a rerun
   skips finished ones. When every chunk is done, test/ and rejected/ shards are renumbered
   ``data-j-of-M`` with ``M`` the files there (``writer.renumber_shards``).
3. Per chunk: source images, the optional LLM rewrite (template fallback on a leak or a
   garbled answer), the target (the scene world renders it exactly; other sources use an
   editor model; ``--editor none`` writes instruction-only rows), verification (the judge
   re-asks ``expected_after_edit``; CLIP directional and image similarity; a quality score)
   and the ``--min-*`` thresholds.
4. Rank 0 renumbers the shards and writes ``uniedit-data.json`` and ``preview.html`` from
   what is on disk.

Chunks are split across ranks (``--num-processes``) with accelerate; with no model in the
loop (the scene world), ``--num-proc`` runs chunks in a process pool instead.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from uniedit_cli import __version__
from uniedit_cli.errors import InputError, UsageError
from uniedit_cli.synth import writer
from uniedit_cli.synth.records import (DROPPED_BY_DEFAULT, STYLES, BadRecord, Instruction, Rejection, VQARecord,
                                       row_id)

WORLD_EDITOR = "world"


@dataclass
class SynthConfig:
    vqa: str = "shapes"
    vqa_path: str | None = None
    split: str = "val"
    out: str = "uniedit-data"
    num_rows: int | None = None  # rows to plan (the scene world) / questions to read (other sources)
    editor: str | None = None  # a registry model that can edit, "world" (scene world), or "none"
    judge: str | None = None
    rewriter: str | None = None
    classifier: str | None = None
    clip: str | None = None  # open_clip model for clip_dir / clip_img, e.g. "ViT-B-32" (weights must be local)
    styles: tuple[str, ...] = STYLES
    max_depth: int = 2
    cap: int | None = None  # rows per category
    keep_categories: tuple[str, ...] = ()  # categories dropped by default that the user keeps
    seed: int = 0
    size: int = 256  # scene-world render size
    chunk_size: int = 200
    num_proc: int = 1
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    min_quality: float | None = None
    min_clip_dir: float | None = None
    min_clip_img: float | None = None
    require_judge_ok: bool = True
    holdout: float = 0.05  # share of images whose rows go to the test split (uniedit-bench)
    source_options: dict[str, Any] = field(default_factory=dict)  # --vqa-option key=value

    def resolved(self) -> "SynthConfig":
        config = SynthConfig(**asdict(self))
        config.vqa = (config.vqa or "").strip().lower()  # sources are looked up case-insensitively
        if config.editor is None:
            config.editor = WORLD_EDITOR if config.vqa == "shapes" else None
        if config.num_rows is None and config.vqa == "shapes":
            config.num_rows = 1000
        return config


@dataclass
class PlannedRow:
    record: VQARecord
    category: str
    instruction: Instruction
    id: str
    seed: int
    split: str = "train"


def split_of(image_id: str, holdout: float) -> str:
    """Held out by image, not by row: every question about one image lands in the same split,
    so a test image is never seen in training."""
    import hashlib

    bucket = int(hashlib.sha1(f"holdout:{image_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < holdout else "train"


@dataclass
class Plan:
    rows: list[PlannedRow]
    rejections: list[dict]  # plan-stage: bad records, dropped/capped categories, answer leaks
    seen: int = 0
    classified: int = 0  # records the --classifier model saw (batches read a little ahead)
    classifier_fallbacks: int = 0  # its replies that named no category (the rules were used)


@dataclass
class SynthSummary:
    out: Path
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    shards: int = 0
    skipped_shards: int = 0
    seconds: float = 0.0
    manifest: dict = field(default_factory=dict)


# --- plan ---------------------------------------------------------------------------------------

def _record_rng(config: SynthConfig, record: VQARecord) -> random.Random:
    return random.Random(f"{config.seed}:{record.source}:{record.source_id}")


def _with_categories(source, classifier, batch: int = 256):
    """(item, category) pairs; a model classifier sees records in batches, the rules one by one."""
    from uniedit_cli.synth.classify import classify

    if classifier is None:
        for item in source:
            yield item, (None if isinstance(item, BadRecord) else _safe(classify, item))
        return
    buffer: list = []

    def flush():
        records = [item for item in buffer if not isinstance(item, BadRecord)]
        try:
            categories = iter(classifier.classify_batch(records)) if records else iter(())
        except Exception as exc:  # noqa: BLE001 - the rules are always there
            categories = iter([exc] * len(records))
        for item in buffer:
            yield item, (None if isinstance(item, BadRecord) else next(categories))
        buffer.clear()

    for item in source:
        buffer.append(item)
        if len(buffer) >= batch:
            yield from flush()
    yield from flush()


def _safe(fn, record):
    try:
        return fn(record)
    except Exception as exc:  # noqa: BLE001 - reported as classify_failed
        return exc


def plan(config: SynthConfig, source, *, classifier=None) -> Plan:
    """Classify, drop/cap and write instructions for every record of ``source`` (deterministic).
    ``classifier``: a :class:`~uniedit_cli.synth.classify.ModelClassifier`, or None for the rules."""
    from uniedit_cli.synth.classify import extract_process_answer
    from uniedit_cli.synth.instructions import write_instruction

    keep_dropped = set(config.keep_categories)
    per_category: Counter = Counter()
    rows: list[PlannedRow] = []
    rejections: list[dict] = []
    seen = 0
    # Planned rows keep their records until their chunk runs; questions about one image share one
    # scene graph and one image buffer instead of a copy each (GQA has ~13 questions per image).
    shared_graphs: dict[str, dict] = {}
    shared_bytes: dict[str, bytes] = {}
    for item, category in _with_categories(source, classifier):
        seen += 1
        if isinstance(item, BadRecord):
            rejections.append({"source_id": item.source_id, "reason": item.reason, "detail": item.detail})
            continue
        record: VQARecord = item
        base = {"source_id": record.source_id, "question": record.question, "answer": record.answer}
        if isinstance(category, Exception):  # one bad record never stops the run
            rejections.append({**base, "reason": "classify_failed", "detail": f"{type(category).__name__}: {category}"})
            continue
        if category in DROPPED_BY_DEFAULT and category not in keep_dropped:
            rejections.append({**base, "category": category, "reason": f"dropped_{category}"})
            continue
        if config.cap is not None and per_category[category] >= config.cap:
            rejections.append({**base, "category": category, "reason": "category_cap"})
            continue
        try:
            result = write_instruction(record, category, _record_rng(config, record), styles=config.styles,
                                       max_depth=config.max_depth)
        except Exception as exc:  # noqa: BLE001 - an unknown operation etc. is a bad record
            reason = getattr(exc, "reason", None) or "instruction_failed"
            rejections.append({**base, "category": category, "reason": reason, "detail": f"{type(exc).__name__}: {exc}"})
            continue
        if isinstance(result, Rejection):
            rejections.append({**base, "category": category, "reason": result.reason, "detail": result.detail})
            continue
        if not result.process_answer:
            result.process_answer = extract_process_answer(record)
        rid = row_id(record.source, record.source_id, result.template, config.seed)
        if record.scene_graph is not None:
            record.scene_graph = shared_graphs.setdefault(record.image_id, record.scene_graph)
        if record.image_bytes is not None:
            record.image_bytes = shared_bytes.setdefault(record.image_id, record.image_bytes)
        rows.append(PlannedRow(record, category, result, rid, int(rid[:8], 16),
                               split_of(f"{record.source}:{record.image_id}", config.holdout)))
        per_category[category] += 1
        if config.vqa == "shapes" and config.num_rows is not None and len(rows) >= config.num_rows:
            break
    return Plan(rows, rejections, seen, *((classifier.classified, classifier.fallbacks) if classifier else (0, 0)))


# --- chunks -------------------------------------------------------------------------------------

@dataclass
class Models:
    """Models a chunk needs, loaded once per process and only if a chunk is left to do."""

    config: SynthConfig
    editor: Any = None
    judge: Any = None
    rewriter: Any = None
    clip: Any = None
    loaded: bool = False

    def load(self) -> None:
        if self.loaded:
            return
        from uniedit_cli import registry
        from uniedit_cli.models import load_model

        c = self.config
        if c.editor not in (None, "none", WORLD_EDITOR):
            resolved = registry.resolve(c.editor)
            resolved.require(registry.EDIT)
            self.editor = (load_model(resolved, device=c.device, dtype=c.dtype), resolved)
        if c.judge:
            resolved = registry.resolve(c.judge)
            resolved.require(registry.ASK)
            self.judge = (load_model(resolved, device=c.device, dtype=c.dtype), resolved)
        if c.rewriter:
            resolved = registry.resolve(c.rewriter)
            resolved.require(registry.REWRITE)
            self.rewriter = (load_model(resolved, device=c.device, dtype=c.dtype), resolved)
        if c.clip:
            from uniedit_cli.synth.verify import ClipScorer

            self.clip = ClipScorer(c.clip, device=c.device)
        self.loaded = True


def chunk_bounds(n_rows: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, n_rows)) for start in range(0, n_rows, chunk_size)]


def process_chunk(index: int, total: int, rows: list[PlannedRow], config: SynthConfig, models: Models | None,
                  out_dir: Path) -> tuple[int, Counter]:
    """Make, verify and write chunk ``index``; returns (kept, rejections per reason)."""
    from uniedit_cli.synth import rewrite, targets, verify

    if models is not None:
        models.load()
    rejected: Counter = Counter()
    reject_rows: list[dict] = []

    live: list[tuple[PlannedRow, Any]] = []
    for planned in rows:
        try:
            live.append((planned, targets.source_image(planned, config)))
        except InputError as exc:
            reject_rows.append(_row(planned, None, None, config) | {"reject_reason": f"bad_image: {exc}"})
            rejected["bad_image"] += 1

    prompts = [p.instruction.edit_prompt for p, _ in live]
    if models is not None and models.rewriter is not None and live:
        prompts, fallbacks = rewrite.rewrite_instructions(models.rewriter[0], [p for p, _ in live], config)
        rejected.update({f"rewrite_fallback_{k}": v for k, v in fallbacks.items()})

    made = targets.make_targets([p for p, _ in live], [img for _, img in live], config,
                                models.editor if models is not None else None)
    rows_out = [_row(p, src, tgt, config, edit_prompt=prompt)
                for (p, src), tgt, prompt in zip(live, made, prompts)]
    if models is not None:
        verify.score_rows(rows_out, [p for p, _ in live], judge=models.judge, clip=models.clip, config=config)
    kept_by_split: dict[str, list[dict]] = {split: [] for split in writer.SPLITS}
    for row, (planned, _) in zip(rows_out, live):
        reason = verify.reject_reason(row, config, has_judge=models is not None and models.judge is not None)
        if reason is None and row["edited_image"] is None and config.editor not in ("none",):
            reason = "editor_failed"
        if reason is None:
            kept_by_split[planned.split].append(row)
        else:
            reject_rows.append(row | {"reject_reason": reason})
            rejected[reason.split(":")[0]] += 1

    if reject_rows:
        writer.write_rows(out_dir / writer.REJECTED_DIR / writer.shard_name(index, total), reject_rows, with_reason=True)
    notes = {k: v for k, v in rejected.items() if k.startswith("rewrite_fallback_")}
    if notes:  # counts that live in no parquet column: kept so the manifest of a resumed run has them
        from uniedit_cli.io import write_json

        write_json(out_dir / writer.CHUNK_NOTES_DIR / f"{writer.shard_name(index, total)}.json", notes)
    if kept_by_split["test"]:
        writer.write_rows(writer.shard_path(out_dir, "test", index, total), kept_by_split["test"])
    # the train shard is written last (even when empty): its presence marks the chunk as done
    writer.write_rows(writer.shard_path(out_dir, "train", index, total), kept_by_split["train"])
    return sum(len(v) for v in kept_by_split.values()), rejected


def _row(planned: PlannedRow, source_img, target_img, config: SynthConfig, *, edit_prompt: str | None = None) -> dict:
    record, ins = planned.record, planned.instruction
    return {
        "input_image": source_img,
        "edit_prompt": edit_prompt if edit_prompt is not None else ins.edit_prompt,
        "edited_image": target_img,
        "id": planned.id,
        "source": record.source,
        "source_id": str(record.source_id),
        "image_id": str(record.image_id),
        "task_category": planned.category,
        "original_question": record.question,
        "original_answer": record.answer,
        "process_answer": ins.process_answer,
        "style": ins.style,
        "condition_holds": ins.condition_holds,
        "expected_after_edit": {"question": ins.expected_after_edit["question"],
                                "answer": str(ins.expected_after_edit["answer"])},
        "program": json.dumps(record.program) if record.program is not None else None,
        "editor": config.editor if config.editor not in (None,) else "none",
        "seed": planned.seed,
        "judge_answer": None,
        "judge_ok": None,
        "clip_dir": None,
        "clip_img": None,
        "quality": None,
    }


# --- the whole run ------------------------------------------------------------------------------

def _chunk_worker(args):
    index, total, rows, config, out_dir = args
    return index, *process_chunk(index, total, rows, config, None, out_dir)


def run(config: SynthConfig, *, console=None) -> SynthSummary:
    """Plan, make every missing chunk, and write the manifest and preview (rank 0)."""
    from uniedit_cli.launch import partial_state
    from uniedit_cli.synth.sources import open_source

    config = config.resolved()
    started = time.perf_counter()
    out_dir = Path(config.out)
    validate(config)
    source = open_source(config.vqa, config.vqa_path, config.split, **_source_options(config))
    source.check()
    state = partial_state()
    the_plan = plan(config, source, classifier=_load_classifier(config))
    if not the_plan.rows:
        reasons = Counter(r["reason"] for r in the_plan.rejections)
        raise UsageError(f"no rows to synthesise from {config.vqa} ({the_plan.seen} records read; dropped: "
                         f"{dict(reasons) or 'none'}).", hint="Check --vqa-path/--split, or keep more categories.")
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_resumable(out_dir, config, len(the_plan.rows), write=state.is_main_process)
    bounds = chunk_bounds(len(the_plan.rows), config.chunk_size)
    total = len(bounds)
    if state.is_main_process:
        from uniedit_cli.io import remove_stale_temporaries

        remove_stale_temporaries(out_dir)  # left by a killed run; nobody writes before the barrier below
    pending = [k for k in range(total) if not writer.shard_path(out_dir, "train", k, total).exists()]
    summary = SynthSummary(out=out_dir, shards=total, skipped_shards=total - len(pending))
    state.wait_for_everyone()  # every rank has looked at the shards before any rank writes one

    needs_models = any([config.editor not in (None, "none", WORLD_EDITOR), config.judge, config.rewriter, config.clip])
    with state.split_between_processes(pending) as mine:
        mine = list(mine)
        with _progress(console, enabled=state.is_main_process) as progress:
            label = "synth" if state.num_processes == 1 else f"synth (rank 0 of {state.num_processes})"
            bar = progress.add_task(label, total=sum(bounds[k][1] - bounds[k][0] for k in mine))
            if config.num_proc > 1 and not needs_models and len(mine) > 1:
                import multiprocessing

                jobs = [(k, total, the_plan.rows[slice(*bounds[k])], config, out_dir) for k in mine]
                with multiprocessing.get_context("fork").Pool(min(config.num_proc, len(jobs))) as pool:
                    for k, kept, rejected in pool.imap_unordered(_chunk_worker, jobs):
                        summary.kept += kept
                        summary.rejected.update(rejected)
                        progress.advance(bar, bounds[k][1] - bounds[k][0])
            else:
                models = Models(config) if needs_models else None
                for k in mine:
                    kept, rejected = process_chunk(k, total, the_plan.rows[slice(*bounds[k])], config, models, out_dir)
                    summary.kept += kept
                    summary.rejected.update(rejected)
                    progress.advance(bar, bounds[k][1] - bounds[k][0])
    state.wait_for_everyone()
    summary.seconds = time.perf_counter() - started
    if state.is_main_process:
        summary.manifest = write_manifest(out_dir, config, the_plan, total, summary.seconds)
        summary.kept = summary.manifest["rows"]
    return summary


def _load_classifier(config: SynthConfig):
    if not config.classifier:
        return None
    from uniedit_cli import registry
    from uniedit_cli.models import load_model
    from uniedit_cli.synth.classify import ModelClassifier

    resolved = registry.resolve(config.classifier)
    return ModelClassifier(load_model(resolved, device=config.device, dtype=config.dtype), batch_size=config.batch_size)


def validate(config: SynthConfig) -> None:
    """Everything that can be checked before any work starts."""
    from uniedit_cli import registry
    from uniedit_cli.synth.records import CATEGORIES
    from uniedit_cli.synth.sources import check_options, source_class

    source_class(config.vqa)  # an unknown source first: every other message depends on which one it is
    check_options(config.vqa, config.source_options)
    if config.vqa != "shapes" and config.editor is None:
        raise UsageError(f"--vqa {config.vqa} needs --editor (a model that can edit, e.g. qwen-image-edit), "
                         "or --editor none for instruction-only rows.")
    if config.editor == WORLD_EDITOR and config.vqa != "shapes":
        raise UsageError("--editor world renders exact targets for the built-in scene world only (--vqa shapes).")
    bad_styles = [s for s in config.styles if s not in STYLES]
    if bad_styles:
        raise UsageError(f"unknown style(s) {', '.join(bad_styles)}.", hint=f"Styles: {', '.join(STYLES)}.")
    bad_categories = [c for c in config.keep_categories if c not in CATEGORIES]
    if bad_categories:
        raise UsageError(f"unknown categories {', '.join(bad_categories)}.", hint=f"Categories: {', '.join(CATEGORIES)}.")
    if config.max_depth < 1:
        raise UsageError("--max-depth must be at least 1.")
    if config.chunk_size < 1 or config.num_proc < 1 or config.batch_size < 1:
        raise UsageError("--chunk-size, --num-proc and --batch-size must be at least 1.")
    if config.min_quality is not None and not 1 <= config.min_quality <= 5:
        raise UsageError(f"--min-quality {config.min_quality:g}: the judge rates quality from 1 to 5.",
                         hint="Pass a value from 1 to 5 (the release keeps 3 and up).")
    for flag, value in (("--min-clip-dir", config.min_clip_dir), ("--min-clip-img", config.min_clip_img)):
        if value is not None and not -1 <= value <= 1:
            raise UsageError(f"{flag} {value:g}: CLIP similarities are cosines, from -1 to 1.",
                             hint="Pass a value from -1 to 1.")
    if config.clip:
        from uniedit_cli.synth.verify import resolve_clip

        resolve_clip(config.clip)  # a name synth does not know, or weights not on this machine: now, not mid-run
    for flag, name, capability in (("--editor", config.editor, registry.EDIT), ("--judge", config.judge, registry.ASK),
                                   ("--rewriter", config.rewriter, registry.REWRITE),
                                   ("--classifier", config.classifier, registry.REWRITE)):
        if name and name not in ("none", WORLD_EDITOR):
            resolved = registry.resolve(name)
            try:
                resolved.require(capability)
            except UsageError as exc:
                raise UsageError(f"{flag}: {exc}") from None
            from uniedit_cli.models.base import preflight

            preflight(resolved)


def preflight(config: SynthConfig):
    """The checks ``uniedit synth`` makes before it launches or plans anything: the arguments,
    then the source's files (cheap: paths and layout). Returns the checked source."""
    from uniedit_cli.synth.sources import open_source

    config = config.resolved()
    validate(config)
    source = open_source(config.vqa, config.vqa_path, config.split, **_source_options(config))
    source.check()
    return source


def ignored_options(config: SynthConfig) -> list[str]:
    """Options that were passed but change nothing in this run, as one sentence each."""
    config = config.resolved()
    notes = []
    if config.editor == "none":  # instruction-only rows: nothing to re-ask, score or threshold
        flags = [flag for flag, given in (("--judge", bool(config.judge)), ("--clip", bool(config.clip)),
                                          ("--min-quality", config.min_quality is not None),
                                          ("--min-clip-dir", config.min_clip_dir is not None),
                                          ("--min-clip-img", config.min_clip_img is not None),
                                          ("--keep-judge-mismatch", not config.require_judge_ok)) if given]
        if flags:
            verb = "has" if len(flags) == 1 else "have"
            notes.append(f"{', '.join(flags)} {verb} no effect with --editor none (no target images to check); ignored.")
        return notes
    if not config.judge:
        if config.min_quality is not None:
            notes.append("--min-quality has no effect without --judge (the judge rates quality); ignored.")
        if not config.require_judge_ok:
            notes.append("--keep-judge-mismatch has no effect without --judge (nothing is re-asked); ignored.")
    if not config.clip:
        flags = [flag for flag, value in (("--min-clip-dir", config.min_clip_dir), ("--min-clip-img", config.min_clip_img))
                 if value is not None]
        if flags:
            verb = "has" if len(flags) == 1 else "have"
            notes.append(f"{' and '.join(flags)} {verb} no effect without --clip (no CLIP scores); ignored.")
    return notes


def _source_options(config: SynthConfig) -> dict:
    if config.vqa == "shapes":
        # the world plans questions per image; read enough images for the requested rows
        return {"num_images": max(1, math.ceil((config.num_rows or 1000) / 2)), "seed": config.seed, "size": config.size,
                "questions_per_image": 4, "max_depth": config.max_depth}
    return ({"limit": config.num_rows} if config.num_rows else {}) | dict(config.source_options)


RUN_KEYS = ("vqa", "vqa_path", "split", "num_rows", "editor", "judge", "rewriter", "classifier", "clip", "styles",
            "max_depth", "cap", "keep_categories", "seed", "size", "chunk_size", "min_quality", "min_clip_dir",
            "min_clip_img", "require_judge_ok", "holdout", "source_options")


def _check_resumable(out_dir: Path, config: SynthConfig, n_rows: int, *, write: bool = True) -> None:
    """A folder resumes only the run that made it: other arguments would mix two datasets.

    Every rank checks; only one (``write``) records the arguments, because rank 0 then sweeps
    the folder's stale temporaries and would delete another rank's half-written copy."""
    path = out_dir / writer.MANIFEST
    current = {k: _jsonable(getattr(config, k)) for k in RUN_KEYS} | {"planned_rows": n_rows}
    state_path = out_dir / ".synth-run.json"
    if state_path.exists():
        previous = json.loads(state_path.read_text(encoding="utf-8"))
        if previous != current:
            changed = sorted(k for k in current if previous.get(k) != current.get(k))
            raise UsageError(f"--out {str(out_dir)!r} holds a synth run with other arguments ({', '.join(changed)}).",
                             hint="Rerun with the same arguments to resume it, or pass a new --out.")
    elif any(out_dir.glob("*/data-*.parquet")) and not path.exists():
        raise UsageError(f"--out {str(out_dir)!r} already has parquet shards from something else.", hint="Pass a new --out.")
    if write:
        from uniedit_cli.io import write_json

        write_json(state_path, current)


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def write_manifest(out_dir: Path, config: SynthConfig, the_plan: Plan, total: int, seconds: float) -> dict:
    """uniedit-data.json and preview.html, computed from the shards on disk (so a resumed run
    reports the whole dataset, not just its last part)."""
    import pyarrow.parquet as pq

    from uniedit_cli.io import write_json

    categories: Counter = Counter()
    styles: Counter = Counter()
    rejections: Counter = Counter(r["reason"] for r in the_plan.rejections)
    judge_total = judge_ok = 0
    rows = 0
    per_split: Counter = Counter()
    shards: list[str] = []
    finished = {folder: writer.renumber_shards(out_dir / folder, total)
                for folder in (*writer.SPLITS, writer.REJECTED_DIR)}
    for split in writer.SPLITS:
        for path in finished[split]:
            shards.append(str(path.relative_to(out_dir)))
            table = pq.read_table(path, columns=["task_category", "style", "judge_ok"])
            rows += table.num_rows
            per_split[split] += table.num_rows
            categories.update(table.column("task_category").to_pylist())
            styles.update(table.column("style").to_pylist())
            for ok in table.column("judge_ok").to_pylist():
                if ok is not None:
                    judge_total += 1
                    judge_ok += bool(ok)
    for rejected_path in finished[writer.REJECTED_DIR]:
        reasons = pq.read_table(rejected_path, columns=["reject_reason"]).column("reject_reason").to_pylist()
        rejections.update(r.split(":")[0] for r in reasons)
        for ok in pq.read_table(rejected_path, columns=["judge_ok"]).column("judge_ok").to_pylist():
            if ok is not None:
                judge_total += 1
                judge_ok += bool(ok)
    rewrite_fallbacks: Counter = Counter()
    for notes in sorted((out_dir / writer.CHUNK_NOTES_DIR).glob("*.json")):
        rewrite_fallbacks.update({k.removeprefix("rewrite_fallback_"): v
                                  for k, v in json.loads(notes.read_text(encoding="utf-8")).items()})
    writer.write_plan_rejections(out_dir, the_plan.rejections)
    manifest = {
        "uniedit_version": __version__,
        "config": {k: _jsonable(v) for k, v in asdict(config).items()},
        "rows": rows,
        "rows_per_split": dict(per_split),
        "shards": shards,
        "records_read": the_plan.seen,
        "planned_rows": len(the_plan.rows),
        "counts_per_category": dict(sorted(categories.items())),
        "counts_per_style": dict(sorted(styles.items())),
        "rejections_per_reason": dict(sorted(rejections.items())),
        "seconds_last_run": round(seconds, 2),
        "columns": list(writer.features().keys()),
        # --editor none writes instructions only: edited_image is empty in every row, so the data
        # cannot train an editor (train says so from this field instead of failing on the rows)
        "has_targets": config.editor != "none",
    }
    if config.classifier:
        manifest["classifier"] = {"model": config.classifier, "classified": the_plan.classified,
                                  "rule_fallbacks": the_plan.classifier_fallbacks}
    if config.rewriter:
        manifest["rewriter"] = {"model": config.rewriter, "template_fallbacks": dict(sorted(rewrite_fallbacks.items()))}
    if judge_total:
        # for the scene world the expected answer is exact, so this is the judge's accuracy
        manifest["judge"] = {"model": config.judge, "asked": judge_total, "agreed": judge_ok,
                             "agreement": round(judge_ok / judge_total, 4),
                             "exact_ground_truth": config.vqa == "shapes"}
    write_json(out_dir / writer.MANIFEST, manifest)
    preview_rows = []
    for path in finished["train"]:  # the first rows on disk, enough for one page
        if len(preview_rows) >= 48:
            break
        preview_rows += writer.read_shard(path)[:48 - len(preview_rows)]
    writer.write_preview(out_dir, preview_rows, meta=f"{rows} rows from {config.vqa}; showing {len(preview_rows)}")
    return manifest


def _progress(console, *, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not enabled)
