"""The one batch runner behind ``edit``, ``generate`` and ``ask``.

A command turns its input (one item, or a ``--batch`` JSONL file) into :class:`WorkItem` s;
the runner loads the model once, splits the items across ranks with accelerate's
``split_between_processes``, runs them in batches under a rich progress bar and writes each
result as soon as it is finished:

- images atomically, each with a sidecar JSON (model, parameters, seed, timings);
- a record per item appended to ``<out>/.parts/rank-<R>.jsonl`` (the resume journal);
- at the end rank 0 merges the journals into ``results.jsonl`` (input order) and
  ``failed.jsonl``.

A rerun of the same batch skips items already in the journals; a bad row (missing file,
corrupt image, empty instruction, malformed JSON) is skipped and counted with its reason and
never stops the others.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from uniedit_cli import __version__
from uniedit_cli.errors import InputError, UniEditError, UsageError
from uniedit_cli.io import append_jsonl, load_image, read_jsonl, save_image, write_json, write_text

PARTS_DIR = ".parts"


@dataclass
class WorkItem:
    id: str
    index: int  # position in the input, for ordering the manifest
    inputs: dict[str, Any]
    seed: int
    output: Path | None = None  # the image to write (edit / generate)
    error: str | None = None  # set when the row is bad before any model runs


@dataclass
class Failure:
    id: str
    index: int
    reason: str


@dataclass
class RunSummary:
    done: int = 0
    skipped: int = 0  # already finished by an earlier run
    failed: list[Failure] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    load_seconds: float = 0.0
    seconds: float = 0.0


_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(value: Any) -> str:
    text = _ID_UNSAFE.sub("_", str(value)).strip("._")
    return text[:120] or "item"


def slug(text: str, limit: int = 40) -> str:
    return safe_id(re.sub(r"\s+", "-", text.strip().lower()))[:limit].strip("-_.") or "prompt"


# --- reading a batch file ---------------------------------------------------------------------

def _json_kind(value: Any) -> str:
    """How a JSON value reads to a person who wrote the batch file."""
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_batch(path: str | Path, *, required: tuple[str, ...], aliases: dict[str, tuple[str, ...]] | None = None,
               image_fields: tuple[str, ...] = ("image",),
               int_fields: tuple[str, ...] = ()) -> list[tuple[int, dict | None, str | None]]:
    """Parse a JSONL batch file into ``(line, row, error)``; relative image paths are resolved
    against the batch file's folder. Checks what can be checked without a model: every
    required field is there and a string (text fields non-empty), ``int_fields`` that are present
    are integers (a seed of "7" is a bad row, not silently replaced by the default seed), and
    ``id`` is a string or an integer."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--batch {str(path)!r} is a folder.", hint="Pass a .jsonl file with one JSON object per line.")
    aliases = aliases or {}
    rows: list[tuple[int, dict | None, str | None]] = []
    for line, row, error in read_jsonl(path):
        if error is None:
            assert row is not None
            for name in required:
                if name not in row:
                    for alias in aliases.get(name, ()):
                        if alias in row:
                            row[name] = row[alias]
                            break
            missing = [name for name in required if name not in row]
            if missing:
                error = f"missing field {', '.join(repr(m) for m in missing)} (row has {', '.join(map(repr, row)) or 'nothing'})"
            else:
                error = _field_error(row, required, image_fields, int_fields)
                for name in required:
                    if name in image_fields and isinstance(row[name], str):
                        image = Path(row[name]).expanduser()
                        row[name] = str(image if image.is_absolute() else (path.parent / image))
        rows.append((line, row, error))
    if not rows:
        raise UsageError(f"batch file {str(path)!r} has no rows.", hint="Write one JSON object per line.")
    return rows


def _field_error(row: dict, required: tuple[str, ...], image_fields: tuple[str, ...],
                 int_fields: tuple[str, ...]) -> str | None:
    """The first thing wrong with a row's field types, or None."""
    for name in required:
        value = row[name]
        if not isinstance(value, str):
            what = "a string (a path)" if name in image_fields else "a string"
            return f"{name} must be {what}, got {_shown(value)} ({_json_kind(value)})"
        if not value.strip():
            return f"empty {name}"
    for name in int_fields:
        value = row.get(name)
        if name in row and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{name} must be an integer, got {_shown(value)} ({_json_kind(value)})"
    if "id" in row and (isinstance(row["id"], bool) or not isinstance(row["id"], (str, int))):
        return f"id must be a string or an integer, got {_shown(row['id'])} ({_json_kind(row['id'])})"
    return None


