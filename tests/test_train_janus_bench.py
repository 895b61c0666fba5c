"""benchmarks/train_janus_gpu.py: the Janus-Pro-1B architecture it builds, and the benchmark itself
at janus-tiny's size on CPU (the GPU numbers come from a lent GPU; see the README's benchmarks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_janus_gpu.py"


def test_janus_pro_1b_dims_give_the_published_architecture(tiny_model):
    import torch
    from transformers import JanusForConditionalGeneration, PreTrainedTokenizerFast

    from uniedit_cli.models import janus

    tokenizer = PreTrainedTokenizerFast.from_pretrained(tiny_model("janus-tiny"))
    dims = janus.JANUS_PRO_1B_DIMS
    config = janus.janus_config(dims, tokenizer)
    with torch.device("meta"):  # shapes only: 2B parameters, no memory
        model = JanusForConditionalGeneration(config)

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    # deepseek-community/Janus-Pro-1B holds 2.09B parameters (4.2 GB of bf16 safetensors)
    assert 2.0e9 < count(model) < 2.15e9
    assert model.lm_head.weight is not model.model.language_model.embed_tokens.weight  # untied, as released
    assert config.text_config.vocab_size == 102400 and config.text_config.num_hidden_layers == 24
    assert 0.29e9 < count(model.model.vision_model) < 0.32e9  # SigLIP-L
    assert dims.num_image_tokens == config.vision_config.num_image_tokens == 576  # 24 x 24 at 384 px
    assert config.vq_config.num_embeddings == 16384 and config.vq_config.embed_dim == 8


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_janus_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_worker_trains_tiny_janus_and_its_flop_formula_matches_the_counter(tiny_model, tmp_path):
    """The benchmark's worker in-process at janus-tiny's size: trains through ``uniedit train``
    and the docstring's FLOP formula lands within a few percent of FlopCounterMode's count."""
    from typer.testing import CliRunner

    from uniedit_cli.cli import app, set_invoked_argv

    data = tmp_path / "data"
    args = ["synth", "--num-rows", "12", "--size", "32", "--holdout", "0", "--out", str(data), "--seed", "0"]
    set_invoked_argv(args)
    assert CliRunner().invoke(app, args, catch_exceptions=False).exit_code == 0
    bench = _bench_module()
    spec = {"model": str(tiny_model("janus-tiny")), "data": str(data), "device": "cpu", "precision": "bf16",
            "steps": 2, "warmup": 1, "work": str(tmp_path / "work"), "no_flops": False, "batch": 4}
    full = bench.worker({**spec, "lora": False, "checkpointing": False})
    lora = bench.worker({**spec, "lora": True, "checkpointing": True})
    for r in (full, lora):
        assert not r["oom"] and r["steps_timed"] == 2 and r["samples_per_second"] > 0
        assert abs(r["flops_per_sample"] / r["counted_flops_per_sample"] - 1) < 0.1, r
        assert r["flops_terms"]["attention"] > 0 and r["flops_terms"]["frozen_forward"] > 0  # SigLIP, the VQ
    assert full["flops_terms"]["frozen_backprop"] == 0 < lora["flops_terms"]["frozen_backprop"]  # LoRA's base layers
    assert lora["flops_terms"]["trained"] < full["flops_terms"]["trained"]


def _run(tmp_path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--steps", "2", "--warmup", "1", "--json",
                           "--work", str(tmp_path / "work"), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


@pytest.mark.slow
def test_benchmark_trains_through_uniedit_train_and_counts_flops(tmp_path):
    summary = _run(tmp_path, "--device", "cpu", "--precision", "fp32")
    full, lora = summary["results"]
    assert (full["mode"], lora["mode"]) == ("full", "lora")
    for r in (full, lora):
        assert not r["oom"] and r["steps_timed"] == 2 and r["samples_per_second"] > 0
        assert r["flops_per_sample"] > 0 and r["mfu"] > 0
    # a lower bound from the language model alone: 6 FLOPs per weight per token (forward and
    # backward) over janus-tiny's 2 layers (q, o 32x32; k, v 32x16 with 2 KV heads; MLP 3 x 32x64)
    # and the 63 teacher-forced image tokens
    lm_weights = 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64)
    assert full["flops_per_sample"] > 6 * lm_weights * 63
    # LoRA swaps the base weights' gradients for the adapters' matmuls: a different count
    assert lora["flops_per_sample"] != full["flops_per_sample"]


@pytest.mark.gpu
def test_benchmark_on_gpu_reports_memory(tmp_path):
    summary = _run(tmp_path, "--device", "cuda", "--modes", "full")
    (r,) = summary["results"]
    assert r["peak_allocated_gib"] > 0 and r["peak_reserved_gib"] >= r["peak_allocated_gib"]
