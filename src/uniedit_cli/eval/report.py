"""What an eval run leaves behind, and ``--compare``.

- ``results.json``: suite, model, headline metrics (named as the benchmark names them), n,
  the convention the numbers follow, whether they are approximate and why, the resolved
  configuration and the versions of the packages that produced them.
- ``samples.jsonl``: one row per sample: id, the output (answer, or image path), its own metric
  values, and the error when it has no score.
- ``report.html``: an image grid (source, target, output, scores) of the worst samples first,
  through the same gallery writer as batch ``index.html``.
"""

from __future__ import annotations

import json
import math
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from uniedit_cli import __version__
from uniedit_cli.errors import UsageError
from uniedit_cli.io import write_json, write_text

RESULTS_FILE, SAMPLES_FILE, REPORT_FILE = "results.json", "samples.jsonl", "report.html"
REPORT_ROWS = 500  # report.html shows the worst samples; samples.jsonl has them all
VERSION_PACKAGES = ("uniedit", "torch", "torchvision", "transformers", "diffusers", "accelerate", "open_clip_torch",
                    "timm", "datasets", "pyarrow", "pillow", "numpy")
# distance-like metrics: a higher value is a worse sample (everything else: higher is better)
LOWER_IS_BETTER = ("l1", "l2", "l1_src", "l2_src", "edit_region_l1", "l1_to_target")
TARGET_KEYS = ("target", "target_image", "edited_image")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSION_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _relative(path: Any, out: Path) -> Any:
    """A path inside the run folder is written relative to it, so the folder can be moved."""
    if not isinstance(path, str):
        return path
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return path


def lower_is_better(metric: str, suite=None) -> bool:
    extra = tuple(getattr(suite, "lower_is_better", ()) or ())
    return metric in LOWER_IS_BETTER or metric in extra


def write_all(out: Path, *, suite, samples: list, outputs: dict[str, Any], failures: dict[str, str], result,
              metrics: list[str], model: str | None, model_location: str | None, predictions: str | None,
              judge: str | None, config: dict, seconds: float) -> dict:
    """Write results.json, samples.jsonl and report.html; returns the results.json content."""
    out.mkdir(parents=True, exist_ok=True)
    per_sample = {str(k): dict(v) for k, v in result.per_sample.items()}
    for sample in samples:
        row = per_sample.setdefault(sample.id, {"error": "not scored"})
        if sample.id in failures:  # the suite only sees a missing output; the runner knows why
            row["error"] = f"generation failed: {failures[sample.id]}"
    errors = sum(1 for sample in samples if per_sample[sample.id].get("error"))
    approximate = bool(getattr(suite, "approximate", False))
    results = {
        "suite": suite.name,
        "model": model,
        "model_location": model_location,
        "predictions": predictions,
        "judge": None if judge is None else {
            "model": judge,
            "prompts": "uniedit's own judge prompts (not the benchmark's GPT-4 judge or prompts)",
        },
        "metrics": _jsonable(result.metrics),
        "breakdown": _jsonable(result.breakdown),
        "n": result.n,
        "n_samples": len(samples),
        "n_errors": errors,
        "convention": getattr(suite, "convention", ""),
        # suites mixing conventions (MagicBrush + Emu Edit) label each number with its own
        "metric_conventions": _jsonable({m: c for m, c in (getattr(suite, "metric_conventions", None) or {}).items()
                                         if m in (result.metrics or {})}) or None,
        "approximate": approximate,
        "approximate_reason": getattr(suite, "approximate_reason", "") if approximate else "",
        "metrics_selected": metrics,
        "config": _jsonable(config),
        "suite_config": _jsonable(suite.config()) if callable(getattr(suite, "config", None)) else None,
        "versions": package_versions(),
        "uniedit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(seconds, 2),
        "files": {"samples": SAMPLES_FILE, "report": REPORT_FILE},
    }
    write_json(out / RESULTS_FILE, results)
    _write_samples(out, suite, samples, outputs, per_sample)
    write_report_html(out, suite=suite, samples=samples, outputs=outputs, per_sample=per_sample, metrics=metrics,
                      results=results)
    return results


