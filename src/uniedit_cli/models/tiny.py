"""Tiny random-weight models, built locally from config: the registry's ``*-tiny`` names.

They let every command (and training, and the tests) run on a fresh machine with no
downloads. Each family module provides a builder ``build(folder, seed)`` that writes a
folder loadable by the same code as a real checkpoint (``save_pretrained`` layout,
safetensors, a tokenizer trained here on a small built-in corpus) plus ``uniedit.json``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from uniedit_cli.errors import UsageError

TINY_BUILDERS: dict[str, str] = {
    "janus-tiny": "uniedit_cli.models.janus:build_tiny",
    "ip2p-tiny": "uniedit_cli.models.diffusers_edit:build_tiny_ip2p",
    "flux-kontext-tiny": "uniedit_cli.models.diffusers_edit:build_tiny_flux_kontext",
    "qwen-image-edit-tiny": "uniedit_cli.models.diffusers_edit:build_tiny_qwen_image_edit",
    "qwen2.5-vl-tiny": "uniedit_cli.models.vlm:build_tiny_vlm",
    "qwen2.5-tiny": "uniedit_cli.models.vlm:build_tiny_llm",
}

# Words the tiny tokenizers learn merges for: the vocabulary of edit instructions, VQA
# questions and the scene world. Any other text still encodes (byte-level fallback).
CORPUS = [
    "make the sky stormy", "a red cube left of a blue ball", "what is on the wall?",
    "If the object left of the sphere is red, turn it into a cylinder; otherwise change nothing.",
    "Add a new object that has the same color as the large cube.",
    "Write the answer on a whiteboard in a neat font.", "How many cylinders are there?",
    "What color is the small metal sphere behind the green cube?", "Is there a yellow cone?",
    "Replace the large rubber cylinder with a purple one.", "remove the gray triangle",
    "red green blue yellow purple cyan brown gray white black orange pink",
    "cube sphere cylinder cone ball block triangle square circle star",
    "small large big tiny medium metal rubber matte shiny striped dotted plain",
    "left right front behind above below on under next to near between inside",
    "the a an of to in with and or not if then else otherwise same different",
    "zero one two three four five six seven eight nine ten",
    "What is the man holding? A photo of a dog on a couch. The cat sits on the table.",
    "Describe the image. Answer with a single word. Think step by step.",
]


def corpus() -> list[str]:
    return CORPUS * 4


def train_byte_level_bpe(vocab_size: int, special_tokens: list[str], *, lowercase: bool = False):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on :data:`CORPUS` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def write_uniedit_json(folder: Path, *, family: str, name: str, defaults: dict | None = None, **extra) -> None:
    meta = {"family": family, "base_model": name, "tiny": True, "defaults": defaults or {}, **extra}
    (Path(folder) / "uniedit.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def build_tiny(name: str, folder: str | os.PathLike, *, seed: int = 0) -> Path:
    """Build the tiny model ``name`` into ``folder`` atomically (built aside, then renamed)."""
    if name not in TINY_BUILDERS:
        raise UsageError(f"no tiny builder for {name!r}.", hint=f"Tiny models: {', '.join(TINY_BUILDERS)}.")
    module_name, _, func_name = TINY_BUILDERS[name].partition(":")
    builder = getattr(importlib.import_module(module_name), func_name)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        builder(staging, seed=seed)
        if not (staging / "uniedit.json").exists():
            write_uniedit_json(staging, family=_family_of(name), name=name)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / "uniedit.json").exists():  # not another process finishing first
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _family_of(name: str) -> str:
    from uniedit_cli.registry import get_spec

    spec = get_spec(name)
    return spec.family if spec else "unknown"
