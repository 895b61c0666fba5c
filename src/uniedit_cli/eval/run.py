"""``uniedit eval``, end to end: a suite's samples -> the model's outputs -> (judge replies) ->
metrics -> results.json, samples.jsonl and report.html.

Outputs are made by the one batch runner (``uniedit_cli.runner``), so evaluation inherits
everything batch mode does: the model loads once, rows run in batches, every output is written
as soon as it exists, a rerun resumes (finished samples are skipped), bad rows are recorded and
skipped, and ``--num-processes N`` splits the samples across ranks with accelerate. Judge
questions (GEdit, ImgEdit, KRIS, RISE, uniedit-bench) go through the same runner with the judge
model, so they are cached and resumable too. Metrics run once, on rank 0, batched.

Folder layout under ``--out``::

    results.json  samples.jsonl  report.html     what users read (eval.report)
    outputs/      the model's outputs: <id>.png + .json, or answers in results.jsonl (runner)
    judge/        the judge's replies (runner)
    inputs/       benchmark images extracted from parquet shards

``--predictions FILE.jsonl`` replaces the model: rows ``{"id", "answer"}`` (text suites) or
``{"id", "image"}`` (image suites), where ``id`` is the suite's own sample id.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uniedit_cli.errors import UsageError
from uniedit_cli.eval.suites import SUITES, suite_class
from uniedit_cli.eval.suites.base import Sample, Suite

# The registry's judge (README: "qwen2.5-vl-7b ... ask (the judge of synth / eval)").
DEFAULT_JUDGE = "qwen2.5-vl-7b"
OUTPUTS_DIR, JUDGE_DIR, INPUTS_DIR = "outputs", "judge", "inputs"
# A chained sample (MagicBrush multi-turn: each turn edits the model's own previous output) has
# no input image of its own and names the sample before it in ``meta["previous"]``; chained
# samples run in rounds, each after the outputs it needs exist.
PREVIOUS_KEY = "previous"

_ID_ALIASES = ("id", "question_id", "questionId", "sample_id", "key")
_ANSWER_ALIASES = ("answer", "prediction", "pred", "text", "response", "output")
_IMAGE_ALIASES = ("image", "output", "output_image", "edited_image", "path", "image_path")


@dataclass
class EvalConfig:
    """Everything one ``uniedit eval`` run needs (the command fills it from its options)."""

    suite: str
    out: Path
    model: str | None = None
    data: Path | None = None
    predictions: Path | None = None
    metrics: list[str] | None = None  # None: the suite's defaults
    judge: str | None = None
    family: str | None = None
    limit: int | None = None
    suite_options: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # generation knobs the user set
    metric_weights: dict[str, Any] = field(default_factory=dict)  # clip_weights / dino_weights for image metrics
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    num_processes: int | None = None
    accelerate_config: str | None = None
    argv: list[str] | None = None  # the command line, for the launcher


@dataclass
class EvalOutcome:
    out: Path
    results: dict | None = None  # None in ranks other than 0, and in a parent whose children did the work
    exit_code: int = 0


# --- choosing what to run ------------------------------------------------------------------

def get_suite_class(name: str) -> type[Suite]:
    if name not in SUITES:
        close = difflib.get_close_matches(name, list(SUITES), n=3)
        raise UsageError(f"unknown suite {name!r}." + (f" Did you mean {', '.join(close)}?" if close else ""),
                         hint=f"Suites: {', '.join(SUITES)}.")
    try:
        return suite_class(name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"suite {name!r} is not available in this build ({exc}).") from None


def select_metrics(suite: Suite | type[Suite], requested: list[str] | None) -> tuple[list[str], bool]:
    """``(metrics, explicit)``: the suite's defaults, or the requested subset checked against
    what the suite can compute."""
    if not requested:
        return list(suite.default_metrics or suite.all_metrics), False
    if requested == ["all"]:
        return list(suite.all_metrics), True
    unknown = [m for m in requested if m not in suite.all_metrics]
    if unknown:
        raise UsageError(f"--metrics: {', '.join(map(repr, unknown))} not computed by suite {suite.name!r}.",
                         hint=f"Its metrics: {', '.join(suite.all_metrics)} (or 'all').")
    return list(dict.fromkeys(requested)), True


def check_suite_options(suite_cls: type[Suite], options: dict[str, str]) -> None:
    known = getattr(suite_cls, "option_help", None)
    if known is None:
        return
    unknown = [key for key in options if key not in known]
    if unknown:
        listing = "; ".join(f"{k}: {v}" for k, v in known.items()) or "none"
        raise UsageError(f"--suite-option {', '.join(unknown)}: not an option of suite {suite_cls.name!r}.",
                         hint=f"Its options: {listing}.")


def judge_metrics_of(suite: Suite | type[Suite]) -> tuple[str, ...]:
    """Metrics that need the judge: all of a judged suite's, or those a suite lists."""
    if suite.needs_judge:
        return tuple(suite.all_metrics)
    return tuple(getattr(suite, "judge_metrics", ()))