def assign_ids(items: list[WorkItem]) -> None:
    """Make ids unique; a duplicate explicit id is a bad row, not a silent overwrite."""
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            # the duplicate gets an id of its own so its failure never shadows the first row's result
            item.error = item.error or f"duplicate id {item.id!r}"
            item.id = f"{item.id}@line{item.index}"
        seen.add(item.id)


# --- the journal ------------------------------------------------------------------------------

def journal_records(out_dir: Path) -> dict[str, dict]:
    """Latest record per id from every rank's journal (and an earlier merged results.jsonl)."""
    latest: dict[str, dict] = {}
    sources = [out_dir / "results.jsonl", *sorted((out_dir / PARTS_DIR).glob("rank-*.jsonl"))]
    for source in sources:
        if not source.exists():
            continue
        with open(source, encoding="utf-8") as fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill -9: that item simply runs again
                if isinstance(record, dict) and "id" in record:
                    latest[str(record["id"])] = record
    return latest


def finished_ids(out_dir: Path) -> set[str]:
    done = set()
    for key, record in journal_records(out_dir).items():
        if record.get("status") != "ok":
            continue
        output = record.get("output")
        if output and not (out_dir / output).exists():
            continue  # the journal says done but the image is gone: redo it
        done.add(key)
    return done


# --- the run's identity -----------------------------------------------------------------------

RUN_FILE = "run.json"


def run_fingerprint(task: "Task", resolved, options: dict) -> dict:
    return {"task": task.name, "model": resolved.display, "location": resolved.location,
            "family": resolved.family, "options": options}


def check_resumable(out_dir: Path, task: "Task", resolved, options: dict) -> None:
    """A batch folder resumes only the run that made it: another model or other settings would
    silently mix two runs' results."""
    path = out_dir / RUN_FILE
    if not path.exists():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    current = json.loads(json.dumps(run_fingerprint(task, resolved, options), default=str))
    if previous != current:
        changed = sorted(k for k in current if previous.get(k) != current.get(k))
        raise UsageError(
            f"--out {str(out_dir)!r} holds a {previous.get('task')} run with another {', '.join(changed)} "
            f"(model {previous.get('model')!r}, options {previous.get('options')}).",
            hint="Rerun with the same settings to resume it, or pass a new --out.",
        )


# --- checking the options --------------------------------------------------------------------

# The side multiple each family's pipelines need (models/diffusers_edit.py): Stable Diffusion's
# VAE downsamples by 8 (InstructPix2Pix); Kontext and Qwen-Image-Edit pack 2x2 patches of an
# 8x latent, so 16. A model with a larger VAE factor is caught after loading
# (check_size_multiple); families without a --size knob are not listed.
FAMILY_SIZE_MULTIPLE = {"ip2p": 8, "diffusers-edit": 16}


