"""``uniedit eval``: a model (or predictions made elsewhere) on a benchmark suite -> metrics + report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from uniedit_cli.commands import common

HELP = "Evaluate a model on a benchmark suite (metrics + report), or compare earlier runs."
EPILOG = """\
[bold]Examples[/]

  uniedit eval --suite magicbrush --model runs/janus-uniedit/final --data /data/magicbrush-test --out results/mb

  uniedit eval --suite magicbrush --model instruct-pix2pix --data /data/magicbrush-test --suite-option mode=multi --out results/mb-multi

  uniedit eval --suite gqa --model janus-pro-1b --out results/gqa   [dim]# lmms-lab/GQA from the hub cache[/]

  uniedit eval --suite uniedit-bench --model runs/janus-uniedit/final --data uniedit-data/ --out results/ub --judge qwen2.5-vl-7b

  uniedit eval --suite uniedit-bench --model janus-tiny --data uniedit-data/ --out results/ub-tiny   [dim]# no downloads[/]

  uniedit eval --suite gedit --model flux-kontext --out results/gedit --judge qwen2.5-vl-7b --num-processes 8

  uniedit eval --suite vqav2 --predictions answers.jsonl --data data/vqav2 --out results/vqav2   [dim]# no model loads[/]

  uniedit eval --compare results/mb results/mb-baseline

[bold]Suites[/]: magicbrush, gqa, vqav2, mme, geneval, gedit, imgedit, kris, rise, uniedit-bench
(`uniedit eval --list` shows each one's metrics and the data it needs; gqa, vqav2, mme and gedit
read their hub dataset from the hub cache when --data is left out).

[bold]Output[/] in --out: results.json (metrics, n, convention, approximate + why, config, versions),
samples.jsonl (one row per sample with its own scores), report.html (worst samples first), and the
model's outputs in outputs/ (rerun the same command to resume; --num-processes N splits the work).