def preflight_metrics(suite: Suite, samples: list[Sample], metrics: list[str], device: str) -> None:
    """Before any output is generated, the weights the metrics need must be loadable, or the
    run stops now with what to place where: a suite's own ``preflight(samples, metrics)``
    (GenEval: detector, CLIP), else a suite with an image ``scorer`` (MagicBrush: CLIP, DINO)
    loads its models (kept for scoring in this process)."""
    hook = getattr(suite, "preflight", None)
    if hook is not None:
        hook(samples, metrics)
        return
    scorer = getattr(suite, "scorer", None)
    if callable(scorer):
        scorer(device).preload(metrics)


# --- predictions made elsewhere ------------------------------------------------------------

@dataclass
class Predictions:
    outputs: dict[str, Any]
    unknown_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)


def read_predictions(path: Path, suite: Suite, samples: list[Sample]) -> Predictions:
    """Map sample id -> answer (text suites) or image path (image suites). Rows for ids the
    suite does not have, duplicates and malformed lines are counted and reported, not fatal."""
    from uniedit_cli.io import read_jsonl

    path = Path(path).expanduser()
    if path.is_dir():
        reader = getattr(suite, "predictions_from_folder", None)
        if reader is None:
            raise UsageError(f"--predictions {str(path)!r} is a folder.",
                             hint="Pass a JSONL file of {\"id\", \"answer\"} or {\"id\", \"image\"} rows.")
        return Predictions(outputs=reader(path, samples))
    if not path.exists():
        raise UsageError(f"--predictions {str(path)!r}: no such file.")
    known = {sample.id for sample in samples}
    image_suite = suite.output_kind == "image"
    fields = _IMAGE_ALIASES if image_suite else _ANSWER_ALIASES
    result = Predictions(outputs={})
    for line, row, error in read_jsonl(path):
        if error is not None or row is None:
            result.bad_lines.append(f"line {line}: {error}")
            continue
        key = next((row[name] for name in _ID_ALIASES if name in row), None)
        value = next((row[name] for name in fields if name in row), None)
        if key is None or value is None:
            want = "image" if image_suite else "answer"
            result.bad_lines.append(f"line {line}: needs \"id\" and \"{want}\" (has {', '.join(row) or 'nothing'})")
            continue
        key = str(key)
        if key not in known:
            result.unknown_ids.append(key)
            continue
        if key in result.outputs:
            result.duplicate_ids.append(key)
        if image_suite:
            image = Path(str(value)).expanduser()
            value = str(image if image.is_absolute() else path.parent / image)
        elif not isinstance(value, str):
            value = str(value)
        result.outputs[key] = value
    if not result.outputs:
        detail = f" ({result.bad_lines[0]})" if result.bad_lines else (
            f" (ids such as {result.unknown_ids[0]!r} are not sample ids of {suite.name})" if result.unknown_ids else "")
        raise UsageError(f"--predictions {str(path)!r} has no usable rows{detail}.",
                         hint=f"Rows look like {{\"id\": <{suite.name} sample id>, "
                              f"\"{'image' if image_suite else 'answer'}\": ...}}.")
    return result


# --- generating with the model under test ---------------------------------------------------

def _generation_task(kind: str):
    from uniedit_cli import runner

    return runner.make_task(kind)


def item_ids(samples: list[Sample]) -> dict[str, str]:
    """Sample id -> a file-safe runner id, unique even when two ids clean to the same name."""
    from uniedit_cli.eval.suites.loading import safe_name

    out: dict[str, str] = {}
    used: set[str] = set()
    for sample in samples:
        candidate = safe_name(sample.id)
        if candidate in used:
            candidate = f"{candidate}-{hashlib.sha1(sample.id.encode('utf-8')).hexdigest()[:8]}"
        used.add(candidate)
        out[sample.id] = candidate
    return out


def _previous(sample: Sample) -> str | None:
    parent = sample.meta.get(PREVIOUS_KEY)
    return str(parent) if parent and not sample.inputs.get("image") else None


