"""``run_dir/checkpoint-N/``: resumable training state, written through accelerate.

Layout of one checkpoint (DESIGN.md, "Checkpoints written by train"):

- ``trainable.safetensors``: the parameters being trained, by name (frozen weights never change
  and come back from the base model). Written by a save hook in place of accelerate's full
  model file, as diffusers' train_instruct_pix2pix.py writes its UNet; under FSDP / DeepSpeed
  accelerate writes its own sharded model files instead.
- ``ema.safetensors`` + ``ema.json`` with ``--ema``.
- accelerate's optimizer, scheduler and RNG state files.
- ``trainer_state.json``: the step, epoch and batch layout. Written last: a checkpoint is
  complete only when it is there.

A checkpoint is written to ``.checkpoint-N.partial`` and renamed when every rank has finished,
so a run killed while saving leaves no half checkpoint that ``--resume latest`` could pick.
At most ``--checkpoint-limit`` checkpoints are kept (the oldest go first), as in diffusers'
example.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from uniedit_cli.errors import UniEditError, UsageError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
EMA_FILE = "ema.safetensors"
EMA_META = "ema.json"
FINAL_DIR = "final"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    found = []
    if not run_dir.is_dir():
        return found
    for path in run_dir.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).exists():
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_state(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{str(checkpoint)!r} is not a complete uniedit checkpoint ({exc}).",
                         hint="Pass `--resume latest` or another checkpoint-N folder.") from None


def find_resume(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from: None for a fresh run (or `latest` with nothing saved yet)."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    read_state(path)
    return path


def guard_fresh(run_dir: Path, *, resuming: bool = False) -> None:
    """A fresh run never overwrites another run's checkpoints or final weights."""
    existing = [p.name for _, p in list_checkpoints(run_dir)]
    if (run_dir / FINAL_DIR).exists():
        if resuming and not existing:
            raise UsageError(
                f"--resume latest: {str(run_dir)!r} holds final/ but no checkpoint-N to continue from "
                "(that run saved none: --save-every 0).",
                hint=f"Train its weights further as a new run: --model {run_dir / FINAL_DIR} --out <another folder>.")
        existing.append(FINAL_DIR + "/")
    if existing:
        shown = ", ".join(existing[-3:])
        raise UsageError(f"--out {str(run_dir)!r} already holds a training run ({shown}).",
                         hint="Pass --resume latest to continue it, or choose another --out.")


def clear_partials(run_dir: Path) -> None:
    """Remove checkpoints that a killed run left half written."""
    if not run_dir.is_dir():
        return
    for path in run_dir.glob(".checkpoint-*.partial"):
        shutil.rmtree(path, ignore_errors=True)


def prune(run_dir: Path, limit: int | None) -> list[Path]:
    if not limit:
        return []
    found = list_checkpoints(run_dir)
    removed = [path for _, path in found[:max(0, len(found) - limit)]]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def register_hooks(accelerator, *, ema=None) -> None:
    """accelerate save/load pre-hooks: only trained parameters (safetensors) and the EMA."""
    import torch
    from safetensors.torch import load_file, save_file

    def save_hook(models, weights, output_dir):
        output_dir = Path(output_dir)
        if weights and models:
            if accelerator.is_main_process:
                module = accelerator.unwrap_model(models[0])
                tensors = {name: p.detach().cpu().contiguous() for name, p in module.named_parameters() if p.requires_grad}
                save_file(tensors, str(output_dir / TRAINABLE_FILE), metadata={"format": "pt"})
            weights.pop()  # so accelerate does not also write the whole (mostly frozen) model
        if ema is not None and accelerator.is_main_process:
            state = ema.state_dict()
            shadow = state.pop("shadow_params")
            save_file({f"shadow.{i:05d}": t.detach().cpu().contiguous() for i, t in enumerate(shadow)},
                      str(output_dir / EMA_FILE), metadata={"format": "pt"})
            (output_dir / EMA_META).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    def load_hook(models, input_dir):
        input_dir = Path(input_dir)
        if (input_dir / TRAINABLE_FILE).exists() and models:
            module = accelerator.unwrap_model(models[0])
            tensors = load_file(str(input_dir / TRAINABLE_FILE))
            params = dict(module.named_parameters())
            wanted = {name for name, p in params.items() if p.requires_grad}
            if wanted != set(tensors):
                missing, extra = sorted(wanted - set(tensors)), sorted(set(tensors) - wanted)
                raise UniEditError(
                    f"checkpoint {str(input_dir)!r} was trained with other parts or LoRA settings "
                    f"({len(missing)} trainable parameters missing, {len(extra)} unexpected; e.g. "
                    f"{(missing or extra)[0]}).",
                    hint="Resume with the run's own --freeze / --lora options (see its config.yaml).")
            with torch.no_grad():
                for name, tensor in tensors.items():
                    params[name].copy_(tensor.to(params[name].device, params[name].dtype))
            models.pop()
        if ema is not None:
            if not (input_dir / EMA_FILE).exists():
                raise UniEditError(f"checkpoint {str(input_dir)!r} has no EMA weights but --ema is on.",
                                   hint="Resume with the run's own --ema setting.")
            shadow = load_file(str(input_dir / EMA_FILE))
            state: dict[str, Any] = json.loads((input_dir / EMA_META).read_text(encoding="utf-8"))
            state["shadow_params"] = [shadow[key] for key in sorted(shadow)]
            ema.load_state_dict(state)
            ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save(accelerator, run_dir: Path, step: int, trainer_state: dict, *, limit: int | None) -> Path:
    """Write ``checkpoint-<step>`` (all ranks call this) and prune old ones; returns its path."""
    from uniedit_cli.io import write_json

    final = run_dir / f"checkpoint-{step}"
    partial = run_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(partial / STATE_FILE, trainer_state)
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        prune(run_dir, limit)
    accelerator.wait_for_everyone()
    return final
