"""Options shared by several commands, and the error handling every command goes through."""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from typing import Annotated, Optional

import typer

from uniedit_cli.errors import UniEditError, UsageError

_INVOKED_ARGV: list[str] = []


def set_invoked_argv(args: list[str]) -> None:
    """Remember the command line (without the program name) so the launcher can re-run it."""
    _INVOKED_ARGV[:] = list(args)


def invoked_argv() -> list[str]:
    return list(_INVOKED_ARGV) if _INVOKED_ARGV else list(sys.argv[1:])


def error_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(exc: UniEditError) -> typer.Exit:
    from rich.markup import escape

    error_console().print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(exc.exit_code)


def handle_errors(func):
    """Run a command; a UniEditError becomes one red line and its exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UniEditError as exc:
            raise fail(exc) from None
        except KeyboardInterrupt:
            error_console().print("[yellow]interrupted[/]: finished outputs are kept; rerun the same command to resume.")
            raise typer.Exit(130) from None
        except Exception as exc:  # torch's OOM is only importable with torch; match it by name
            if type(exc).__name__ == "OutOfMemoryError":
                raise fail(UniEditError(
                    f"out of memory: {str(exc).splitlines()[0]}",
                    hint="Try a smaller --batch-size, --dtype bf16, a smaller --size, or more processes.",
                )) from None
            if isinstance(exc, OSError) and exc.filename and not os.environ.get("UNIEDIT_TRACEBACK"):
                # a file-system refusal (read-only, permission, disk full) with the path it concerns
                where = f"{exc.filename!s}" + (f" -> {exc.filename2!s}" if exc.filename2 else "")
                raise fail(UniEditError(f"{exc.strerror or type(exc).__name__}: {where}",
                                        hint="Check that the path exists and can be written "
                                             "(UNIEDIT_TRACEBACK=1 shows where it happened).")) from None
            raise

    return wrapper


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Registry name (see `uniedit models`), hub id, or local folder.")]
FamilyOpt = Annotated[Optional[str], typer.Option("--family", help="Adapter family for a hub id or folder that cannot be recognised (janus, ip2p, diffusers-edit, vlm, llm).")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="Where to run.")]
DTypeOpt = Annotated[DType, typer.Option("--dtype", help="Weights dtype: auto is bf16 on GPUs that support it, fp32 on CPU.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Base seed; each output gets its own seed (recorded in its sidecar).")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", min=1, help="Denoising steps (default: the model's published value).")]
GuidanceOpt = Annotated[Optional[float], typer.Option("--guidance", help="Text guidance scale (default: the model's published value).")]
ImageGuidanceOpt = Annotated[Optional[float], typer.Option("--image-guidance", help="Image guidance scale (InstructPix2Pix; default 1.5).")]
SizeOpt = Annotated[Optional[int], typer.Option("--size", min=8, help="Output size in pixels (long side; default: the model's).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Rows per model call.")]
NumProcessesOpt = Annotated[Optional[int], typer.Option("--num-processes", min=1, help="Run under `accelerate launch` with N processes (GPUs, or CPU ranks with gloo).")]
AccelerateConfigOpt = Annotated[Optional[str], typer.Option("--accelerate-config", help="An accelerate config YAML (multi-node, FSDP, ...); implies `accelerate launch`.")]


def check_writable_dir(folder, flag: str = "--out") -> None:
    """Before any model loads: ``folder`` is (or can be made) a folder this process can write
    into. A file in the way, a read-only file system or a missing permission is a usage error
    naming ``flag``, not a traceback after the work is done."""
    import tempfile
    from pathlib import Path

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {str(folder)!r} is a file, not a folder.", hint="Pass a folder path (or remove the file).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {str(folder)!r} cannot be written ({exc.strerror or exc}).",
                         hint="Pass a folder you can write to.") from None


def generation_overrides(**values) -> dict:
    """Only the knobs the user actually set; the rest come from the model's defaults."""
    return {key: value for key, value in values.items() if value is not None}


def execute(task, items, *, resolved, overrides: dict, out_dir, batch_mode: bool, device: str, dtype: str,
            batch_size: int, num_processes: int | None, accelerate_config: str | None, what: str):
    """Shared tail of edit / generate / ask: launch if asked, run, report. Returns the summary,
    or None when the work ran in launched child processes (their exit code is raised)."""
    from uniedit_cli import launch, runner
    from uniedit_cli.models.base import preflight
    from uniedit_cli.registry import FAMILY_KNOBS

    resolved.require(task.capability)
    preflight(resolved)
    console = error_console()
    knobs = FAMILY_KNOBS[resolved.family]
    ignored = sorted(key for key in overrides if key not in knobs)
    if ignored and not launch.inside_launch():  # said once, by the process the user started
        flags = ", ".join("--" + key.replace("_", "-") for key in ignored)
        verb = "has" if len(ignored) == 1 else "have"
        console.print(f"[yellow]note:[/] {flags} {verb} no effect on {resolved.family} models; ignored.")
    options = resolved.options(overrides)
    if not batch_mode and out_dir is not None:
        check_writable_dir(out_dir, "--out (its folder)")
    if batch_mode:
        if out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"--out {str(out_dir)!r} is a file; batch results go to a folder.", hint="Pass a folder path.")
        check_writable_dir(out_dir)
        runner.check_resumable(out_dir, task, resolved, options)
    code = launch.relaunch_if_requested(invoked_argv(), num_processes=num_processes,
                                        accelerate_config=accelerate_config, device=device)
    if code is not None:
        if code != 0:
            raise typer.Exit(code)
        return None
    summary = runner.run(task, items, resolved=resolved, options=options, out_dir=out_dir if batch_mode else None,
                         device=device, dtype=dtype, batch_size=batch_size, resume=batch_mode, console=console)
    from uniedit_cli.launch import partial_state

    if partial_state().is_main_process:
        if batch_mode or summary.failed:
            runner.report(summary, console, out_dir=out_dir if batch_mode else None, what=what)
    return summary


def single_failure(summary) -> None:
    """In single-item mode the one item failing is the command failing."""
    if summary is not None and summary.failed:
        raise typer.Exit(1)


def parse_key_values(pairs: list[str] | None, flag: str) -> dict:
    """``["k=v", ...]`` -> a dict; values are read as JSON when they parse, so numbers and
    true/false arrive typed (``random_weights=0`` is 0, not the truthy string "0")."""
    import json

    options: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} {pair!r}: expected KEY=VALUE.")
        value = value.strip()
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options