def _size_error(size: int, multiple: int, model: str, why: str) -> UsageError:
    lower = max(multiple, size // multiple * multiple)
    upper = (size // multiple + 1) * multiple
    choices = f"--size {lower} or --size {upper}" if lower < size else f"--size {upper}"
    return UsageError(f"--size {size}: {model} needs a multiple of {multiple} ({why}).",
                      hint=f"Pass {choices}.")


def check_options(resolved, overrides: dict) -> None:
    """Flag values that parse but cannot work, before any model loads: a non-finite float
    (--guidance nan would fail every row deep in sampling) or a --size the model cannot
    produce (it would be rounded down silently, and the sidecar would record the wrong size)."""
    import math

    from uniedit_cli.registry import FAMILY_KNOBS

    for key, value in overrides.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{key.replace('_', '-')} {value}: not a finite number.",
                             hint="Pass an ordinary number (nan and inf are not), or leave the flag out for the model's default.")
    size = overrides.get("size")
    multiple = FAMILY_SIZE_MULTIPLE.get(resolved.family)
    if size is not None and multiple and "size" in FAMILY_KNOBS.get(resolved.family, ()) and size % multiple:
        raise _size_error(int(size), multiple, resolved.display,
                          "the VAE scale factor" if resolved.family == "ip2p"
                          else "the VAE scale factor 8 times the 2x2 latent patches")


def check_size_multiple(adapter, resolved, options: dict) -> None:
    """After loading: the size is a multiple of what this very checkpoint needs (a VAE with
    another scale factor than its family's usual one)."""
    multiple = getattr(adapter, "multiple", None)
    size = options.get("size")
    if isinstance(multiple, int) and multiple > 0 and isinstance(size, int) and size % multiple:
        raise _size_error(size, multiple, resolved.display, "this checkpoint's VAE scale factor")


# --- running ----------------------------------------------------------------------------------

@dataclass
class Task:
    """What a command contributes to the runner."""

    name: str  # edit | generate | ask
    capability: str
    # (adapter, list of prepared inputs, seeds, options) -> list of results (PIL images or strings)
    call: Callable[[Any, list[dict], list[int], dict], list[Any]]
    # item -> prepared inputs (loads images); raises InputError for a bad item
    prepare: Callable[[WorkItem], dict]
    # item -> None, or raises InputError: a cheap look at the inputs (files exist, headers
    # parse) run on every row before the model loads, so that bad rows never cost a model load
    precheck: Callable[[WorkItem], None] | None = None


def prepare_image_item(item: WorkItem) -> dict:
    prepared = dict(item.inputs)
    prepared["image"] = load_image(item.inputs["image"])
    return prepared


def precheck_image_item(item: WorkItem) -> None:
    import os

    from uniedit_cli.io import check_image

    image = item.inputs.get("image")
    if isinstance(image, (str, os.PathLike)):  # an in-memory image is prepare's business
        check_image(image)


def _call_edit(adapter, inputs: list[dict], seeds: list[int], options: dict):
    return adapter.edit([x["image"] for x in inputs], [x["instruction"] for x in inputs], seeds=seeds, **options)


def _call_generate(adapter, inputs: list[dict], seeds: list[int], options: dict):
    return adapter.generate([x["prompt"] for x in inputs], seeds=seeds, **options)


def _call_ask(adapter, inputs: list[dict], seeds: list[int], options: dict):
    return adapter.ask([x["image"] for x in inputs], [x["question"] for x in inputs], **options)


TASK_CALLS = {"edit": _call_edit, "generate": _call_generate, "ask": _call_ask}
TEXT_FIELD = {"edit": "instruction", "generate": "prompt", "ask": "question"}
DONE_WORD = {"edit": "edited", "generate": "generated", "ask": "answered"}


def make_task(kind: str, *, prepare: Callable[[WorkItem], dict] | None = None) -> Task:
    """The Task for ``edit`` / ``generate`` / ``ask``: its adapter call and input loading."""
    if kind not in TASK_CALLS:
        raise UsageError(f"task {kind!r} is not one of {', '.join(TASK_CALLS)}.")
    default_prepare = (lambda item: dict(item.inputs)) if kind == "generate" else prepare_image_item
    return Task(kind, kind, call=TASK_CALLS[kind], prepare=prepare or default_prepare,
                precheck=None if kind == "generate" or prepare is not None else precheck_image_item)


def _batches(items: list[WorkItem], size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def run(task: Task, items: list[WorkItem], *, resolved, options: dict, out_dir: Path | None, device: str,
        dtype: str, batch_size: int, resume: bool, console=None) -> RunSummary:
    """Run ``items`` through the model; see the module docstring for what is written where."""
    from uniedit_cli.launch import partial_state

    state = partial_state()
    summary = RunSummary()
    started = time.perf_counter()
    journal: Path | None = None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        journal = out_dir / PARTS_DIR / f"rank-{state.process_index}.jsonl"

    done = finished_ids(out_dir) if (resume and out_dir is not None) else set()
    pending = [item for item in items if item.id not in done]
    summary.skipped = len(items) - len(pending)
    if out_dir is not None and state.is_main_process:
        from uniedit_cli.io import remove_stale_temporaries

        remove_stale_temporaries(out_dir, recursive=False)  # left by a killed run
        write_json(out_dir / RUN_FILE, run_fingerprint(task, resolved, options))
    # every rank must read the journals before any rank appends to them, or the ranks would
    # split different pending lists
    state.wait_for_everyone()

    with state.split_between_processes(pending) as my_items:
        my_items = list(my_items)
        if task.precheck is not None:
            for item in my_items:
                if item.error is None:
                    try:
                        task.precheck(item)
                    except InputError as exc:
                        item.error = str(exc)
        bad = [item for item in my_items if item.error is not None]
        good = [item for item in my_items if item.error is None]
        for item in bad:
            _record_failure(summary, journal, item, item.error)

        adapter = None
        if good:  # no row left to run: no model load
            from uniedit_cli.models import load_model

            load_started = time.perf_counter()
            adapter = load_model(resolved, device=device, dtype=dtype)
            summary.load_seconds = time.perf_counter() - load_started
            check_size_multiple(adapter, resolved, options)

        with _progress(console, enabled=state.is_main_process) as progress:
            label = task.name if state.num_processes == 1 else f"{task.name} (rank 0 of {state.num_processes})"
            bar = progress.add_task(label, total=len(good))
            for batch in _batches(good, batch_size):
                _run_batch(task, adapter, batch, options, summary, journal, resolved, device_info=adapter.describe())
                progress.advance(bar, len(batch))

    state.wait_for_everyone()
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        # every rank's counts, failures and records, so rank 0 reports the whole run
        gathered = gather_object([(summary.done, summary.failed, summary.records)])
        summary.done = sum(done for done, _, _ in gathered)
        summary.failed = [f for _, failed, _ in gathered for f in failed]
        summary.records = sorted((r for _, _, records in gathered for r in records), key=lambda r: r["index"])
    summary.seconds = time.perf_counter() - started
    if out_dir is not None and state.is_main_process:
        _write_manifest(out_dir, items, task)
    return summary


def _progress(console, *, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=console, disable=not enabled, transient=False,
    )


def _run_batch(task: Task, adapter, batch: list[WorkItem], options: dict, summary: RunSummary,
               journal: Path | None, resolved, device_info: dict) -> None:
    prepared: list[tuple[WorkItem, dict]] = []
    for item in batch:
        try:
            prepared.append((item, task.prepare(item)))
        except InputError as exc:
            _record_failure(summary, journal, item, str(exc))
    if not prepared:
        return
    t0 = time.perf_counter()
    try:
        results = task.call(adapter, [p for _, p in prepared], [item.seed for item, _ in prepared], options)
        per_item = (time.perf_counter() - t0) / len(prepared)
        pairs = list(zip(prepared, results, [per_item] * len(prepared)))
    except UniEditError:
        raise
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError" or len(prepared) == 1:
            if type(exc).__name__ == "OutOfMemoryError":
                raise
            _record_failure(summary, journal, prepared[0][0], f"{type(exc).__name__}: {exc}")
            return
        # one row broke the batch: run the rows one by one so the others still finish
        pairs = []
        for item, inputs in prepared:
            t1 = time.perf_counter()
            try:
                result = task.call(adapter, [inputs], [item.seed], options)[0]
            except Exception as row_exc:  # noqa: BLE001 - reported per row
                if type(row_exc).__name__ == "OutOfMemoryError":
                    raise
                _record_failure(summary, journal, item, f"{type(row_exc).__name__}: {row_exc}")
                continue
            pairs.append(((item, inputs), result, time.perf_counter() - t1))
    for (item, inputs), result, seconds in pairs:
        record = _write_result(task, item, result, options, seconds, resolved, device_info, journal)
        summary.done += 1
        summary.records.append(record)


def _jsonable_inputs(item: WorkItem) -> dict:
    return {key: value for key, value in item.inputs.items() if isinstance(value, (str, int, float, bool, type(None)))}


def _write_result(task: Task, item: WorkItem, result: Any, options: dict, seconds: float, resolved,
                  device_info: dict, journal: Path | None) -> dict:
    record: dict[str, Any] = {"id": item.id, "index": item.index, "status": "ok", **_jsonable_inputs(item)}
    if task.name == "ask":
        record["answer"] = result
    else:
        assert item.output is not None
        save_image(result, item.output)
        sidecar = {
            "id": item.id,
            "task": task.name,
            **_jsonable_inputs(item),
            "output": item.output.name,
            "size": list(result.size),
            "mode": result.mode,
            "seed": item.seed,
            "parameters": options,
            **device_info,
            "timings": {"seconds": round(seconds, 4)},
            "uniedit_version": __version__,
        }
        write_json(item.output.with_suffix(".json"), sidecar)
        record["output"] = item.output.name
        record["seed"] = item.seed
    record["seconds"] = round(seconds, 4)
    if journal is not None:
        append_jsonl(journal, record)
    return record


def _record_failure(summary: RunSummary, journal: Path | None, item: WorkItem, reason: str) -> None:
    summary.failed.append(Failure(item.id, item.index, reason))
    if journal is not None:
        append_jsonl(journal, {"id": item.id, "index": item.index, "status": "failed", "reason": reason,
                               **_jsonable_inputs(item)})


def _write_manifest(out_dir: Path, items: list[WorkItem], task: Task) -> None:
    records = journal_records(out_dir)
    order: dict[str, int] = {}
    for item in items:
        order.setdefault(item.id, item.index)
    ok = sorted((r for r in records.values() if r.get("status") == "ok"), key=lambda r: order.get(str(r["id"]), r.get("index", 0)))
    failed = sorted((r for r in records.values() if r.get("status") == "failed" and str(r["id"]) in order),
                    key=lambda r: order[str(r["id"])])
    write_text(out_dir / "results.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ok))
    failed_path = out_dir / "failed.jsonl"
    if failed:
        write_text(failed_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in failed))
    elif failed_path.exists():
        failed_path.unlink()
    _write_index(out_dir, task, ok, failed)


def _write_index(out_dir: Path, task: Task, ok: list[dict], failed: list[dict]) -> None:
    """index.html: what a person opens to look at a batch (inputs, outputs, failures)."""
    from uniedit_cli.gallery import write_gallery

    text_field = {"edit": "instruction", "generate": "prompt", "ask": "question"}[task.name]
    columns = ["id"] + (["source"] if task.name in ("edit", "ask") else []) + [text_field]
    columns += ["answer"] if task.name == "ask" else ["output"]
    rows = []
    for record in ok + failed:
        row = {"id": {"text": record["id"]}, text_field: {"text": record.get(text_field, "")}}
        if "source" in columns:
            image = record.get("image")  # a bad row's may be any JSON value
            row["source"] = {"image": image} if isinstance(image, str) and image and Path(image).exists() else {"text": image if image is not None else ""}
        if record.get("status") == "failed":
            row[columns[-1]] = {"text": f"failed: {record.get('reason', '')}", "bad": True}
        elif task.name == "ask":
            row["answer"] = {"text": record.get("answer", "")}
        else:
            row["output"] = {"image": out_dir / record["output"]}
        rows.append(row)
    write_gallery(out_dir / "index.html", title=f"uniedit {task.name}: {out_dir.name}", columns=columns, rows=rows,
                  meta=f"{len(ok)} done, {len(failed)} failed")


def nothing_succeeded(summary: RunSummary) -> bool:
    """A batch where rows failed and none is done, this run or an earlier one: the command fails
    (exit 1). Every rank holds the same counts after :func:`run` (they are gathered)."""
    return bool(summary.failed) and summary.done == 0 and summary.skipped == 0


def _count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        return sum(1 for line in fh if line.strip())


def batch_exit_code(summary: RunSummary | None, out_dir: Path) -> int:
    """The exit code of a ``--batch`` command: 1 when rows failed and none succeeded (counting
    rows done by an earlier run), else 0; a partial failure is reported, not an error.

    Under ``--num-processes`` / ``--accelerate-config`` the ranks exit 0 here (a rank exiting
    non-zero makes ``accelerate launch`` print a traceback) and the process the user started,
    which holds no summary, decides from the manifest rank 0 wrote after every rank finished:
    ``results.jsonl`` (every finished row of this folder's run) and ``failed.jsonl``."""
    from uniedit_cli.launch import inside_launch

    if summary is None:  # the work ran in launched children, which all finished (exit 0)
        return int(_count_lines(out_dir / "failed.jsonl") > 0 and _count_lines(out_dir / "results.jsonl") == 0)
    if inside_launch():
        return 0
    return int(nothing_succeeded(summary))


def report(summary: RunSummary, console, *, out_dir: Path | None, what: str) -> None:
    """A short closing summary on stderr: counts, time, where things are, why rows failed."""
    from rich.markup import escape

    parts = [f"[green]{summary.done} {what}[/]"]
    if summary.skipped:
        parts.append(f"{summary.skipped} already done (skipped)")
    if summary.failed:
        parts.append(f"[red]{len(summary.failed)} failed[/]")
    where = f" in {escape(str(out_dir))}" if out_dir else ""
    console.print(f"{', '.join(parts)}{where} ({summary.seconds:.1f} s, model load {summary.load_seconds:.1f} s)")
    if summary.failed:
        for failure in summary.failed[:5]:
            console.print(f"  [red]x[/] {escape(failure.id)}: {escape(failure.reason)}")
        if len(summary.failed) > 5:
            console.print(f"  ... and {len(summary.failed) - 5} more" + (f" (see {escape(str(out_dir / 'failed.jsonl'))})" if out_dir else ""))
