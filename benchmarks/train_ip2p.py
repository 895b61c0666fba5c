"""InstructPix2Pix training speed and peak memory: `uniedit train` against diffusers' own
examples/instruct_pix2pix/train_instruct_pix2pix.py, side by side at one tiny configuration.

Both trainers get the same model (the registry's ip2p-tiny architecture, random weights, saved
locally), the same parquet data (input_image / edit_prompt / edited_image), resolution, batch
size, learning rate, AdamW settings, conditioning dropout 0.05, fp32, no EMA, no validation and
no checkpoints. diffusers' script starts from a Stable Diffusion UNet (4 input channels) and widens
its first convolution to 8 with zeros (InstructPix2Pix sec. 3.2.1), so it gets a copy whose UNet
has the first 4 input channels of ours; after its widening both train the same architecture.

Speed is the steady state of each training process: a global optimizer-step hook (installed by
a small wrapper that runs either script unchanged) records wall and CPU time (``time.process_time``)
after every optimizer step, and

    samples/s = (steps - warmup) * batch / (time at the last step - time at step ``warmup``)

so start-up, model loading, data loading set-up and the final save are left out for both. The
CPU-time figure is what other load on a shared machine disturbs least (with --threads 1 it equals
the wall-time figure on an idle machine). Runs alternate between the trainers, --repeats times;
medians are reported.

Peak memory, three readings per run:

- training peak RSS: the process's ru_maxrss read by the wrapper at the last optimizer step (start-up,
  model loading and every training step, the final save left out) — the comparison that matters;
- process peak RSS: ru_maxrss from wait4, the whole process to its exit. It adds ~80 MiB to both
  trainers during interpreter shutdown (library destructors page in parts of the CUDA build's
  shared objects), which varies ±20 MiB from run to run, so it is shown but not compared;
- on CUDA, torch.cuda.max_memory_allocated at exit.

The CLI stack that ``uniedit`` imports and diffusers' script does not (typer, which coerces every
parameter through pydantic, rich, and uniedit_cli's own modules) is measured on its own in a
separate process (after the libraries both import) and printed beside the ratio, so a gap of that size is read as what it is.

    python benchmarks/train_ip2p.py --threads 1 \
        --peer /path/to/diffusers/examples/instruct_pix2pix/train_instruct_pix2pix.py

The peer script is not part of this repository: pass the path of a diffusers checkout's copy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs a script or module unchanged; times every optimizer step and reports the CUDA peak at exit.
WRAPPER = r"""
import atexit, runpy, sys, time
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
import resource
_steps = []
_rss = [0]
def _hook(optimizer, args, kwargs):
    _steps.append((time.perf_counter(), time.process_time()))
    _rss[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
register_optimizer_step_post_hook(_hook)
def _report():
    print("UNIEDIT_BENCH_STEPS=" + ";".join(f"{w:.6f},{c:.6f}" for w, c in _steps), file=sys.stderr)
    print(f"UNIEDIT_BENCH_TRAIN_MAXRSS_KIB={_rss[0]}", file=sys.stderr)
    if torch.cuda.is_available():
        print(f"UNIEDIT_BENCH_CUDA_PEAK={torch.cuda.max_memory_allocated()}", file=sys.stderr)
atexit.register(_report)
kind, target, *rest = sys.argv[1:]
sys.argv = [target, *rest]
if kind == "module":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    runpy.run_path(target, run_name="__main__")
"""


def build_models(root: Path) -> tuple[Path, Path]:
    """Our tiny InstructPix2Pix folder, and the peer's copy with a 4-input-channel UNet."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    from uniedit_cli.models.tiny import build_tiny

    ours = build_tiny("ip2p-tiny", root / "ip2p-tiny")
    peer = root / "peer-model"
    shutil.copytree(ours, peer)
    unet = UNet2DConditionModel.from_pretrained(str(ours / "unet"))
    config = dict(unet.config)
    config["in_channels"] = 4
    narrow = UNet2DConditionModel.from_config(config)
    state = unet.state_dict()
    state["conv_in.weight"] = state["conv_in.weight"][:, :4].clone()
    narrow.load_state_dict(state)
    shutil.rmtree(peer / "unet")
    narrow.save_pretrained(str(peer / "unet"), safe_serialization=True)
    (peer / "uniedit.json").unlink(missing_ok=True)
    del torch
    return ours, peer


def build_data(folder: Path, rows: int, size: int) -> Path:
    """``rows`` edit pairs (a shape changes colour) as one parquet shard in ``folder/train/``."""
    import datasets
    from PIL import Image, ImageDraw

    colors = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (240, 220, 40)]
    names = ["red", "green", "blue", "yellow"]
    columns: dict[str, list] = {"input_image": [], "edit_prompt": [], "edited_image": []}

    def draw(color, round_shape):
        img = Image.new("RGB", (size, size), (235, 235, 235))
        box = [size // 4, size // 4, 3 * size // 4, 3 * size // 4]
        (ImageDraw.Draw(img).ellipse if round_shape else ImageDraw.Draw(img).rectangle)(box, fill=color)
        return img

    for i in range(rows):
        a, b = i % 4, (i + 1 + i // 4) % 4
        columns["input_image"].append(draw(colors[a], i % 2 == 0))
        columns["edit_prompt"].append(f"turn the {names[a]} shape {names[b]}")
        columns["edited_image"].append(draw(colors[b], i % 2 == 0))
    features = datasets.Features({"input_image": datasets.Image(), "edit_prompt": datasets.Value("string"),
                                  "edited_image": datasets.Image()})
    (folder / "train").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(folder / "train" / "data-00000-of-00001.parquet"))
    return folder


def run_measured(argv: list[str], env: dict, log: Path, *, warmup: int, batch: int) -> dict:
    """Run ``argv``; steady-state speed from the step times the wrapper printed, peak RSS from wait4."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    if code != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise SystemExit(f"command failed ({code}): {' '.join(argv)}\n--- {log} (tail) ---\n{tail}")
    cuda = [int(line.split("=", 1)[1]) for line in text.splitlines() if line.startswith("UNIEDIT_BENCH_CUDA_PEAK=")]
    trained = [int(line.split("=", 1)[1]) for line in text.splitlines()
               if line.startswith("UNIEDIT_BENCH_TRAIN_MAXRSS_KIB=")]
    lines = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("UNIEDIT_BENCH_STEPS=")]
    steps = [tuple(map(float, item.split(","))) for item in lines[-1].split(";") if item] if lines else []
    if len(steps) <= warmup + 1:
        raise SystemExit(f"only {len(steps)} optimizer steps were timed in {log}; raise --steps above --warmup.")
    (w0, c0), (w1, c1) = steps[warmup], steps[-1]
    timed = (len(steps) - 1 - warmup) * batch
    return {"steps": len(steps), "samples_per_second": timed / (w1 - w0), "samples_per_cpu_second": timed / (c1 - c0),
            "train_rss_mib": trained[-1] / 1024 if trained else None, "max_rss_mib": usage.ru_maxrss / 1024,
            "cuda_peak_mib": cuda[-1] / 2**20 if cuda else None}


# current RSS (not ru_maxrss: the libraries' import leaves a high-water mark the CLI stack fits under)
CLI_STACK = """
import os
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
import accelerate, datasets, diffusers, torch, transformers  # both trainers import these
before = rss()
import rich.progress, typer._adapters, uniedit_cli.cli, uniedit_cli.train.loop  # typer._adapters: pydantic
print(rss() - before)
"""


def cli_stack_mib(env: dict) -> float:
    """RSS that importing uniedit's CLI stack adds on top of the libraries both trainers import,
    median of 3 processes."""
    runs = [float(subprocess.run([sys.executable, "-c", CLI_STACK], env=env, capture_output=True, text=True,
                                 check=True).stdout) for _ in range(3)]
    return statistics.median(runs)


def peer_argv(peer_script: Path, model: Path, data: Path, out: Path, steps: int, args) -> list[str]:
    return [sys.executable, "-c", WRAPPER, "path", str(peer_script),
            "--pretrained_model_name_or_path", str(model), "--dataset_name", str(data),
            "--resolution", str(args.resolution), "--train_batch_size", str(args.batch_size),
            "--max_train_steps", str(steps), "--learning_rate", str(args.lr), "--lr_scheduler", "constant",
            "--lr_warmup_steps", "0", "--conditioning_dropout_prob", "0.05", "--seed", "0",
            "--checkpointing_steps", "1000000", "--dataloader_num_workers", "0", "--output_dir", str(out),
            "--mixed_precision", "no", "--max_grad_norm", "1.0"]


def ours_argv(model: Path, data: Path, out: Path, steps: int, args) -> list[str]:
    return [sys.executable, "-c", WRAPPER, "module", "uniedit_cli", "train",
            "--model", str(model), "--data", str(data), "--out", str(out),
            "--resolution", str(args.resolution), "--batch-size", str(args.batch_size), "--max-steps", str(steps),
            "--lr", str(args.lr), "--schedule", "constant", "--warmup-steps", "0", "--crop", "resize",
            "--drop-text-prob", "0.05", "--drop-image-prob", "0.05", "--seed", "0", "--save-every", "0",
            "--val-size", "0", "--val-every", "0", "--num-workers", "0", "--precision", "fp32",
            "--max-grad-norm", "1.0", "--log-every", "1000000", "--device", args.device]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", type=Path, required=True,
                        help="path to diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py")
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rows", type=int, default=64, help="training rows")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for both (default: unchanged)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (logs, runs)")
    args = parser.parse_args()
    if not args.peer.is_file():
        parser.error(f"--peer {args.peer}: no such file")
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup + 1")

    work = args.keep or Path(tempfile.mkdtemp(prefix="uniedit-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "UNIEDIT_LAUNCHED"}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "UNIEDIT_HOME": str(work / "home"), "HF_DATASETS_CACHE": str(work / "datasets-cache"),
                "PYTHONUNBUFFERED": "1"})
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.update({k: env[k] for k in ("UNIEDIT_HOME", "HF_DATASETS_CACHE")})
    ours_model, peer_model = build_models(work / "models")
    data = build_data(work / "data", args.rows, args.resolution)

    results: dict[str, list] = {"uniedit": [], "diffusers": []}
    for repeat in range(args.repeats):
        for name in ("diffusers", "uniedit") if repeat % 2 == 0 else ("uniedit", "diffusers"):
            out = work / "runs" / f"{name}-{repeat}"
            argv = (peer_argv(args.peer, peer_model, data, out, args.steps, args) if name == "diffusers"
                    else ours_argv(ours_model, data, out, args.steps, args))
            measured = run_measured(argv, env, work / f"{name}-{repeat}.log", warmup=args.warmup, batch=args.batch_size)
            results[name].append(measured)
            print(f"  {name:<9} {measured['samples_per_second']:7.2f} samples/s  {measured['samples_per_cpu_second']:7.2f} "
                  f"samples/CPU-s  training peak RSS {measured['train_rss_mib']:6.0f} MiB  process peak "
                  f"{measured['max_rss_mib']:6.0f} MiB"
                  + (f"  CUDA {measured['cuda_peak_mib']:.0f} MiB" if measured["cuda_peak_mib"] else ""), flush=True)

    summary = {}
    for name, runs in results.items():
        cuda = [r["cuda_peak_mib"] for r in runs if r["cuda_peak_mib"]]
        summary[name] = {key: statistics.median(r[key] for r in runs)
                         for key in ("samples_per_second", "samples_per_cpu_second", "train_rss_mib", "max_rss_mib")}
        summary[name]["cuda_peak_mib"] = statistics.median(cuda) if cuda else None
    ours, peer = summary["uniedit"], summary["diffusers"]
    ratio = ours["samples_per_second"] / peer["samples_per_second"]
    cpu_ratio = ours["samples_per_cpu_second"] / peer["samples_per_cpu_second"]
    mem_ratio = ours["train_rss_mib"] / peer["train_rss_mib"]
    stack = cli_stack_mib(env)
    print(f"\nip2p-tiny architecture, {args.resolution}px, batch {args.batch_size}, fp32, {args.steps} steps "
          f"(first {args.warmup} not timed), {args.repeats} repeats, OMP_NUM_THREADS={env.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'trainer':<10} {'samples/s':>10} {'samples/CPU-s':>14} {'training peak RSS MiB':>22} "
          f"{'process peak RSS MiB':>21} {'CUDA peak MiB':>14}")
    for name, row in summary.items():
        cuda = f"{row['cuda_peak_mib']:.0f}" if row["cuda_peak_mib"] else "-"
        print(f"{name:<10} {row['samples_per_second']:>10.2f} {row['samples_per_cpu_second']:>14.2f} "
              f"{row['train_rss_mib']:>22.0f} {row['max_rss_mib']:>21.0f} {cuda:>14}")
    gap = ours["train_rss_mib"] - peer["train_rss_mib"]
    print(f"uniedit / diffusers: speed {ratio:.3f} (wall), {cpu_ratio:.3f} (CPU time); training peak RSS "
          f"{mem_ratio:.3f} ({gap:+.0f} MiB; importing the CLI stack, typer + pydantic + rich + uniedit_cli, "
          f"adds {stack:.0f} MiB on top of torch, diffusers, transformers, datasets and accelerate)")
    if args.json:
        args.json.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                         "speed_ratio": ratio, "cpu_speed_ratio": cpu_ratio, "peak_rss_ratio": mem_ratio,
                                         "cli_stack_mib": stack,
                                         "runs": results}, indent=2) + "\n")
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