def _rounds(samples: list[Sample]) -> list[list[int]]:
    """Sample indices grouped by chain depth: round 0 needs no earlier output; round r edits the
    output of a round r-1 sample."""
    index = {sample.id: i for i, sample in enumerate(samples)}
    depth: dict[int, int] = {}

    def depth_of(i: int, seen: tuple = ()) -> int:
        if i in depth:
            return depth[i]
        parent = _previous(samples[i])
        if parent is None or parent not in index or index[parent] in seen:
            depth[i] = 0
        else:
            depth[i] = depth_of(index[parent], seen + (i,)) + 1
        return depth[i]

    rounds: dict[int, list[int]] = {}
    for i in range(len(samples)):
        rounds.setdefault(depth_of(i), []).append(i)
    return [rounds[r] for r in sorted(rounds)]


def generate_outputs(samples: list[Sample], *, task_kind: str, resolved, options: dict, config: EvalConfig,
                     console) -> tuple[dict[str, Any], dict[str, str]]:
    """Run the model on every sample through the batch runner; returns (sample id -> answer or
    image path, sample id -> why it has no output)."""
    from uniedit_cli import runner

    gen_dir = config.out / OUTPUTS_DIR
    task = _generation_task(task_kind)
    ids = item_ids(samples)
    known = {sample.id for sample in samples}
    outputs: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for round_indices in _rounds(samples):
        items = []
        for i in round_indices:
            sample = samples[i]
            inputs = dict(sample.inputs)
            error = None
            parent = _previous(sample)
            if parent is not None:
                if parent not in known:
                    error = f"its previous turn {parent!r} is not a sample of this run"
                elif parent in outputs:
                    inputs["image"] = outputs[parent]
                else:
                    error = f"its previous turn {parent!r} has no output ({failures.get(parent, 'not generated')})"
            if error is None and task_kind in ("edit", "ask") and not inputs.get("image"):
                error = "the benchmark row has no input image"
            if error is None and not str(inputs.get(runner.TEXT_FIELD[task_kind]) or "").strip():
                error = f"the benchmark row has an empty {runner.TEXT_FIELD[task_kind]}"
            items.append(runner.WorkItem(
                id=ids[sample.id], index=i, inputs=inputs, seed=config.seed + i,
                output=gen_dir / f"{ids[sample.id]}.png" if task_kind != "ask" else None, error=error,
            ))
        summary = runner.run(task, items, resolved=resolved, options=options, out_dir=gen_dir, device=config.device,
                             dtype=config.dtype, batch_size=config.batch_size, resume=True, console=console)
        if _main_process():
            runner.report(summary, console, out_dir=gen_dir, what=runner.DONE_WORD[task_kind])
        records = runner.journal_records(gen_dir)
        for i in round_indices:
            sample = samples[i]
            record = records.get(ids[sample.id])
            if record is None:
                failures[sample.id] = "not generated"
            elif record.get("status") == "ok":
                outputs[sample.id] = record["answer"] if task_kind == "ask" else str(gen_dir / record["output"])
            else:
                failures[sample.id] = str(record.get("reason", "failed"))
    return outputs, failures


# --- the judge --------------------------------------------------------------------------------

def _judge_item_id(query, resolved) -> str:
    """Cache key of one judge question: the query id plus a digest of the judge model and what
    it sees (the prompt and the image files' paths, sizes and times), so re-scoring other
    outputs, or with another judge, into the same folder never reuses a stale reply."""
    from uniedit_cli.eval.suites.loading import safe_name

    digest = hashlib.sha1(f"{resolved.display}\n{resolved.location}\n{query.prompt}".encode("utf-8"))
    for image in query.images:
        digest.update(str(image).encode("utf-8"))
        try:
            stat = os.stat(image)
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(b"missing")
    return f"{safe_name(query.id)[:100]}-{digest.hexdigest()[:10]}"


def run_judge(queries: list, *, resolved, config: EvalConfig, console) -> dict[str, str]:
    """Ask the judge every query through the batch runner; returns query id -> reply (a query
    whose images cannot be read is left out and reported by the suite)."""
    from uniedit_cli import runner
    from uniedit_cli.eval.suites.judged import prepare_judge_item

    if not queries:
        return {}
    judge_dir = config.out / JUDGE_DIR
    task = runner.make_task("ask", prepare=prepare_judge_item)
    ids = {}
    items = []
    for i, query in enumerate(queries):
        ids[query.id] = _judge_item_id(query, resolved)
        inputs: dict[str, Any] = {"image": query.images[0], "question": query.prompt}
        if len(query.images) > 1:
            inputs["image2"] = query.images[1]
        items.append(runner.WorkItem(id=ids[query.id], index=i, inputs=inputs, seed=0))
    summary = runner.run(task, items, resolved=resolved, options=resolved.options(), out_dir=judge_dir,
                         device=config.device, dtype=config.dtype, batch_size=config.batch_size, resume=True,
                         console=console)
    if _main_process():
        runner.report(summary, console, out_dir=judge_dir, what="judged")
    records = runner.journal_records(judge_dir)
    replies = {}
    for query in queries:
        record = records.get(ids[query.id])
        if record is not None and record.get("status") == "ok":
            replies[query.id] = record["answer"]
    return replies