[bold]--predictions[/]: one JSON object per line, {"id": ..., "answer": "..."} for question suites or
{"id": ..., "image": "out/1.png"} for image suites, where id is the suite's own sample id.
"""


def _parse_metrics(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    return names or None


@common.handle_errors
def eval(  # noqa: A001 - the command is called eval
    runs: Annotated[Optional[List[Path]], typer.Argument(help="With --compare: the result folders to compare.",
                                                          show_default=False)] = None,
    suite: Annotated[Optional[str], typer.Option("--suite", "-s", help="The benchmark suite (see below).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="The model under test: registry name, hub id or local folder.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="The benchmark's data (folder or file; see the suite's message when missing).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Results folder (default: uniedit-out/eval/SUITE).")] = None,
    predictions: Annotated[Optional[Path], typer.Option("--predictions", help="Score outputs made elsewhere: a JSONL of {id, answer} or {id, image} rows (no model loads).")] = None,
    metrics: Annotated[Optional[str], typer.Option("--metrics", help="Comma-separated subset of the suite's metrics, or 'all' (default: the suite's headline metrics).")] = None,
    judge: Annotated[Optional[str], typer.Option("--judge", help="Judge model (a model that can ask). Judged suites (gedit, imgedit, kris, rise) use qwen2.5-vl-7b when it is left out; optional judge metrics (uniedit-bench's judge_acc) run only with --judge or when --metrics names them.")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Print a table comparing the result folders given as arguments.")] = False,
    list_suites: Annotated[bool, typer.Option("--list", help="List the suites: task, metrics, convention, and what data each needs.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N samples (a quick look; numbers are then not comparable).")] = None,
    suite_option: Annotated[Optional[List[str]], typer.Option("--suite-option", help="KEY=VALUE passed to the suite (e.g. split=..., detector=...); repeatable.")] = None,
    clip_weights: Annotated[Optional[Path], typer.Option("--clip-weights", help="CLIP ViT-B/32 checkpoint for the clip-* image metrics (default: the hub cache).")] = None,
    dino_weights: Annotated[Optional[Path], typer.Option("--dino-weights", help="DINO ViT-S/16 checkpoint for the dino metrics (default: the hub / torch hub cache).")] = None,
    family: common.FamilyOpt = None,
    seed: common.SeedOpt = 0,
    steps: common.StepsOpt = None,
    guidance: common.GuidanceOpt = None,
    image_guidance: common.ImageGuidanceOpt = None,
    size: common.SizeOpt = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", min=1, help="Longest answer, in tokens (question suites).")] = None,
    batch_size: common.BatchSizeOpt = 4,
    device: common.DeviceOpt = common.Device.auto,
    dtype: common.DTypeOpt = common.DType.auto,
    num_processes: common.NumProcessesOpt = None,
    accelerate_config: common.AccelerateConfigOpt = None,
) -> None:
    from uniedit_cli.errors import UsageError

    console = common.error_console()
    if list_suites:
        _print_suites()
        return
    if compare:
        if suite is not None or model is not None or predictions is not None:
            raise UsageError("--compare takes only result folders.", hint="uniedit eval --compare results/a results/b")
        from rich.console import Console

        from uniedit_cli.eval.report import compare as compare_runs

        compare_runs(list(runs or []), Console(highlight=False, soft_wrap=True))
        return
    if runs:
        raise UsageError(f"unexpected argument {str(runs[0])!r}.",
                         hint="Result folders are compared with --compare; a run takes --suite and --model or --predictions.")
    if suite is None:
        from uniedit_cli.eval.suites import SUITES

        raise UsageError("missing --suite.", hint=f"Suites: {', '.join(SUITES)}.")

    for flag, path in (("--clip-weights", clip_weights), ("--dino-weights", dino_weights)):
        if path is not None and not path.expanduser().exists():  # before any model loads or generates
            raise UsageError(f"{flag} {str(path)!r}: no such file or folder.",
                             hint="Pass a checkpoint file (or its folder), or leave the flag out to use the hub cache.")
    from uniedit_cli.eval.run import EvalConfig, evaluate

    config = EvalConfig(
        suite=suite, out=out or Path("uniedit-out") / "eval" / suite, model=model, data=data, predictions=predictions,
        metrics=_parse_metrics(metrics), judge=judge, family=family, limit=limit,
        suite_options=common.parse_key_values(suite_option, "--suite-option"), seed=seed,
        overrides=common.generation_overrides(steps=steps, guidance=guidance, image_guidance=image_guidance, size=size,
                                              max_new_tokens=max_new_tokens),
        metric_weights={"clip_weights": str(clip_weights) if clip_weights else None,
                        "dino_weights": str(dino_weights) if dino_weights else None},
        batch_size=batch_size, device=device.value, dtype=dtype.value, num_processes=num_processes,
        accelerate_config=accelerate_config, argv=common.invoked_argv(),
    )
    outcome = evaluate(config, console=console)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)
    if outcome.results is not None:
        _print_summary(outcome.results, outcome.out)


def _print_suites() -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from uniedit_cli.eval.suites import SUITES, suite_class

    table = Table(title="uniedit eval suites", show_lines=True)
    for column in ("suite", "task", "metrics (default first)", "convention", "data"):
        table.add_column(column, overflow="fold")
    for name in SUITES:
        cls = suite_class(name)
        metrics = ", ".join(cls.default_metrics) + "".join(f", ({m})" for m in cls.all_metrics if m not in cls.default_metrics)
        notes = cls.convention + (" [yellow](approximate)[/]" if cls.approximate else "") + (" [dim]judged[/]" if cls.needs_judge else "")
        table.add_row(name, cls.task, escape(metrics), notes, escape(cls.data_help))
    Console(highlight=False, soft_wrap=False).print(table)


def _print_summary(results: dict, out: Path) -> None:
    """The headline numbers on stdout (the rest of the run's chatter is on stderr)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{results['suite']}: {results.get('model') or 'predictions'}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in (results.get("metrics") or {}).items():
        table.add_row(escape(name), f"{value:.4f}" if isinstance(value, float) else str(value))
    console = Console(highlight=False, soft_wrap=True)
    console.print(table)
    console.print(f"n={results['n']} of {results['n_samples']} samples ({results['n_errors']} with errors); "
                  f"convention {escape(str(results.get('convention')))}"
                  + (f"; [yellow]approximate[/]: {escape(str(results.get('approximate_reason')))}" if results.get("approximate") else ""))
    if not results["n"]:
        console.print("[yellow]warning:[/] no sample could be scored; samples.jsonl says why for each.")
    console.print(f"wrote {escape(str(out / 'results.json'))}, samples.jsonl, report.html")