def _output_key(suite) -> str:
    return "image" if getattr(suite, "output_kind", "") == "image" else "answer"


def _write_samples(out: Path, suite, samples: list, outputs: dict[str, Any], per_sample: dict[str, dict]) -> None:
    lines = []
    key = _output_key(suite)
    for sample in samples:
        output = outputs.get(sample.id)
        row: dict[str, Any] = {"id": sample.id, key: _relative(output, out) if key == "image" else output}
        row.update({k: v for k, v in per_sample[sample.id].items() if k not in ("id", key)})
        row["inputs"] = {k: _relative(v, out) for k, v in sample.inputs.items()}
        row["reference"] = {k: _relative(v, out) for k, v in sample.reference.items()}
        if sample.meta:
            row["meta"] = sample.meta
        lines.append(json.dumps(_jsonable(row), ensure_ascii=False) + "\n")
    write_text(out / SAMPLES_FILE, "".join(lines))


def _primary_metric(metrics: list[str], per_sample: dict[str, dict]) -> str | None:
    # a headline that is not per sample (MME's perception total) falls back to the sample's own verdict
    for metric in (*metrics, "correct", "accuracy", "score"):
        if any(isinstance(row.get(metric), (int, float)) for row in per_sample.values()):  # bool is an int
            return metric
    return None


def worst_first(samples: list, per_sample: dict[str, dict], metrics: list[str], suite=None) -> list:
    """Samples with errors first, then by the first selected metric, worst end first."""
    primary = _primary_metric(metrics, per_sample)
    descending = primary is not None and lower_is_better(primary, suite)

    def key(sample):
        row = per_sample.get(sample.id, {})
        value = row.get(primary) if primary else None
        if row.get("error") or not isinstance(value, (int, float)):
            return (0, 0.0)
        return (1, -float(value) if descending else float(value))

    return sorted(samples, key=key)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _image_cell(path: Any) -> dict:
    if isinstance(path, str) and path and Path(path).is_file():
        return {"image": path}
    return {"text": "(missing)" if path else "", "bad": bool(path)}


def write_report_html(out: Path, *, suite, samples: list, outputs: dict[str, Any], per_sample: dict[str, dict],
                      metrics: list[str], results: dict) -> Path:
    from uniedit_cli.gallery import write_gallery

    task = getattr(suite, "task", "")
    text_field = {"edit": "instruction", "generate": "prompt", "ask": "question"}.get(task, "input")
    has_target = any(any(k in s.reference for k in TARGET_KEYS) for s in samples)
    columns = ["id"]
    if task in ("edit", "ask"):
        columns.append("source")
    columns.append(text_field)
    if task == "edit" and has_target:
        columns.append("target")
    columns.append("answer" if task == "ask" else "output")
    if task == "ask":
        columns.append("expected")
    columns.append("scores")

    ordered = worst_first(samples, per_sample, metrics, suite)
    rows = []
    for sample in ordered[:REPORT_ROWS]:
        scores = per_sample.get(sample.id, {})
        row: dict[str, dict] = {"id": {"text": sample.id}}
        if "source" in columns:
            row["source"] = _image_cell(sample.inputs.get("image") or sample.reference.get("source"))
        row[text_field] = {"text": str(sample.inputs.get(text_field) or sample.meta.get(text_field) or "")}
        if "target" in columns:
            target = next((sample.reference[k] for k in TARGET_KEYS if sample.reference.get(k)), None)
            row["target"] = _image_cell(target) if target else {"text": ""}
        output = outputs.get(sample.id)
        if task == "ask":
            row["answer"] = {"text": "" if output is None else str(output)}
            expected = sample.reference.get("answer", sample.reference.get("answers", ""))
            row["expected"] = {"text": ", ".join(map(str, expected)) if isinstance(expected, list) else str(expected)}
        else:
            row["output"] = _image_cell(output) if output else {"text": "(none)", "bad": True}
        lines = [f"{k}: {_format(v)}" for k, v in scores.items()
                 if k != "error" and isinstance(v, (int, float, bool, str)) and len(str(v)) < 200]
        if scores.get("error"):
            lines.insert(0, f"error: {scores['error']}")
        row["scores"] = {"text": "\n".join(lines), "bad": bool(scores.get("error"))}
        rows.append(row)

    headline = ", ".join(f"{k} {_format(v)}" for k, v in (results.get("metrics") or {}).items())
    meta = [f"{headline}" if headline else "no metrics",
            f"n={results['n']} of {results['n_samples']} samples, {results['n_errors']} with errors",
            f"convention: {results.get('convention') or 'n/a'}"]
    if results.get("approximate"):
        meta.append(f"APPROXIMATE: {results.get('approximate_reason')}")
    if results.get("judge"):
        meta.append(f"judge: {results['judge']['model']} ({results['judge']['prompts']})")
    if len(samples) > REPORT_ROWS:
        meta.append(f"showing the {REPORT_ROWS} worst of {len(samples)} samples (all are in samples.jsonl)")
    else:
        meta.append("worst first")
    who = results.get("model") or f"predictions {results.get('predictions')}"
    return write_gallery(out / REPORT_FILE, title=f"uniedit eval: {suite.name} / {who}", columns=columns, rows=rows,
                         meta=" | ".join(meta))