# --- the run ----------------------------------------------------------------------------------

def _note(console, text: str) -> None:
    from rich.markup import escape

    console.print(f"[yellow]note:[/] {escape(text)}")


def _inside_launch() -> bool:
    from uniedit_cli import launch

    return launch.inside_launch()


def _main_process() -> bool:
    from uniedit_cli import launch

    if not launch.inside_launch():
        return True
    return launch.partial_state().is_main_process


def evaluate(config: EvalConfig, console=None) -> EvalOutcome:
    """Run one evaluation; see the module docstring. Usage problems raise UsageError before any
    model loads or any rank starts."""
    from uniedit_cli import launch, registry, runner

    if console is None:
        from uniedit_cli.commands.common import error_console

        console = error_console()
    started = time.perf_counter()
    suite_cls = get_suite_class(config.suite)
    if (config.model is None) == (config.predictions is None):
        raise UsageError("pass exactly one of --model (generate the outputs) and --predictions FILE.jsonl "
                         "(score outputs made elsewhere).",
                         hint=f"Example: uniedit eval --suite {config.suite} --model MODEL --out results/{config.suite}.")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; eval results go to a folder.", hint="Pass a folder path.")
    if config.predictions is not None and not Path(config.predictions).expanduser().exists():
        raise UsageError(f"--predictions {str(config.predictions)!r}: no such file.")  # before any data is read
    check_suite_options(suite_cls, config.suite_options)
    # the suite first: its defaults may depend on the data (MagicBrush without captions drops clip-t)
    suite_options: dict[str, Any] = {"cache_dir": str(out / INPUTS_DIR), "limit": config.limit,
                                     **{k: v for k, v in config.metric_weights.items() if v is not None},
                                     **config.suite_options}
    suite = suite_cls(config.data, **suite_options)
    metrics, explicit = select_metrics(suite, config.metrics)

    resolved = None
    gen_options: dict[str, Any] = {}
    if config.model is not None:
        resolved = registry.resolve(config.model, config.family)
        resolved.require(suite_cls.task)
        gen_options = resolved.options(config.overrides)
        ignored = sorted(k for k in config.overrides if k not in registry.FAMILY_KNOBS[resolved.family])
        if ignored and not launch.inside_launch():
            _note(console, f"{', '.join('--' + k.replace('_', '-') for k in ignored)} ha{'s' if len(ignored) == 1 else 've'} "
                           f"no effect on {resolved.family} models; ignored.")
    elif config.overrides and not launch.inside_launch():
        _note(console, "generation flags have no effect with --predictions (no model runs); ignored.")

    needs_judge = [m for m in metrics if m in judge_metrics_of(suite)]
    judge_resolved = None
    if needs_judge:
        if config.judge is None and not suite.needs_judge and not explicit:
            # optional judge metrics (uniedit-bench's judge accuracy) run only when asked for
            metrics = [m for m in metrics if m not in needs_judge]
            if not launch.inside_launch():
                one = len(needs_judge) == 1
                _note(console, f"{', '.join(needs_judge)} {'needs' if one else 'need'} a judge and "
                               f"{'is' if one else 'are'} left out: pass --judge {DEFAULT_JUDGE} (or another model that "
                               f"can ask) to compute {'it' if one else 'them'}.")
        else:
            judge_resolved = registry.resolve(config.judge or DEFAULT_JUDGE)
            judge_resolved.require(registry.ASK)
    elif config.judge is not None and not launch.inside_launch():
        _note(console, f"--judge has no effect: no selected metric of {suite_cls.name} is judged.")
    if not metrics:
        raise UsageError(f"no metric left to compute for suite {suite_cls.name!r}.",
                         hint=f"Pick some of: {', '.join(suite_cls.all_metrics)}.")

    samples = _unique(suite.samples(), console)
    if config.limit:
        samples = samples[:config.limit]
    if not samples:
        raise UsageError(f"suite {suite_cls.name!r} found no samples in --data {str(config.data)!r}.",
                         hint=suite_cls.data_help or None)
    if config.limit and not launch.inside_launch():
        _note(console, f"--limit {config.limit}: a subset of the benchmark; the numbers are not comparable with "
                       "published ones.")

    predictions = read_predictions(config.predictions, suite, samples) if config.predictions is not None else None
    if predictions is not None and not launch.inside_launch():
        _report_predictions(predictions, samples, console)

    if not launch.inside_launch():  # the process the user started checks once, before ranks start
        preflight_metrics(suite, samples, metrics, config.device)

    from uniedit_cli.models.base import preflight

    gen_task = _generation_task(suite_cls.task) if resolved is not None else None
    if resolved is not None:
        preflight(resolved)
        runner.check_resumable(out / OUTPUTS_DIR, gen_task, resolved, gen_options)
    if judge_resolved is not None:
        preflight(judge_resolved)
    if resolved is not None or judge_resolved is not None:
        code = launch.relaunch_if_requested(config.argv or [], num_processes=config.num_processes,
                                            accelerate_config=config.accelerate_config, device=config.device)
        if code is not None:
            return EvalOutcome(out=out, exit_code=code)

    if resolved is not None:
        outputs, failures = generate_outputs(samples, task_kind=suite_cls.task, resolved=resolved, options=gen_options,
                                             config=config, console=console)
        _free_memory()
    else:
        assert predictions is not None
        outputs, failures = predictions.outputs, {}

    judge = None
    if judge_resolved is not None:
        queries = suite.judge_queries(samples, outputs, metrics)
        judge = run_judge(queries, resolved=judge_resolved, config=config, console=console)
        _free_memory()

    if not _main_process():
        return EvalOutcome(out=out)

    result = suite.score(samples, outputs, metrics, device=config.device, judge=judge)
    from uniedit_cli.eval import report

    results = report.write_all(
        out, suite=suite, samples=samples, outputs=outputs, failures=failures, result=result, metrics=metrics,
        model=_model_label(resolved), model_location=resolved.location if resolved else None,
        predictions=str(config.predictions) if config.predictions is not None else None,
        judge=judge_resolved.display if judge_resolved is not None else None,
        config=_config_record(config, gen_options, metrics), seconds=time.perf_counter() - started,
    )
    return EvalOutcome(out=out, results=results)


