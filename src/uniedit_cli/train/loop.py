"""The one training loop, through accelerate, for every trainable family.

The shape is diffusers' train_instruct_pix2pix.py (STYLE.md): ``accelerator.accumulate`` with
work gated on ``sync_gradients``, save hooks that write only what is trained (safetensors),
``checkpoint-N`` folders with a total limit, resume from the latest one, logging on rank 0.
What differs, and why:

- The loss is ``trainee.training_loss(batch)`` (:mod:`uniedit_cli.train.objectives`): one loop,
  no family-specific copies.
- The data order is a seeded permutation per epoch and every random draw of a row (crop, flip,
  noise, timestep, conditioning dropout) is seeded by (seed, epoch, row) only
  (:func:`uniedit_cli.train.data.row_seed`). So a resumed run reproduces an uninterrupted one,
  and N processes with batch B reproduce one process with batch N*B: the global batch of step
  k holds the same rows either way (accelerate gives rank r the micro-batches r, r+N, ...).
- Each epoch uses the largest multiple of the global batch (per device x processes x
  accumulation) that fits in the training rows, so no rank pads and no accumulation is cut.
- The learning-rate schedule steps once per optimizer step (``step_scheduler_with_optimizer``
  off), so it does not depend on the number of processes.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uniedit_cli import __version__
from uniedit_cli.errors import UniEditError, UsageError
from uniedit_cli.train import checkpoints
from uniedit_cli.train.config import RESUMABLE_CHANGES, TrainConfig, changed_keys, dump_yaml
from uniedit_cli.train.config import resolve as resolve_config

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
VALIDATION_DIR = "validation"

OOM_ADVICE = ("Try a smaller --batch-size (raise --grad-accum to keep the global batch), --gradient-checkpointing, "
              "--lora, --precision bf16, or shard the model over GPUs with --accelerate-config "
              "examples/accelerate/fsdp.yaml (or deepspeed-zero3.yaml).")


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path
    steps: int
    total_steps: int
    last_loss: float | None
    samples_per_second: float | None
    skipped_rows: int
    seconds: float
    resumed_from: str | None = None
    already_finished: bool = False


class EpochSampler:
    """A seeded permutation of the rows per epoch, cut to a multiple of the global batch."""

    def __init__(self, rows: int, usable: int, seed: int):
        self.rows, self.usable, self.seed, self.epoch = rows, usable, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        import torch

        from uniedit_cli.train.data import row_seed

        generator = torch.Generator().manual_seed(row_seed(self.seed, self.epoch, -1))
        return iter(torch.randperm(self.rows, generator=generator)[: self.usable].tolist())

    def __len__(self) -> int:
        return self.usable


def _mixed_precision(precision: str, *, cuda: bool) -> str:
    import torch

    if precision == "auto":
        from_launch = os.environ.get("ACCELERATE_MIXED_PRECISION")
        if from_launch:  # an accelerate config chose it
            return from_launch
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def _precision_name(mixed: str) -> str:
    return "fp32" if mixed == "no" else f"{mixed} mixed precision"


def _check_tracker(report_to: str) -> None:
    import importlib.util

    if report_to == "none":
        return
    if importlib.util.find_spec(report_to) is None:
        raise UsageError(f"--report-to {report_to}: the {report_to} package is not installed.",
                         hint=f"pip install {report_to}, or pass --report-to none (metrics still go to {METRICS_FILE}).")


def _accelerator(config: TrainConfig, run_dir: Path, *, find_unused: bool):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    cpu = config.device == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine.", hint="Use --device cpu or auto.")
    cuda = torch.cuda.is_available() and not cpu
    mixed = _mixed_precision(config.tune.precision, cuda=cuda)
    if mixed == "fp16" and not cuda:
        raise UsageError("--precision fp16 needs a GPU (loss scaling is a CUDA feature).",
                         hint="Use --precision bf16 or fp32 on the CPU.")
    if (not cuda and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
            and os.environ.get("FSDP_VERSION", "1") != "2"):
        # accelerate's FullyShardedDataParallelPlugin (built by Accelerator from the FSDP_*
        # environment) asks torch.cuda / npu / xpu for the current device and raises on CPU ranks
        raise UsageError("the accelerate config asks for FSDP version 1, which accelerate builds for GPU ranks only.",
                         hint="Set fsdp_version: 2 in the config (as examples/accelerate/fsdp.yaml): FSDP2 shards CPU "
                              "ranks too.")
    accelerator = Accelerator(
        gradient_accumulation_steps=config.optim.grad_accum,
        mixed_precision=mixed,
        cpu=cpu,
        log_with=None if config.log.report_to == "none" else [config.log.report_to],
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
    )
    _fsdp_on_cpu_ranks(accelerator)
    return accelerator


def _fsdp_on_cpu_ranks(accelerator) -> None:
    """FSDP2 over gloo for CPU ranks, which accelerate leaves MULTI_CPU.

    accelerate (1.x, ``AcceleratorState.__init__``) selects FSDP only for accelerator ranks
    (MULTI_GPU / NPU / XPU / ...), although torch's ``fully_shard`` shards, gathers and
    reduce-scatters over gloo on CPU meshes. For a ``distributed_type: FSDP`` config on CPU ranks
    (``fsdp_version: 2``; version 1 was refused before the Accelerator was built), switch the
    accelerator state to FSDP with the plugin the config describes (accelerate's own ``FullyShardedDataParallelPlugin``, read from the
    ``FSDP_*`` environment ``accelerate launch`` exported); ``prepare`` then shards as on GPUs.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU or os.environ.get(
            "ACCELERATE_USE_FSDP", "").lower() != "true":
        return
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    # both shared states: every AcceleratorState() copies PartialState's fields over its own
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def _drop_metrics_after(path: Path, step: int) -> int:
    """Forget the log lines of steps after the checkpoint a run resumes from: they are trained
    again, and two records for one step would double them in every plot. A line that does not
    parse (torn by a kill mid-write) goes too. Returns how many lines were dropped."""
    import json

    from uniedit_cli.io import write_text

    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            late = int(json.loads(line)["step"]) > step
        except (ValueError, KeyError, TypeError):
            late = True
        if late:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        write_text(path, "".join(f"{line}\n" for line in keep))
    return dropped