# --- --compare ------------------------------------------------------------------------------

def load_results(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / RESULTS_FILE if folder.is_dir() else folder
    if not path.exists():
        raise UsageError(f"--compare: {str(folder)!r} has no {RESULTS_FILE}.",
                         hint="Pass folders written by `uniedit eval --out DIR`.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--compare: {str(path)!r} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict) or "metrics" not in data:
        raise UsageError(f"--compare: {str(path)!r} is not an eval results file.")
    return data


def run_labels(folders: list[Path]) -> list[str]:
    """The shortest trailing parts of each path that tell the runs apart (results/mb and
    results/mb-baseline -> mb, mb-baseline)."""
    parts = [Path(f).resolve().parts for f in folders]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(f) for f in folders]


def compare(folders: list[Path], console) -> list[dict]:
    """Print one table row per run: suite, model, n, every metric, convention (``*`` marks
    approximate numbers). Runs of different suites or conventions are flagged, not mixed silently."""
    from rich.markup import escape
    from rich.table import Table

    if not folders:
        raise UsageError("--compare needs at least one results folder.", hint="uniedit eval --compare results/a results/b")
    runs = [(Path(f), load_results(Path(f))) for f in folders]
    metric_names: list[str] = []
    for _, data in runs:
        for name in (data.get("metrics") or {}):
            if name not in metric_names:
                metric_names.append(name)
    table = Table(title="uniedit eval --compare", show_lines=False)
    for column in ("run", "suite", "model", "n", *metric_names, "convention"):
        table.add_column(column, justify="right" if column in metric_names or column == "n" else "left")
    for (_, data), label in zip(runs, run_labels([f for f, _ in runs])):
        mark = "*" if data.get("approximate") else ""
        who = data.get("model") or ("predictions" if data.get("predictions") else "?")
        if data.get("judge"):
            who += f" (judge {data['judge'].get('model')})"
        cells = [escape(label), escape(str(data.get("suite"))), escape(who), str(data.get("n", ""))]
        for name in metric_names:
            value = (data.get("metrics") or {}).get(name)
            cells.append("-" if value is None else _format(value) + mark)
        cells.append(escape(str(data.get("convention", ""))))
        table.add_row(*cells)
    console.print(table)
    suites = {data.get("suite") for _, data in runs}
    conventions = {data.get("convention") for _, data in runs}
    if len(suites) > 1:
        console.print(f"[yellow]note:[/] these runs are of different suites ({', '.join(sorted(map(str, suites)))}).")
    elif len(conventions) > 1:
        console.print("[yellow]note:[/] these runs follow different conventions; their numbers are not comparable.")
    if any(data.get("approximate") for _, data in runs):
        console.print("* approximate: " + "; ".join(sorted({str(d.get("approximate_reason")) for _, d in runs
                                                            if d.get("approximate")})))
    sizes = {data.get("n") for _, data in runs}
    if len(sizes) > 1:
        console.print("[yellow]note:[/] the runs scored different numbers of samples (n).")
    return [data for _, data in runs]
