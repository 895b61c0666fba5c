"""`uniedit train` on the Janus-Pro-1B architecture with random weights: samples/s, MFU, peak memory.

Builds Janus-Pro-1B from config (``models/janus.py:JANUS_PRO_1B_DIMS``: 24-layer 2048-wide
Llama, SigLIP-L/16 at 384 px, the VQ16 tokenizer; random weights, nothing downloaded), writes a
small scene-world edit set at 384 px with ``uniedit synth``, and trains through the real
``uniedit train`` path (``train.loop.run``: the adapter's ``training_loss``, AdamW, accelerate
mixed precision) once per configuration, each in a fresh process:

    python benchmarks/train_janus_gpu.py                       # full fine-tune and LoRA, bf16, batch 8
    python benchmarks/train_janus_gpu.py --checkpointing off,on --find-max-batch
    python benchmarks/train_janus_gpu.py --tiny --device cpu   # the same path at janus-tiny's size (a smoke test)

Per configuration it prints:

- samples/s: optimizer steps after ``--warmup`` steps, from the loop's own per-step log
  (``metrics.jsonl``; ``--log-every 1`` and each log step reads the mean loss back with
  ``float()``, a device sync, before it takes the time, so no queued GPU work is left out);
- model FLOPs per sample, by formula, from the shapes of one forward of the same objective on one
  batch (forward hooks on every ``nn.Linear`` / ``nn.Conv2d`` / attention call; same frozen parts,
  same LoRA; no recomputation, so with gradient checkpointing it is still model FLOPs)::

      FLOPs = 6 * W_trained * T + 4 * W_frozen,backprop * T + 2 * W_frozen,forward * T
              + sum over attention calls of 4 * S_q * S_k * heads * head_dim * (3 if backpropagated else 1)

  where W * T is, per matmul/conv weight, its multiply-accumulates (weight elements x the
  tokens or output pixels it is applied to): weights that train count forward (2), input gradient
  (2) and weight gradient (2); frozen weights with a gradient flowing through them (LoRA's base
  layers, frozen layers above trained ones) forward and input gradient (4); frozen weights outside
  the gradient path (SigLIP when frozen, the VQ encoder, which runs under no_grad) forward only (2).
  Attention counts QK^T and AV over the full (causal or not) S_q x S_k square, the PaLM
  convention. Biases, norms, softmax, the VQ codebook lookup and the loss are left out (<1%);
- the same quantity counted by ``torch.utils.flop_counter.FlopCounterMode`` over that forward +
  backward, as a check (it sees the kernels that ran, including the VQ's codebook distances);
- MFU = formula FLOPs/sample x samples/s / ``--peak-flops`` (default 989e12: H100 SXM dense bf16;
  756e12 for H100 PCIe, 1979e12 would be the sparse figure and is not what dense training gets);
- peak memory: ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` over the
  training run (weights in fp32 with bf16 autocast, AdamW states, activations).

``--find-max-batch`` doubles the batch from ``--batch-size`` until a run runs out of memory and
reports the largest that trained, per mode (full / LoRA) and checkpointing setting (``--checkpointing``
defaults to ``off,on`` with it): what fits on this GPU. Vision stays frozen (the Janus default in
``uniedit train``); the VQ is always frozen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

H100_SXM_BF16 = 989e12


# --- the worker: one training run in this process ---------------------------------------------

def _train_options(spec: dict, run_dir: Path) -> dict:
    return {
        "model": spec["model"], "path": spec["data"], "out": str(run_dir), "device": spec["device"],
        "max_steps": spec["warmup"] + spec["steps"], "batch_size": spec["batch"], "precision": spec["precision"],
        "lora": spec["lora"], "gradient_checkpointing": spec["checkpointing"], "log_every": 1, "val_every": 0,
        "val_size": 0, "save_every": 0, "schedule": "constant", "warmup_steps": 0, "seed": 0,
    }


class FormulaFlops:
    """The docstring's formula, from the shapes one forward sees (forward hooks; nothing is timed)."""

    def __init__(self, root):
        from torch import nn

        self.terms = {"trained": 0, "frozen_backprop": 0, "frozen_forward": 0, "attention": 0}
        self.handles = []
        for module in root.modules():
            name = type(module).__name__
            if isinstance(module, nn.Linear):
                self.handles.append(module.register_forward_hook(lambda m, a, out: self._matmul(m, out, out.shape[-1])))
            elif isinstance(module, nn.Conv2d):
                self.handles.append(module.register_forward_hook(lambda m, a, out: self._matmul(m, out, out.shape[1])))
            elif name.endswith("Attention") and hasattr(module, "head_dim"):  # Llama, SigLIP: (B, S, hidden) in
                self.handles.append(module.register_forward_hook(self._attention, with_kwargs=True))
            elif name.endswith("AttnBlock"):  # the VQ's single-head conv attention: (B, C, H, W) in
                self.handles.append(module.register_forward_hook(self._conv_attention))

    def _matmul(self, module, output, channels: int) -> None:
        macs = output.numel() // channels * module.weight.numel()  # weight elements x positions applied to
        if module.weight.requires_grad:
            self.terms["trained"] += 6 * macs
        elif output.requires_grad:
            self.terms["frozen_backprop"] += 4 * macs
        else:
            self.terms["frozen_forward"] += 2 * macs

    def _attention(self, module, args, kwargs, output) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        batch, seq = hidden.shape[0], hidden.shape[1]
        heads = getattr(module, "num_heads", None) or module.config.num_attention_heads
        out = output[0] if isinstance(output, tuple) else output
        self.terms["attention"] += 4 * batch * seq * seq * heads * module.head_dim * (3 if out.requires_grad else 1)

    def _conv_attention(self, module, args, output) -> None:
        batch, channels, height, width = args[0].shape
        positions = height * width
        self.terms["attention"] += 4 * batch * positions * positions * channels * (3 if output.requires_grad else 1)

    def total(self) -> int:
        return sum(self.terms.values())

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def count_flops(spec: dict) -> dict:
    """FLOPs per sample of one forward + backward of the edit objective on one batch: by the
    docstring's formula (``formula``, with its ``terms``) and by ``FlopCounterMode`` (``counted``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from uniedit_cli import registry
    from uniedit_cli.models.base import load_model
    from uniedit_cli.train import config as train_config
    from uniedit_cli.train import data as data_mod
    from uniedit_cli.train import objectives

    config = train_config.load_config(None, _train_options(spec, Path(spec["work"]) / "flops"))
    resolved = registry.resolve(config.model, config.family)
    train_config.resolve(config, resolved.family)
    device = "cuda" if spec["device"] == "cuda" else "cpu"
    adapter = load_model(resolved, device=device, dtype="fp32")
    trainee = objectives.trainee_for(adapter)
    tune = config.tune
    lora = objectives.LoraSettings(tune.lora_rank, float(tune.lora_alpha), tune.lora_dropout, tune.lora_targets) \
        if tune.lora else None
    trainee.configure(freeze=list(tune.freeze), lora=lora)
    data = data_mod.load_edit_data(config.data, seed=0)
    resolution = trainee.check_resolution(None)
    rows = data_mod.EditRows(data.train, data.columns, base_dir=data.base_dir, resolution=resolution,
                             crop=config.data.crop, random_flip=False, seed=0, skip_log=None)
    batch = objectives.adapter_batch(data_mod.collate_rows([rows[i] for i in range(spec["batch"])]),
                                     drop_text_prob=0.0, drop_image_prob=0.0)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16")
    formula = FormulaFlops(trainee.root)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            with autocast:
                loss = trainee.training_loss(batch)
            loss.backward()
    finally:
        formula.close()
    result = {"formula": formula.total() / spec["batch"], "counted": counter.get_total_flops() / spec["batch"],
              "terms": {k: v / spec["batch"] for k, v in formula.terms.items()}}
    del adapter, trainee, batch, loss
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def worker(spec: dict) -> dict:
    import torch
    from rich.console import Console

    from uniedit_cli.errors import UniEditError
    from uniedit_cli.train import config as train_config
    from uniedit_cli.train import loop

    cuda = spec["device"] == "cuda"
    out: dict = {"batch": spec["batch"], "lora": spec["lora"], "checkpointing": spec["checkpointing"]}
    try:
        if not spec["no_flops"]:
            flops = count_flops(spec)
            out.update(flops_per_sample=flops["formula"], counted_flops_per_sample=flops["counted"],
                       flops_terms=flops["terms"])
    except torch.cuda.OutOfMemoryError:
        return {**out, "oom": True, "where": "flop count"}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run_dir = Path(spec["work"]) / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = train_config.load_config(None, _train_options(spec, run_dir))
    console = Console(stderr=True, force_terminal=False)
    try:
        loop.run(config, console=console, command=["benchmarks/train_janus_gpu.py"])
    except UniEditError as exc:
        if "out of memory" in str(exc):
            return {**out, "oom": True, "where": "training"}
        raise
    records = [json.loads(line) for line in (run_dir / loop.METRICS_FILE).read_text().splitlines() if line.strip()]
    timed = [r for r in records if r["step"] > spec["warmup"]]
    start = next(r for r in records if r["step"] == spec["warmup"])
    seconds = timed[-1]["elapsed"] - start["elapsed"]
    out.update({
        "oom": False, "steps_timed": len(timed), "seconds": seconds,
        "samples_per_second": len(timed) * spec["batch"] / seconds, "final_loss": timed[-1]["loss"],
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
    })
    shutil.rmtree(run_dir, ignore_errors=True)  # final/ of a 2B model is 8 GB of fp32
    return out


# --- the driver ----------------------------------------------------------------------------------

def _prepare(work: Path, tiny: bool, image_size: int) -> tuple[Path, Path]:
    import torch

    from uniedit_cli.models import janus

    model_dir, data_dir = work / ("janus-tiny" if tiny else "janus-pro-1b-random"), work / f"data-{image_size}"
    if not (model_dir / "uniedit.json").exists():
        started = time.perf_counter()
        dims = janus.TINY_DIMS if tiny else janus.JANUS_PRO_1B_DIMS
        janus.build_random(model_dir, dims, name=model_dir.name, save_dtype=None if tiny else torch.bfloat16)
        print(f"built {model_dir} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if not (data_dir / "uniedit-data.json").exists():
        subprocess.run([sys.executable, "-m", "uniedit_cli", "synth", "--num-rows", "96", "--size", str(image_size),
                        "--holdout", "0", "--out", str(data_dir)], check=True, stdout=subprocess.DEVNULL)
    return model_dir, data_dir


def _launch(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        if "out of memory" in proc.stderr.lower():
            return {"batch": spec["batch"], "lora": spec["lora"], "checkpointing": spec["checkpointing"], "oom": True,
                    "where": "process"}
        raise SystemExit(f"worker failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true", help="janus-tiny's sizes (CPU smoke test)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--modes", default="full,lora", help="comma list of full, lora")
    parser.add_argument("--checkpointing", help="comma list of off, on (gradient checkpointing); default off, "
                        "or off,on with --find-max-batch")
    parser.add_argument("--find-max-batch", action="store_true")
    parser.add_argument("--max-batch", type=int, default=256, help="stop doubling here")
    parser.add_argument("--peak-flops", type=float, default=H100_SXM_BF16, help="the device's peak FLOP/s")
    parser.add_argument("--work", type=Path, help="where the model, data and runs go (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    work = args.work or Path(tempfile.mkdtemp(prefix="janus-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    from uniedit_cli.models import janus

    dims = janus.TINY_DIMS if args.tiny else janus.JANUS_PRO_1B_DIMS
    model_dir, data_dir = _prepare(work, args.tiny, dims.image_size)
    base = {"model": str(model_dir), "data": str(data_dir), "device": device, "precision": args.precision,
            "steps": args.steps, "warmup": args.warmup, "work": str(work), "no_flops": False}
    checkpointing = args.checkpointing or ("off,on" if args.find_max_batch else "off")
    results = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        for ckpt in [c.strip() for c in checkpointing.split(",") if c.strip()]:
            spec = {**base, "lora": mode == "lora", "checkpointing": ckpt == "on", "batch": args.batch_size}
            result = _launch(spec)
            result["mode"] = mode
            if args.find_max_batch and not result["oom"]:
                largest, batch = args.batch_size, args.batch_size * 2
                while batch <= args.max_batch:
                    probe = _launch({**spec, "batch": batch, "no_flops": True, "steps": 2, "warmup": 1})
                    if probe["oom"]:
                        break
                    largest, batch = batch, batch * 2
                result["max_batch"] = largest
                result["max_batch_note"] = f"{largest * 2} ran out of memory" if batch <= args.max_batch else \
                    f"stopped at --max-batch {args.max_batch}"
            results.append(result)

    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    for r in results:
        if not r["oom"] and r.get("flops_per_sample"):
            r["mfu"] = r["flops_per_sample"] * r["samples_per_second"] / args.peak_flops
            r["mfu_counted"] = r["counted_flops_per_sample"] * r["samples_per_second"] / args.peak_flops
    summary = {"model": "janus-tiny" if args.tiny else "Janus-Pro-1B architecture, random weights", "device": gpu,
               "precision": args.precision, "peak_flops": args.peak_flops, "results": results}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"uniedit train, {summary['model']}, {args.precision}, {gpu}")
    for col in ("mode", "ckpt", "batch", "samples/s", "GFLOP/sample", "counted", "MFU", "peak alloc GiB",
                "peak reserved GiB", "max batch"):
        table.add_column(col, justify="right")
    for r in results:
        if r["oom"]:
            table.add_row(r["mode"], "on" if r["checkpointing"] else "off", str(r["batch"]), "out of memory",
                          *[""] * 6)
            continue
        gib = (lambda v: "-" if v is None else f"{v:.1f}")
        table.add_row(
            r["mode"], "on" if r["checkpointing"] else "off", str(r["batch"]), f"{r['samples_per_second']:.2f}",
            f"{r['flops_per_sample'] / 1e9:,.4g}", f"{r['counted_flops_per_sample'] / 1e9:,.4g}",
            f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-",
            gib(r["peak_allocated_gib"]), gib(r["peak_reserved_gib"]), str(r.get("max_batch", "-")))
    Console().print(table)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