def _reset_accelerate() -> None:
    """Let a later in-process run (tests, notebooks) build an Accelerator with other settings."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (list, tuple)):
            out[prefix + key] = ",".join(map(str, value))
        elif value is None:
            out[prefix + key] = "none"
        else:
            out[prefix + key] = value
    return out


def _check_resume_config(run_dir: Path, config: TrainConfig) -> None:
    from uniedit_cli.train.config import read_yaml

    path = run_dir / CONFIG_FILE
    if not path.exists():
        return
    old = read_yaml(path)
    changed = [key for key in changed_keys(old, config.to_dict()) if key not in RESUMABLE_CHANGES]
    if changed:
        raise UsageError(
            f"--resume: this run was started with other settings ({', '.join(changed)}; see {path}).",
            hint=f"Resume with its config: uniedit train --config {path} --resume latest (you may change "
                 "--max-steps, --epochs, --save-every, --val-every, --log-every, --report-to).")


def _final_training(final_dir: Path) -> dict:
    """The ``training`` record of final/uniedit.json ({} when there is none to read)."""
    import json

    try:
        training = json.loads((final_dir / "uniedit.json").read_text(encoding="utf-8"))["training"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return training if isinstance(training, dict) else {}


def _finished(final_dir: Path, config: TrainConfig) -> bool:
    """Whether final/ already holds as many steps as this configuration asks for."""
    training = _final_training(final_dir)
    done = int(training.get("steps") or 0)
    if config.optim.max_steps is not None:
        return done >= config.optim.max_steps
    recorded = (training.get("config") or {}).get("optim", {})
    return recorded.get("max_steps") is None and recorded.get("epochs") == config.optim.epochs and done > 0


def _progress(console, *, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TextColumn("lr {task.fields[lr]}"), TextColumn("{task.fields[speed]} samples/s"), TimeElapsedColumn(),
        TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=not enabled, transient=False,
    )


@contextmanager
def _ema_weights(ema, params):
    """Evaluate with the EMA weights, then put the trained ones back (diffusers' store / copy_to / restore)."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def _fsdp2_units(model) -> list:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch < 2.6
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def _whole_weights(model, reshard_after_forward: bool):
    """FSDP2: all-gather every unit's shard and keep it whole for the duration.

    Validation edits call the adapter's submodules directly (Janus' sampling loop, the UNet
    through the pipeline), outside the wrapped root forward whose hooks gather the root unit's
    parameters; and with resharding after every forward, a 576-token sampling loop would
    all-gather each decoder layer once per token. So: resharding after forward off (the
    FSDP2 pattern for evaluation), every unit unsharded, and both undone afterwards
    (``fully_shard`` leaves the root unit unresharded after forward). Every rank must enter:
    the gathers are collectives. Costs the whole weights' memory on each rank meanwhile."""
    units = _fsdp2_units(model)
    if not units:
        yield
        return
    model.set_reshard_after_forward(False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        model.set_reshard_after_forward(bool(reshard_after_forward))
        model.set_reshard_after_forward(False, recurse=False)


def run(config: TrainConfig, *, console, command: list[str]) -> TrainResult:
    """Train ``config.model`` on ``config.data``; see the module docstring. All ranks call this."""
    from uniedit_cli import registry
    from uniedit_cli.models.base import preflight

    started = time.perf_counter()
    resolved = registry.resolve(config.model or "", config.family)
    resolved.require(registry.TRAIN)
    resolve_config(config, resolved.family)
    preflight(resolved)
    _check_tracker(config.log.report_to)
    run_dir = config.out_dir
    tune = config.tune
    # a batch whose source images are all dropped leaves Janus' vision encoder without gradient
    find_unused = resolved.family == "janus" and "vision" not in tune.freeze and tune.drop_image_prob > 0
    accelerator = _accelerator(config, run_dir, find_unused=find_unused)
    try:
        return _run(accelerator, config, resolved, console=console, command=command, started=started)
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            raise UniEditError(f"out of memory while training ({str(exc).splitlines()[0] if str(exc) else 'no detail'}).",
                               hint=OOM_ADVICE) from None
        raise
    finally:
        if accelerator.num_processes == 1:
            _reset_accelerate()


def _run(accelerator, config: TrainConfig, resolved, *, console, command: list[str], started: float) -> TrainResult:
    import torch
    from accelerate.utils import DistributedType, set_seed
    from rich.markup import escape

    from uniedit_cli import registry
    from uniedit_cli.io import append_jsonl, write_text
    from uniedit_cli.models.base import load_model
    from uniedit_cli.train import data as data_mod
    from uniedit_cli.train import objectives

    tune, optim, log = config.tune, config.optim, config.log
    run_dir = config.out_dir
    is_main = accelerator.is_main_process
    world = accelerator.num_processes
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    say = (lambda text: console.print(text)) if is_main else (lambda text: None)

    asked = [name for name, env in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
             if os.environ.get(env, "").lower() == "true"]
    if asked and not sharded:
        # accelerate turns FSDP / DeepSpeed on only for accelerator ranks; CPU ranks stay MULTI_CPU
        # (_fsdp_on_cpu_ranks lifts that for FSDP2)
        say(f"[yellow]note:[/] the accelerate config asks for {asked[0]}, which accelerate runs on GPUs only: these "
            f"{str(accelerator.device).split(':')[0].upper()} ranks train with plain data parallelism "
            f"({accelerator.distributed_type.value}), every rank holding the whole model.")

    if tune.ema and sharded:
        raise UsageError("--ema with FSDP or DeepSpeed is not supported (the EMA would hold only this rank's shard).",
                         hint="Train without --ema, or with DDP (examples/accelerate/ddp.yaml).")

    # --- the run folder: fresh, or resuming -----------------------------------------------------
    resume_path = checkpoints.find_resume(run_dir, config.checkpoint.resume)
    final_dir = run_dir / checkpoints.FINAL_DIR
    if config.checkpoint.resume == "latest" and _finished(final_dir, config):
        saved = checkpoints.list_checkpoints(run_dir)
        if saved and saved[-1][0] == int(_final_training(final_dir).get("steps") or 0):
            further = "raise --max-steps to train further"
        else:  # no checkpoint of the last step (--save-every 0): nothing to continue the optimizer from
            further = f"to train further, start a new run from its weights: --model {final_dir} --out <another folder>"
        say(f"[green]{escape(str(run_dir))} already finished[/]: final/ holds the last step ({escape(further)}).")
        accelerator.wait_for_everyone()
        return TrainResult(run_dir, final_dir, 0, 0, None, None, 0, time.perf_counter() - started, already_finished=True)
    if resume_path is None:
        if config.checkpoint.resume == "latest":
            say(f"[yellow]note:[/] no checkpoint in {escape(str(run_dir))} yet: starting from step 0.")
        checkpoints.guard_fresh(run_dir, resuming=config.checkpoint.resume == "latest")
    else:
        _check_resume_config(run_dir, config)
    accelerator.wait_for_everyone()  # every rank has looked at the folder before rank 0 changes it
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        checkpoints.clear_partials(run_dir)
        if resume_path is None:  # left over from a run killed before its first checkpoint
            for name in (METRICS_FILE, data_mod.SKIP_LOG):
                (run_dir / name).unlink(missing_ok=True)
            shutil.rmtree(run_dir / VALIDATION_DIR, ignore_errors=True)
    accelerator.wait_for_everyone()

    # --- data and model ---------------------------------------------------------------------------
    set_seed(config.seed)  # LoRA initialisation and anything else drawn from the global RNGs
    with accelerator.main_process_first():  # the datasets cache is written once
        data = data_mod.load_edit_data(config.data, seed=config.seed)
    adapter = load_model(resolved, device=str(accelerator.device), dtype="fp32")
    trainee = objectives.trainee_for(adapter)
    resolution = trainee.check_resolution(config.data.resolution)
    lora = objectives.LoraSettings(tune.lora_rank, float(tune.lora_alpha), tune.lora_dropout, tune.lora_targets) \
        if tune.lora else None
    named = trainee.configure(freeze=list(tune.freeze), lora=lora)
    params = [p for _, p in named]
    if tune.gradient_checkpointing:
        trainee.enable_gradient_checkpointing()
    counts = objectives.describe_parameters(trainee.root)

    skip_log = run_dir / data_mod.SKIP_LOG
    dataset = data_mod.EditRows(data.train, data.columns, base_dir=data.base_dir, resolution=resolution,
                                crop=config.data.crop, random_flip=config.data.random_flip, seed=config.seed,
                                skip_log=skip_log)
    global_batch = optim.batch_size * world * optim.grad_accum
    usable = len(dataset) // global_batch * global_batch
    if usable == 0:
        raise UsageError(
            f"{len(dataset)} training rows are fewer than one optimizer step's batch ({optim.batch_size} per device x "
            f"{world} process(es) x {optim.grad_accum} accumulation = {global_batch}).",
            hint="Lower --batch-size or --grad-accum, or add data.")
    steps_per_epoch = usable // global_batch
    total_steps = optim.max_steps or (optim.epochs or 1) * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    val_rows = data_mod.validation_rows(data, resolution=resolution, crop=config.data.crop, seed=config.seed,
                                        skip_log=skip_log if is_main else None)

    sampler = EpochSampler(len(dataset), usable, config.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=optim.batch_size, sampler=sampler,
                                         collate_fn=data_mod.collate_rows, num_workers=config.data.num_workers)
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=(optim.adam_beta1, optim.adam_beta2),
                                  eps=optim.adam_epsilon, weight_decay=optim.weight_decay)
    if optim.warmup_steps >= total_steps:
        say(f"[yellow]note:[/] --warmup-steps {optim.warmup_steps} is not shorter than the run ({total_steps} step{'s' * (total_steps != 1)}): "
            f"the learning rate never reaches --lr {optim.lr:g} (it is 0 at the first step).")
    lr_scheduler = _scheduler(optim.schedule, optimizer, warmup=optim.warmup_steps, total=total_steps)
    objective, optimizer, loader, lr_scheduler = accelerator.prepare(trainee.objective, optimizer, loader, lr_scheduler)
    trainee.objective = objective
    # FSDP replaces parameters by sharded ones: clip (and average) the prepared module's own
    params = [p for p in objective.parameters() if p.requires_grad]
    ema = None
    if tune.ema:
        from diffusers.training_utils import EMAModel

        # warm-up (decay grows with the step, as diffusers' --use_ema with warm-up) so that short
        # runs are not dominated by the initial weights
        ema = EMAModel(params, decay=tune.ema_decay, use_ema_warmup=True)
        ema.to(accelerator.device)
    checkpoints.register_hooks(accelerator, ema=ema)

    global_step = 0
    if resume_path is not None:
        state = checkpoints.read_state(resume_path)
        if int(state.get("global_batch", global_batch)) != global_batch:
            raise UsageError(
                f"--resume {resume_path}: that run used a global batch of {state['global_batch']} rows per step, this one "
                f"{global_batch} ({optim.batch_size} per device x {world} x {optim.grad_accum}).",
                hint="Resume with a batch size, process count and accumulation that give the same global batch.")
        accelerator.load_state(str(resume_path))
        global_step = int(state["global_step"])
        if is_main:
            _drop_metrics_after(run_dir / METRICS_FILE, global_step)

    derived = {
        "family": resolved.family, "base_model": resolved.display, "model_location": resolved.location,
        "world_size": world, "global_batch": global_batch, "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps, "resolution": resolution, "data": data.describe(), **counts,
        "mixed_precision": accelerator.mixed_precision, "distributed_type": str(accelerator.distributed_type),
        "uniedit_version": __version__,
    }
    if is_main:
        write_text(run_dir / CONFIG_FILE, dump_yaml(config, command=command, derived=derived))
    if log.report_to != "none":
        accelerator.init_trackers(run_dir.name, config=_flat({**config.to_dict(), "derived": derived}))

    what = "LoRA" if tune.lora else "full fine-tune"
    trained = [p for p in trainee.parts if p not in tune.freeze]
    say(f"training [bold]{escape(resolved.display)}[/] ({resolved.family}) on {escape(data.source)}: "
        f"{len(data.train)} rows ({data.columns.layout} layout), {len(val_rows)} validation rows"
        + (f" ({escape(data.val_from)})" if val_rows else ""))
    say(f"  {total_steps} steps x global batch {global_batch} ({optim.batch_size} per device x {world} process(es) x "
        f"{optim.grad_accum} accumulation), {resolution}px, {what} of {', '.join(trained)} "
        f"({counts['trainable_parameters']:,} of {counts['parameters']:,} parameters), "
        f"{_precision_name(accelerator.mixed_precision)} on {accelerator.device}; run folder {escape(str(run_dir))}")
    for note in data.notes:
        say(f"  [dim]{escape(note)}[/]")
    if resume_path is not None:
        say(f"  resuming from {escape(str(resume_path))} (step {global_step})")

    # --- validation ---------------------------------------------------------------------------------
    knobs = registry.FAMILY_KNOBS[resolved.family]
    edit_options = {k: v for k, v in resolved.defaults.items() if k in knobs}
    if "steps" in knobs:
        edit_options["steps"] = log.val_steps or min(20, int(edit_options.get("steps", 20)))
    if "size" in knobs:
        edit_options["size"] = resolution
    # sharded weights are whole only inside the wrapped forward: FSDP2 gathers them for the
    # validation edits (_whole_weights); FSDP1 and DeepSpeed report the validation loss only
    fsdp_plugin = getattr(accelerator.state, "fsdp_plugin", None)
    reshard = getattr(fsdp_plugin, "reshard_after_forward", None)
    fsdp2 = accelerator.distributed_type == DistributedType.FSDP and isinstance(reshard, bool)
    draw_edits = not sharded or fsdp2

    def validate(step: int) -> dict | None:
        if not val_rows:
            return None
        from uniedit_cli.train.validation import grid, save_grid

        objective.eval()
        try:
            with torch.no_grad(), _ema_weights(ema, params):
                total, count = 0.0, 0
                for start in range(0, len(val_rows), optim.batch_size):
                    chunk = val_rows[start:start + optim.batch_size]
                    batch = objectives.adapter_batch(data_mod.collate_rows(chunk), drop_text_prob=0.0, drop_image_prob=0.0)
                    with accelerator.autocast():
                        total += float(trainee.training_loss(batch).float()) * len(chunk)
                    count += len(chunk)
                outputs = [None] * len(val_rows)
                if draw_edits:
                    with accelerator.autocast(), _whole_weights(objective, bool(reshard) if fsdp2 else True):
                        outputs = trainee.edit([r["source"] for r in val_rows], [r["instruction"] for r in val_rows],
                                               seeds=[config.seed + i for i in range(len(val_rows))], **edit_options)
        finally:
            objective.train()
        record = {"step": step, "val_loss": total / max(count, 1)}
        if is_main:
            image = grid(val_rows, outputs, title=f"{resolved.display} step {step}  val loss {record['val_loss']:.4f}")
            path = save_grid(image, run_dir / VALIDATION_DIR, step)
            record["grid"] = str(path.relative_to(run_dir))
            append_jsonl(run_dir / METRICS_FILE, record)
            _log_image(accelerator, image, step)
        accelerator.log({"val_loss": record["val_loss"]}, step=step)
        return record

    # --- the loop -------------------------------------------------------------------------------
    first_epoch = global_step // steps_per_epoch
    skip_batches = (global_step % steps_per_epoch) * optim.grad_accum
    window_loss = torch.zeros((), device=accelerator.device)
    window_steps, window_started = 0, time.perf_counter()
    last_loss: float | None = None
    last_speed: float | None = None
    interactive = bool(getattr(console, "is_terminal", False))
    last_checkpoint = resume_path

    def trainer_state(step: int) -> dict:
        return {"global_step": step, "epoch": step // steps_per_epoch, "global_batch": global_batch,
                "total_steps": total_steps, "world_size": world, "loss": last_loss, "time": time.time(),
                "uniedit_version": __version__}

    objective.train()
    try:
        with _progress(console, enabled=is_main) as progress:
            bar = progress.add_task("train", total=total_steps, completed=global_step, loss="-",
                                    lr=f"{lr_scheduler.get_last_lr()[0]:.2e}", speed="-")
            for epoch in range(first_epoch, epochs):
                if global_step >= total_steps:
                    break
                # through the prepared loader: its iterator re-applies its own epoch to the sampler
                loader.set_epoch(epoch)
                dataset.set_epoch(epoch)
                epoch_loader = loader
                if epoch == first_epoch and skip_batches:
                    epoch_loader = accelerator.skip_first_batches(loader, skip_batches)
                for rows in epoch_loader:
                    batch = objectives.adapter_batch(rows, drop_text_prob=tune.drop_text_prob,
                                                     drop_image_prob=tune.drop_image_prob)
                    with accelerator.accumulate(objective):
                        loss = trainee.training_loss(batch)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and optim.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(params, optim.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    window_loss += loss.detach().float() / optim.grad_accum
                    if not accelerator.sync_gradients:
                        continue
                    lr_used = lr_scheduler.get_last_lr()[0]
                    lr_scheduler.step()
                    global_step += 1
                    window_steps += 1
                    if ema is not None:
                        ema.step(params)
                    done = global_step >= total_steps
                    if global_step % log.log_every == 0 or global_step == 1 or done:
                        mean = accelerator.reduce(window_loss, reduction="mean") / window_steps
                        last_loss = float(mean)
                        elapsed = time.perf_counter() - window_started
                        last_speed = window_steps * global_batch / elapsed if elapsed > 0 else None
                        record = {"step": global_step, "epoch": epoch, "loss": last_loss, "lr": lr_used,
                                  "samples_per_second": last_speed, "elapsed": time.perf_counter() - started}
                        accelerator.log({"loss": last_loss, "lr": lr_used, "samples_per_second": last_speed or 0.0},
                                        step=global_step)
                        if is_main:
                            append_jsonl(run_dir / METRICS_FILE, record)
                            if not interactive:
                                speed = f"{last_speed:.1f}" if last_speed else "-"
                                console.print(f"step {global_step}/{total_steps}  loss {last_loss:.4f}  lr {lr_used:.2e}  "
                                              f"{speed} samples/s")
                        window_loss.zero_()
                        window_steps, window_started = 0, time.perf_counter()
                    progress.update(bar, completed=global_step,
                                    loss="-" if last_loss is None else f"{last_loss:.4f}",
                                    lr=f"{lr_used:.2e}", speed="-" if not last_speed else f"{last_speed:.1f}")
                    # and at the last step, so that raising --max-steps continues the run from there
                    if config.checkpoint.save_every and (global_step % config.checkpoint.save_every == 0 or done):
                        last_checkpoint = checkpoints.save(accelerator, run_dir, global_step, trainer_state(global_step),
                                                           limit=config.checkpoint.limit)
                    if log.val_every and global_step % log.val_every == 0 and not done:
                        validate(global_step)
                        window_started = time.perf_counter()  # validation time is not training speed
                    if done:
                        break
    except KeyboardInterrupt:
        if is_main:
            where = f"the last checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
            console.print(f"[yellow]stopped at step {global_step}[/]: {escape(where)}; continue with the same command "
                          "plus --resume latest.")
        raise

    final_val = validate(global_step)

    # --- final weights ------------------------------------------------------------------------------
    skipped = len(data_mod.skipped_rows(skip_log)) if is_main else 0
    meta = {"training": {
        "steps": global_step, "total_steps": total_steps, "final_loss": last_loss,
        "val_loss": None if final_val is None else final_val["val_loss"], "skipped_rows": skipped,
        "ema": tune.ema, "lora": None if not tune.lora else {"rank": tune.lora_rank, "alpha": tune.lora_alpha,
                                                               "targets": tune.lora_targets or trainee.default_lora_targets},
        "config": config.to_dict(), "derived": derived, "uniedit_version": __version__,
    }}
    accelerator.wait_for_everyone()
    full_state = accelerator.get_state_dict(objective) if sharded else None
    if is_main:
        staging = run_dir / ".final.partial"
        shutil.rmtree(staging, ignore_errors=True)
        if sharded:
            _save_from_full_state(full_state, resolved, config, trainee, staging, meta)
        else:
            if ema is not None:
                ema.copy_to(params)
            lora_weights = trainee.lora_state_dict() if trainee.lora else None
            if trainee.lora:
                trainee.merge_lora()
            trainee.save(staging, extra=meta)
            if lora_weights:
                _write_lora(staging / "lora", lora_weights, trainee)
        shutil.rmtree(final_dir, ignore_errors=True)
        staging.rename(final_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    seconds = time.perf_counter() - started
    if is_main:
        say(f"[green]trained {global_step} steps[/] in {seconds:.0f} s; final loss "
            f"{'-' if last_loss is None else f'{last_loss:.4f}'}"
            + ("" if final_val is None else f", validation loss {final_val['val_loss']:.4f}"))
        if skipped:
            say(f"[yellow]{skipped} training rows were skipped[/] (undecodable images or empty instructions); "
                f"see {escape(str(skip_log))}")
        say(f"wrote {escape(str(final_dir))}: uniedit edit IMAGE \"INSTRUCTION\" --model {escape(str(final_dir))}")
    return TrainResult(run_dir, final_dir, global_step, total_steps, last_loss, last_speed, skipped, seconds,
                       resumed_from=None if resume_path is None else str(resume_path))


def _scheduler(name: str, optimizer, *, warmup: int, total: int):
    from transformers import get_scheduler

    kind = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[name]
    return get_scheduler(kind, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=total)


def _log_image(accelerator, image, step: int) -> None:
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(image), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(image)]}, step=step)


