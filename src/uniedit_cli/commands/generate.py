"""``uniedit generate``: prompt -> images (one prompt with -n samples, or a JSONL batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from uniedit_cli.commands import common

HELP = "Generate images from a text prompt (or a batch of prompts)."
EPILOG = """\
[bold]Examples[/]

  uniedit generate "a red cube left of a blue ball" --model janus-pro-1b -n 4 --out gen/

  uniedit generate "a red cube" --model janus-tiny -n 2 --out gen/   [dim]# tiny model, no download[/]

  uniedit generate --batch prompts.jsonl --model janus-pro-7b --out gen/ --num-processes 8

[bold]Batch file[/]: one JSON object per line, {"prompt": "..."}, optional "id" and "seed" (an integer);
each row's image is written as <id>.png + .json, or with -n N above 1 as <id>-<k>.png + .json,
k = 0 .. N-1; rerunning the command skips finished images.
"""


@common.handle_errors
def generate(
    model: common.ModelOpt,
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw.", show_default=False)] = None,
    num_images: Annotated[int, typer.Option("-n", "--num-images", min=1, help="Images per prompt.")] = 1,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (or a .png for a single image).")] = None,
    batch: Annotated[Optional[Path], typer.Option("--batch", help="A JSONL file of {prompt} rows.")] = None,
    family: common.FamilyOpt = None,
    seed: common.SeedOpt = 0,
    steps: common.StepsOpt = None,
    guidance: common.GuidanceOpt = None,
    size: common.SizeOpt = None,
    batch_size: common.BatchSizeOpt = 4,
    device: common.DeviceOpt = common.Device.auto,
    dtype: common.DTypeOpt = common.DType.auto,
    num_processes: common.NumProcessesOpt = None,
    accelerate_config: common.AccelerateConfigOpt = None,
) -> None:
    from uniedit_cli import registry, runner
    from uniedit_cli.errors import UsageError

    resolved = registry.resolve(model, family)
    resolved.require(registry.GENERATE)
    overrides = common.generation_overrides(steps=steps, guidance=guidance, size=size)
    runner.check_options(resolved, overrides)
    items: list[runner.WorkItem] = []
    if batch is not None:
        if prompt is not None:
            raise UsageError("pass either PROMPT or --batch FILE, not both.")
        out_dir = out or Path("uniedit-out") / "generate"
        for line, row, error in runner.read_batch(batch, required=("prompt",), aliases={"prompt": ("caption", "text")},
                                                   int_fields=("seed",)):
            row = row or {}
            row_id = runner.safe_id(row["id"]) if "id" in row else f"{line:06d}"
            base = int(row["seed"]) if isinstance(row.get("seed"), int) else seed + (line - 1) * num_images
            for k in range(num_images):
                item_id = row_id if num_images == 1 else f"{row_id}-{k}"
                items.append(runner.WorkItem(id=item_id, index=line * num_images + k, inputs={"prompt": row.get("prompt")},
                                             seed=base + k, output=out_dir / f"{item_id}.png", error=error))
        runner.assign_ids(items)
    else:
        if prompt is None or not prompt.strip():
            raise UsageError("the prompt is empty.", hint='Example: uniedit generate "a red cube left of a blue ball" --model janus-pro-1b.')
        target = out or Path("uniedit-out") / "generate"
        if target.suffix.lower() == ".png":
            out_dir = target.parent
            names = [target.stem] if num_images == 1 else [f"{target.stem}-{k}" for k in range(num_images)]
        elif target.suffix:
            raise UsageError(f"--out {str(target)!r}: pass a folder or a .png path.")
        else:
            out_dir = target
            names = [f"{runner.slug(prompt)}-s{seed + k}" for k in range(num_images)]
        for k, name in enumerate(names):
            items.append(runner.WorkItem(id=name, index=k, inputs={"prompt": prompt}, seed=seed + k,
                                         output=out_dir / f"{name}.png"))

    task = runner.make_task("generate")
    summary = common.execute(
        task, items, resolved=resolved,
        overrides=overrides,
        out_dir=out_dir, batch_mode=batch is not None, device=device.value, dtype=dtype.value,
        batch_size=batch_size, num_processes=num_processes, accelerate_config=accelerate_config, what="generated",
    )
    if batch is None and summary is not None and not summary.failed:
        common.error_console().print(f"wrote {len(items)} image(s) to {out_dir}")
    common.single_failure(summary if batch is None else None)
    if batch is not None and runner.batch_exit_code(summary, out_dir):
        raise typer.Exit(1)  # no row succeeded; the summary above says why