def _unique(samples: list[Sample], console) -> list[Sample]:
    seen: set[str] = set()
    out = []
    duplicates = 0
    for sample in samples:
        sample.id = str(sample.id)
        if sample.id in seen:
            duplicates += 1
            continue
        seen.add(sample.id)
        out.append(sample)
    if duplicates and not _inside_launch():
        _note(console, f"{duplicates} benchmark rows repeat an earlier sample id; the first of each is kept.")
    return out


def _report_predictions(predictions: Predictions, samples: list[Sample], console) -> None:
    missing = sum(1 for sample in samples if sample.id not in predictions.outputs)
    if predictions.bad_lines:
        _note(console, f"{len(predictions.bad_lines)} prediction rows skipped: {predictions.bad_lines[0]}"
                       + (" ..." if len(predictions.bad_lines) > 1 else ""))
    if predictions.unknown_ids:
        _note(console, f"{len(predictions.unknown_ids)} prediction rows name ids that are not samples of this suite "
                       f"(e.g. {predictions.unknown_ids[0]!r}); ignored.")
    if predictions.duplicate_ids:
        _note(console, f"{len(predictions.duplicate_ids)} ids appear more than once; the last row of each is used.")
    if missing:
        _note(console, f"{missing} of {len(samples)} samples have no prediction; each is reported in samples.jsonl.")


def _free_memory() -> None:
    """The model under test and the judge run one after the other: give the first one's memory back."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _model_label(resolved) -> str | None:
    """A registry name as the registry spells it; anything else (a tuned run's final/, a hub id)
    as the user passed it, so a tuned model is not labelled with its base model's name."""
    from uniedit_cli import registry

    if resolved is None:
        return None
    return resolved.display if registry.get_spec(resolved.name) is not None else resolved.name


def _config_record(config: EvalConfig, gen_options: dict, metrics: list[str]) -> dict:
    return {
        "suite": config.suite, "data": str(config.data) if config.data is not None else None,
        "model": config.model, "family": config.family, "predictions": str(config.predictions) if config.predictions else None,
        "judge": config.judge, "metrics": metrics, "limit": config.limit, "suite_options": config.suite_options,
        "seed": config.seed, "generation": gen_options, "metric_weights": config.metric_weights,
        "batch_size": config.batch_size, "device": config.device, "dtype": config.dtype,
        "num_processes": config.num_processes,
    }