def _write_lora(folder: Path, weights: dict, trainee) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    trainee.lora_config.save_pretrained(str(folder))


def _save_from_full_state(state: dict, resolved, config: TrainConfig, trainee, staging: Path, meta: dict) -> None:
    """FSDP / DeepSpeed: rebuild the model on the CPU from the gathered full state dict, then save it."""
    from uniedit_cli.models.base import load_model
    from uniedit_cli.train import objectives

    fresh = objectives.trainee_for(load_model(resolved, device="cpu", dtype="fp32"))
    lora = trainee.lora
    fresh.configure(freeze=list(config.tune.freeze), lora=lora)
    prefix = "model." if isinstance(fresh, objectives.JanusTrainee) else ""
    wanted = {name[len(prefix):]: tensor for name, tensor in state.items() if name.startswith(prefix)}
    missing, unexpected = fresh.root.load_state_dict(wanted, strict=False)
    trained = {name for name, p in fresh.root.named_parameters() if p.requires_grad}
    lost = sorted(trained & set(missing))
    if lost:
        raise UniEditError(f"the gathered weights lack {len(lost)} trained parameters (e.g. {lost[0]}); final/ not written.",
                           hint="For DeepSpeed ZeRO-3 set zero3_save_16bit_model: true in the accelerate config.")
    lora_weights = fresh.lora_state_dict() if lora else None
    if lora:
        fresh.merge_lora()
    fresh.save(staging, extra=meta)
    if lora_weights:
        _write_lora(staging / "lora", lora_weights, fresh)
