"""``uniedit synth``: VQA data -> reasoning-intensive edit data (the Uni-Edit pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from uniedit_cli.commands import common

HELP = "Turn VQA data into reasoning-intensive edit data (instruction + target image)."
EPILOG = """\
[bold]Examples[/]

  uniedit synth   [dim]# built-in scene world, 1,000 rows into ./uniedit-data/, no downloads[/]

  uniedit synth --vqa gqa --vqa-path /data/gqa --split val --editor qwen-image-edit --judge qwen2.5-vl-7b --out data/gqa-edit

  uniedit synth --vqa vqav2 --vqa-path /data/vqav2 --rewriter qwen2.5-7b-instruct --editor flux-kontext --num-processes 8 --out data/vqav2-edit

  uniedit synth --num-rows 200 --judge qwen2.5-vl-tiny --out /tmp/tiny-check   [dim]# the judge path, offline[/]

[bold]Output[/]: parquet shards in OUT/train/ and OUT/test/ (held out by image; columns input_image, edit_prompt,
edited_image, ...; `datasets.load_dataset("parquet", data_dir=OUT)` loads both splits), uniedit-data.json (config, counts, rejections per reason), preview.html, and
rejected/ (every dropped row with its reason). Kill it at any point and rerun the same command to resume.
"""


@common.handle_errors
def synth(
    vqa: Annotated[str, typer.Option("--vqa", help="Source: shapes (built-in scene world), gqa, vqav2, clevr, jsonl.")] = "shapes",
    vqa_path: Annotated[Optional[str], typer.Option("--vqa-path", help="The source's data folder or file (not for shapes).")] = None,
    split: Annotated[str, typer.Option("--split", help="Source split (train, val, testdev, ...).")] = "val",
    vqa_option: Annotated[Optional[list[str]], typer.Option("--vqa-option", help="A source option as key=value (repeatable), e.g. balanced=false, image_dir=/data/images (gqa, vqav2, clevr, jsonl; shapes takes none). An option the source does not take is refused.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("uniedit-data"),
    num_rows: Annotated[Optional[int], typer.Option("--num-rows", min=1, help="Rows to plan (shapes: default 1000) / questions to read.")] = None,
    editor: Annotated[Optional[str], typer.Option("--editor", help="A model that can edit, or none (instruction-only rows). shapes renders exact targets.")] = None,
    judge: Annotated[Optional[str], typer.Option("--judge", help="A model that can ask: re-asks the embedded question on each target.")] = None,
    rewriter: Annotated[Optional[str], typer.Option("--rewriter", help="An LLM that rewrites instructions for fluency (leak-checked).")] = None,
    classifier: Annotated[Optional[str], typer.Option("--classifier", help="An LLM that sorts questions into task categories (default: rules over programs and text).")] = None,
    clip: Annotated[Optional[str], typer.Option("--clip", help="CLIP for the clip_dir / clip_img scores: vit-b-32 (OpenAI CLIP ViT-B/32 from the local hub cache; also openai), a local ViT-B/32 checkpoint file or folder, or random (random weights: a smoke test, not a filter). No other CLIP models.")] = None,
    styles: Annotated[Optional[str], typer.Option("--styles", help="Comma list: conditional, synthesis, referring, nested, text-answer.")] = None,
    max_depth: Annotated[int, typer.Option("--max-depth", min=1, help="Most relation hops in nested instructions.")] = 2,
    cap: Annotated[Optional[int], typer.Option("--cap", min=1, help="Most rows per task category.")] = None,
    keep: Annotated[Optional[str], typer.Option("--keep", help="Keep categories dropped by default (yes_no, multi_choice, other).")] = None,
    min_quality: Annotated[Optional[float], typer.Option("--min-quality", min=1, max=5, help="Drop targets the judge rates below this (1-5; needs --judge).")] = None,
    min_clip_dir: Annotated[Optional[float], typer.Option("--min-clip-dir", min=-1, max=1, help="Drop rows below this CLIP directional similarity (needs --clip).")] = None,
    min_clip_img: Annotated[Optional[float], typer.Option("--min-clip-img", min=-1, max=1, help="Drop rows below this CLIP image similarity (needs --clip).")] = None,
    holdout: Annotated[float, typer.Option("--holdout", min=0.0, max=1.0, help="Share of images held out as the test split (uniedit-bench).")] = 0.05,
    keep_judge_mismatch: Annotated[bool, typer.Option("--keep-judge-mismatch", help="Keep rows whose re-asked answer is wrong (scores stay in the columns; needs --judge).")] = False,
    seed: common.SeedOpt = 0,
    size: Annotated[int, typer.Option("--size", min=32, help="Scene-world image size in pixels.")] = 256,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="Rows per shard (the unit of resume).")] = 200,
    num_proc: Annotated[int, typer.Option("--num-proc", min=1, help="Processes for CPU-only stages (the scene world).")] = 1,
    batch_size: common.BatchSizeOpt = 8,
    device: common.DeviceOpt = common.Device.auto,
    dtype: common.DTypeOpt = common.DType.auto,
    num_processes: common.NumProcessesOpt = None,
    accelerate_config: common.AccelerateConfigOpt = None,
) -> None:
    from uniedit_cli import launch
    from uniedit_cli.synth import pipeline
    from uniedit_cli.synth.records import STYLES

    config = pipeline.SynthConfig(
        vqa=vqa, vqa_path=vqa_path, split=split, source_options=common.parse_key_values(vqa_option, "--vqa-option"), out=str(out), num_rows=num_rows, editor=editor, judge=judge,
        rewriter=rewriter, classifier=classifier, clip=clip, styles=_split(styles) or STYLES, max_depth=max_depth, cap=cap,
        keep_categories=_split(keep), seed=seed, size=size, chunk_size=chunk_size, num_proc=num_proc,
        batch_size=batch_size, device=device.value, dtype=dtype.value, min_quality=min_quality,
        min_clip_dir=min_clip_dir, min_clip_img=min_clip_img, require_judge_ok=not keep_judge_mismatch, holdout=holdout,
    )
    if not launch.inside_launch():  # the process the user started checks (and notes) once, before any work
        from rich.markup import escape

        pipeline.preflight(config)  # arguments first (an unknown --vqa before anything else), then the source's files
        common.check_writable_dir(out)
        for note in pipeline.ignored_options(config):
            common.error_console().print(f"[yellow]note:[/] {escape(note)}")
    code = launch.relaunch_if_requested(common.invoked_argv(), num_processes=num_processes,
                                        accelerate_config=accelerate_config, device=device.value)
    if code is not None:
        if code != 0:
            raise typer.Exit(code)
        return
    console = common.error_console()
    summary = pipeline.run(config, console=console)
    if launch.partial_state().is_main_process:
        _report(summary, console)


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip()) if text else ()


def _report(summary, console) -> None:
    from rich.markup import escape

    manifest = summary.manifest
    rejected = manifest.get("rejections_per_reason", {})
    console.print(f"[green]{manifest.get('rows', 0)} rows[/] in {escape(str(summary.out))} "
                  f"({manifest.get('shards') and len(manifest['shards'])} shards, {summary.skipped_shards} already done; "
                  f"{summary.seconds:.1f} s)")
    if manifest.get("counts_per_category"):
        console.print("  per category: " + ", ".join(f"{k} {v}" for k, v in manifest["counts_per_category"].items()))
    if rejected:
        console.print("  rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items(), key=lambda kv: -kv[1])))
    if "judge" in manifest:
        judge = manifest["judge"]
        console.print(f"  judge {escape(str(judge['model']))}: {judge['agreed']}/{judge['asked']} re-asked answers right"
                      + (" (exact ground truth)" if judge.get("exact_ground_truth") else ""))
    console.print(f"  open {escape(str(summary.out / 'preview.html'))} to look at a sample")
