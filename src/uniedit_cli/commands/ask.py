"""``uniedit ask``: image + question -> answer (one, or a JSONL batch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from uniedit_cli.commands import common

HELP = "Answer a question about an image (or a batch of them)."
EPILOG = """\
[bold]Examples[/]

  uniedit ask photo.png "what is on the wall?" --model qwen2.5-vl-7b

  uniedit ask photo.png "what color is the cube?" --model qwen2.5-vl-tiny   [dim]# tiny model, no download[/]

  uniedit ask --batch questions.jsonl --model janus-pro-1b --out answers/

[bold]Batch file[/]: one JSON object per line, {"image": "a.png", "question": "..."}, optional "id";
answers go to <out>/results.jsonl as {"id", "image", "question", "answer"}; reruns skip answered rows.
"""


@common.handle_errors
def ask(
    model: common.ModelOpt,
    image: Annotated[Optional[Path], typer.Argument(help="The image.", show_default=False)] = None,
    question: Annotated[Optional[str], typer.Argument(help="The question.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the answer as JSON (single) or the results folder (--batch).")] = None,
    batch: Annotated[Optional[Path], typer.Option("--batch", help="A JSONL file of {image, question} rows.")] = None,
    family: common.FamilyOpt = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", min=1, help="Longest answer, in tokens.")] = None,
    batch_size: common.BatchSizeOpt = 4,
    device: common.DeviceOpt = common.Device.auto,
    dtype: common.DTypeOpt = common.DType.auto,
    num_processes: common.NumProcessesOpt = None,
    accelerate_config: common.AccelerateConfigOpt = None,
) -> None:
    from uniedit_cli import registry, runner
    from uniedit_cli.errors import UsageError
    from uniedit_cli.io import load_image, write_json

    resolved = registry.resolve(model, family)
    resolved.require(registry.ASK)
    if batch is not None:
        if image is not None or question is not None:
            raise UsageError("pass either IMAGE QUESTION or --batch FILE, not both.")
        out_dir = out or Path("uniedit-out") / "ask"
        items = []
        for line, row, error in runner.read_batch(batch, required=("image", "question"), aliases={"question": ("prompt", "text")}):
            row = row or {}
            item_id = runner.safe_id(row["id"]) if "id" in row else f"{line:06d}"
            items.append(runner.WorkItem(id=item_id, index=line, inputs={"image": row.get("image"), "question": row.get("question")},
                                         seed=0, error=error))
        runner.assign_ids(items)
    else:
        if image is None or question is None:
            raise UsageError("missing IMAGE and QUESTION.", hint='Example: uniedit ask photo.png "what is on the wall?" --model qwen2.5-vl-7b.')
        if not question.strip():
            raise UsageError("the question is empty.")
        load_image(image)
        out_dir = None
        items = [runner.WorkItem(id="answer", index=1, inputs={"image": str(image), "question": question}, seed=0)]

    task = runner.make_task("ask")
    summary = common.execute(
        task, items, resolved=resolved, overrides=common.generation_overrides(max_new_tokens=max_new_tokens),
        out_dir=out_dir, batch_mode=batch is not None, device=device.value, dtype=dtype.value,
        batch_size=batch_size, num_processes=num_processes, accelerate_config=accelerate_config, what="answered",
    )
    if summary is None:
        if batch is not None and runner.batch_exit_code(summary, out_dir):
            raise typer.Exit(1)  # the launched ranks answered no row; rank 0's summary says why
        return
    if batch is None and summary.records:
        record = summary.records[0]
        typer.echo(record["answer"])
        if out is not None:
            write_json(out, {"model": resolved.display, "image": str(image), "question": question,
                             "answer": record["answer"], "seconds": record["seconds"]})
    elif batch is not None and summary.records and len(summary.records) <= 20:
        for record in summary.records:
            typer.echo(json.dumps({"id": record["id"], "answer": record["answer"]}, ensure_ascii=False))
    common.single_failure(summary if batch is None else None)
    if batch is not None and runner.batch_exit_code(summary, out_dir):
        raise typer.Exit(1)  # no row succeeded; the summary above says why

