"""``uniedit edit``: image + instruction -> edited image (one, or a JSONL batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from uniedit_cli.commands import common

HELP = "Edit an image with an instruction (or a batch of them)."
EPILOG = """\
[bold]Examples[/]

  uniedit edit photo.png "make the sky stormy" --model instruct-pix2pix --out out.png

  uniedit edit photo.png "turn the cube red" --model ip2p-tiny --out out.png   [dim]# tiny model, no download[/]

  uniedit edit --batch edits.jsonl --model flux-kontext --out edits/ --num-processes 2

[bold]Batch file[/]: one JSON object per line, {"image": "a.png", "instruction": "..."}, optional "id" and "seed" (an integer);
relative image paths are read from the batch file's folder. Each result is written as it finishes
(<id>.png + <id>.json); a bad row is reported and skipped; rerunning the command skips finished rows.
"""


@common.handle_errors
def edit(
    model: common.ModelOpt,
    image: Annotated[Optional[Path], typer.Argument(help="The image to edit.", show_default=False)] = None,
    instruction: Annotated[Optional[str], typer.Argument(help="The edit instruction.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output PNG (single edit) or folder (--batch).")] = None,
    batch: Annotated[Optional[Path], typer.Option("--batch", help="A JSONL file of {image, instruction} rows.")] = None,
    family: common.FamilyOpt = None,
    seed: common.SeedOpt = 0,
    steps: common.StepsOpt = None,
    guidance: common.GuidanceOpt = None,
    image_guidance: common.ImageGuidanceOpt = None,
    size: common.SizeOpt = None,
    batch_size: common.BatchSizeOpt = 4,
    device: common.DeviceOpt = common.Device.auto,
    dtype: common.DTypeOpt = common.DType.auto,
    num_processes: common.NumProcessesOpt = None,
    accelerate_config: common.AccelerateConfigOpt = None,
) -> None:
    from uniedit_cli import registry, runner
    from uniedit_cli.errors import UsageError
    from uniedit_cli.io import load_image

    resolved = registry.resolve(model, family)
    resolved.require(registry.EDIT)
    overrides = common.generation_overrides(steps=steps, guidance=guidance, image_guidance=image_guidance, size=size)
    runner.check_options(resolved, overrides)
    if batch is not None:
        if image is not None or instruction is not None:
            raise UsageError("pass either IMAGE INSTRUCTION or --batch FILE, not both.")
        out_dir = out or Path("uniedit-out") / "edit"
        items = []
        for line, row, error in runner.read_batch(batch, required=("image", "instruction"),
                                                   aliases={"instruction": ("edit_prompt", "prompt")}, int_fields=("seed",)):
            row = row or {}
            item_id = runner.safe_id(row["id"]) if "id" in row else f"{line:06d}"
            items.append(runner.WorkItem(
                id=item_id, index=line,
                inputs={"image": row.get("image"), "instruction": row.get("instruction")},
                seed=int(row["seed"]) if isinstance(row.get("seed"), int) else seed + line - 1,
                output=out_dir / f"{item_id}.png", error=error,
            ))
        runner.assign_ids(items)
    else:
        if image is None or instruction is None:
            raise UsageError("missing IMAGE and INSTRUCTION.", hint="Example: uniedit edit photo.png \"make the sky stormy\". Or pass --batch FILE.jsonl.")
        if not instruction.strip():
            raise UsageError("the instruction is empty.", hint="Say what to change, e.g. \"make the sky stormy\".")
        load_image(image)  # a bad input file fails here, before any model loads
        target = out or Path(f"{image.stem}-edited.png")
        if target.is_dir() or str(target).endswith(("/", "\\")):
            target = target / f"{image.stem}-edited.png"
        if target.suffix.lower() != ".png":
            raise UsageError(f"--out {str(target)!r}: outputs are PNG files.", hint="Use a path ending in .png.")
        out_dir = target.parent
        items = [runner.WorkItem(id=target.stem, index=1, inputs={"image": str(image), "instruction": instruction},
                                 seed=seed, output=target)]

    task = runner.make_task("edit")
    summary = common.execute(
        task, items, resolved=resolved,
        overrides=overrides,
        out_dir=out_dir, batch_mode=batch is not None, device=device.value, dtype=dtype.value,
        batch_size=batch_size, num_processes=num_processes, accelerate_config=accelerate_config, what="edited",
    )
    if batch is None and summary is not None and not summary.failed:
        common.error_console().print(f"wrote {items[0].output} (+ .json)")
    common.single_failure(summary if batch is None else None)
    if batch is not None and runner.batch_exit_code(summary, out_dir):
        raise typer.Exit(1)  # no row succeeded; the summary above says why

