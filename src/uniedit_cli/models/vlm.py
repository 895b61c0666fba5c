"""Transformers vision-language models (``ask``, the judge of ``synth``/``eval``) and text LLMs
(the instruction rewriter of ``synth``).

Two adapters over stock transformers classes, so any checkpoint of a supported architecture
loads the same way from the hub, the HF cache or a local folder:

- :class:`VLMAdapter` (family ``vlm``): ``AutoModelForImageTextToText`` + ``AutoProcessor``.
  Written against Qwen2.5-VL (``Qwen/Qwen2.5-VL-7B-Instruct``) but uses only the generic
  processor chat-template path, so other image-text-to-text models (LLaVA, Idefics3, ...)
  work too.
- :class:`LLMAdapter` (family ``llm``): ``AutoModelForCausalLM`` + ``AutoTokenizer``.

Both generate batched with left padding (decoder-only models continue from the right end of
each row) and return only the new text. User text goes through the chat template with
``sanitize_control_tokens=True``: a question or prompt that happens to contain
``<|im_end|>`` or ``<|image_pad|>`` (OCR data does) is encoded as plain text instead of
closing the turn or adding an image placeholder with no image behind it.

The module also builds the registry's tiny models (``qwen2.5-vl-tiny``, ``qwen2.5-tiny``):
real Qwen2.5-VL / Qwen2 checkpoints with random weights and a locally trained tokenizer,
written in the same layout as the hub checkpoints and loaded by the same code.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

from uniedit_cli.errors import UniEditError, UsageError
from uniedit_cli.models.base import Adapter, make_generator

# A cap on visual tokens per image when the processor's own bound is looser. Qwen2.5-VL's
# published preprocessor_config allows max_pixels = 12,845,056 (16,384 tokens of 28x28 px):
# a 4K frame would become ~10k tokens. 1,280 tokens (28*28*1280 px, about 1 Mpx) is the bound
# transformers' Qwen2-VL image processor itself defaults to and the one Qwen's model card
# suggests for memory-bound runs; callers can pass ``max_pixels`` to go lower or higher.
DEFAULT_MAX_IMAGE_TOKENS = 1280

# For processors without a pixel budget (fixed-size ones such as LLaVA's): images are still
# shrunk to this area before preprocessing so a huge input never becomes a huge float tensor.
GENERIC_MAX_PIXELS = 2048 * 2048

# Qwen's control tokens, in the order the tiny tokenizers reserve ids for them.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


# --- shared generation helpers ----------------------------------------------------------------


def _check_batch(name_a: str, a: list, name_b: str, b: list) -> None:
    if len(a) != len(b):
        raise UsageError(f"got {len(a)} {name_a} but {len(b)} {name_b}: pass one of each per item.")


def _check_positive(name: str, value: int) -> int:
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be an integer, got {value!r}.") from None
    if value < 1:
        raise UsageError(f"{name} must be at least 1, got {value}.")
    return value


# transformers' global defaults for the sampling-only knobs (GenerationConfig
# ._get_default_generation_params): values greedy search neither uses nor warns about.
_NEUTRAL_SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": 50, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                     "eta_cutoff": 0.0}


def _generation_config(model, tokenizer, *, max_new_tokens: int):
    """A greedy GenerationConfig derived from the checkpoint's own.

    The checkpoint's file keeps what matters (eos ids: Qwen chat models stop on ``<|im_end|>``
    and ``<|endoftext|>``; its repetition penalty) while its sampling knobs are cleared, because
    the published Qwen configs set ``do_sample=True``: a judge must answer the same way each
    time. Sampling, where wanted, is done by :class:`_PerRowSampler`.
    """
    cfg = copy.deepcopy(model.generation_config)
    cfg.do_sample = False
    cfg.num_beams = 1
    # Neutral values, not None: generate() fills None fields back in from the checkpoint's
    # generation_config (and would then warn that they are ignored in greedy mode).
    cfg.update(**_NEUTRAL_SAMPLING)
    cfg.max_new_tokens = int(max_new_tokens)
    cfg.max_length = None
    if cfg.pad_token_id is None:
        cfg.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if cfg.eos_token_id is None:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in eos:
            eos.append(im_end)
        cfg.eos_token_id = eos or None
    return cfg


class _PerRowSampler:
    """A logits processor that samples each row from its own seeded generator.

    ``generate(do_sample=True)`` draws every row from the one global RNG, so a prompt's output
    would depend on its batch neighbours and on the batch size. Here each row draws from a
    CPU ``torch.Generator`` seeded with that row's seed, then the logits are masked to the
    drawn token so the (greedy) search loop takes it. Result: ``rewrite([p], seeds=[s])`` gives
    the same text as ``p`` with seed ``s`` at any position in any batch of any size. (The draws
    come from CPU generators, so a seed draws the same numbers on every device; the logits
    themselves still differ in the last bits between devices and dtypes.)
    """

    def __init__(self, seeds: list[int], *, temperature: float, top_p: float, top_k: int):
        self.generators = [make_generator(s) for s in seeds]
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.detach().float().cpu() / self.temperature
        if self.top_k > 0 and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token always stays)
            drop = (sorted_probs.cumsum(-1) - sorted_probs) >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        chosen = torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), chosen.to(scores.device)] = 0.0
        return out


def _decode_new(tokenizer, sequences, prompt_len: int) -> list[str]:
    """Decode what generate added after the (left-padded) prompt: the answer only."""
    new_tokens = sequences[:, prompt_len:]
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _require_chat_template(obj, what: str, location: str) -> None:
    if not getattr(obj, "chat_template", None):
        raise UniEditError(
            f"{what} at {location!r} has no chat template, so uniedit cannot format a conversation for it.",
            hint="Use an instruction-tuned (chat) checkpoint, or add a chat_template to the folder.",
        )


# --- VLM: ask ---------------------------------------------------------------------------------


def _is_pixel_budget_processor(image_processor) -> bool:
    """Qwen2-VL style processors bound the *area* (min/max pixels), not an edge length."""
    try:
        from transformers import Qwen2VLImageProcessor
    except ImportError:  # pragma: no cover - present in every supported transformers
        return False
    classes: tuple = (Qwen2VLImageProcessor,)
    try:
        from transformers import Qwen2VLImageProcessorPil

        classes += (Qwen2VLImageProcessorPil,)
    except ImportError:  # pragma: no cover - the PIL backend class is optional
        pass
    return isinstance(image_processor, classes)


def shrink_to_area(img, max_pixels: int):
    """Downscale ``img`` (keeping its aspect ratio) so that width * height <= max_pixels.

    Done with PIL before the processor sees the image: the processor would also shrink it, but
    only after turning the full-size image into a float tensor (a 4K frame is ~100 MB of it).
    """
    from PIL import Image

    w, h = img.size
    if w * h <= max_pixels:
        return img
    scale = math.sqrt(max_pixels / float(w * h))
    new_w, new_h = max(1, int(w * scale)), max(1, int(h * scale))
    return img.resize((new_w, new_h), Image.Resampling.BICUBIC)


class VLMAdapter(Adapter):
    """Image + question -> answer with a transformers image-text-to-text model."""

    family = "vlm"

    def __init__(self, resolved, device, dtype):
        super().__init__(resolved, device, dtype)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        location = resolved.location
        # Processor first: it is cheap, and a checkpoint without a chat template fails here,
        # before gigabytes of weights are read.
        self.processor = AutoProcessor.from_pretrained(location, trust_remote_code=False)
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None or not hasattr(self.processor, "image_processor"):
            raise UniEditError(
                f"{resolved.display!r} has no image+text processor (got {type(self.processor).__name__}).",
                hint="The vlm family needs an image-text-to-text checkpoint such as Qwen/Qwen2.5-VL-7B-Instruct.",
            )
        _require_chat_template(self.processor, "the processor", location)
        if self.tokenizer.pad_token is None:  # batching needs a pad id; the eos is never attended
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # device_map puts the weights straight on the target device (a 7B checkpoint is not
        # staged in CPU RAM first); safetensors only, no remote code.
        self.model = AutoModelForImageTextToText.from_pretrained(
            location, dtype=dtype, trust_remote_code=False, use_safetensors=True, device_map={"": device}
        ).eval()

    # -- image bounds --

    def pixel_bounds(self, max_pixels: int | None = None) -> tuple[int | None, int]:
        """``(min_pixels, max_pixels)`` that images are held to.

        The upper bound is the tightest of the processor's own ``max_pixels``, the caller's
        ``max_pixels`` and :data:`DEFAULT_MAX_IMAGE_TOKENS` visual tokens (when the caller gives
        none); the lower bound is the processor's ``min_pixels``.
        """
        ip = self.processor.image_processor
        if not _is_pixel_budget_processor(ip):
            return None, int(max_pixels) if max_pixels else GENERIC_MAX_PIXELS
        size = ip.size
        lo = size.get("shortest_edge") if hasattr(size, "get") else None
        hi = size.get("longest_edge") if hasattr(size, "get") else None
        factor = int(ip.patch_size) * int(ip.merge_size)
        cap = int(max_pixels) if max_pixels else DEFAULT_MAX_IMAGE_TOKENS * factor * factor
        hi = min(int(hi), cap) if hi else cap
        # at least one merged patch, and never below the lower bound (the processor would raise)
        hi = max(hi, factor * factor, int(lo or 0))
        return (int(lo) if lo else None), hi

    def prepare_image(self, img, max_pixels: int | None = None):
        """RGB, bounded to :meth:`pixel_bounds`; refuse shapes the vision tower cannot take.

        ``img`` is a PIL image or a path (read with the same checks as every command's input).
        """
        from uniedit_cli.io import load_image, to_rgb

        img = load_image(img) if isinstance(img, (str, os.PathLike)) else to_rgb(img)
        bounded = shrink_to_area(img, self.pixel_bounds(max_pixels)[1])
        w, h = bounded.size
        if _is_pixel_budget_processor(self.processor.image_processor) and max(w, h) / min(w, h) > 200:
            # Qwen2-VL's smart_resize raises a bare ValueError on this; name the input instead.
            raise UsageError(
                f"image of {img.size[0]}x{img.size[1]} pixels is too elongated for {self.resolved.display!r} "
                "(aspect ratio above 200:1).", hint="Crop or pad it to a less extreme shape.")
        return bounded

    def _image_kwargs(self, max_pixels: int | None) -> dict[str, Any]:
        if not _is_pixel_budget_processor(self.processor.image_processor):
            return {}
        lo, hi = self.pixel_bounds(max_pixels)
        # The processor rounds each side to a multiple of patch*merge; passing the same bound
        # keeps that rounding under the cap too.
        return {"size": {"shortest_edge": lo or 1, "longest_edge": hi}}

    # -- ask --

    def ask(
        self,
        images: list,
        questions: list[str],
        *,
        max_new_tokens: int = 128,
        system: str | None = None,
        batch_size: int = 8,
        max_pixels: int | None = None,
        **_: Any,
    ) -> list[str]:
        """Answer ``questions[i]`` about ``images[i]``, greedily; one string per pair.

        Each pair is one user turn (the image, then the question) after an optional ``system``
        turn (else the template's default). Pairs run ``batch_size`` at a time with left
        padding; greedy decoding makes an answer independent of its batch neighbours. This is
        the call ``synth``'s judge (re-ask the embedded question on an edited image) and
        ``eval`` make directly.
        """
        import torch

        images, questions = list(images), list(questions)
        _check_batch("images", images, "questions", questions)
        if not images:
            return []
        max_new_tokens = _check_positive("max_new_tokens", max_new_tokens)
        batch_size = _check_positive("batch_size", batch_size)
        gen_cfg = _generation_config(self.model, self.tokenizer, max_new_tokens=max_new_tokens)
        image_kwargs = self._image_kwargs(max_pixels)

        answers: list[str] = []
        for start in range(0, len(images), batch_size):
            # images are read and bounded one batch at a time: an eval over thousands of paths
            # never holds more than batch_size decoded images
            conversations = [
                self._conversation(self.prepare_image(img, max_pixels), str(q), system)
                for img, q in zip(images[start:start + batch_size], questions[start:start + batch_size])
            ]
            inputs = self.processor.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                sanitize_control_tokens=True,
                processor_kwargs={"padding": True, "padding_side": "left", **image_kwargs},
            )
            inputs = inputs.to(self.device)
            if "pixel_values" in inputs:  # run the vision tower in the model's dtype
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            with torch.inference_mode():
                sequences = self.model.generate(**inputs, generation_config=gen_cfg)
            answers.extend(_decode_new(self.tokenizer, sequences, inputs["input_ids"].shape[1]))
        return answers

    @staticmethod
    def _conversation(image, question: str, system: str | None) -> list[dict]:
        messages: list[dict] = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": [{"type": "image", "image": image},
                                                      {"type": "text", "text": question}]})
        return messages

    def save(self, folder) -> Path:
        """Write the model (safetensors) and its processor in the hub layout."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        return folder


# --- LLM: rewrite -----------------------------------------------------------------------------


class LLMAdapter(Adapter):
    """Prompt -> text with a transformers causal LM chat model (the instruction rewriter)."""

    family = "llm"

    def __init__(self, resolved, device, dtype):
        super().__init__(resolved, device, dtype)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        location = resolved.location
        self.tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
        _require_chat_template(self.tokenizer, "the tokenizer", location)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, trust_remote_code=False, use_safetensors=True, device_map={"": device}
        ).eval()

    def rewrite(
        self,
        prompts: list[str],
        *,
        system: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seeds: list[int] | None = None,
        batch_size: int = 8,
        **_: Any,
    ) -> list[str]:
        """One chat turn per prompt; returns the assistant's reply, stripped.

        ``temperature == 0`` is greedy (deterministic). Above 0, row ``i`` is sampled from its
        own generator seeded with ``seeds[i]`` (all 0 when not given), so a (prompt, seed) pair
        always gives the same text whatever else is in the batch. ``top_p``/``top_k`` filter the
        sampled distribution (1.0 / 0: off).
        """
        import torch

        prompts = [str(p) for p in prompts]
        if not prompts:
            return []
        try:
            temperature = float(temperature)
            top_p = float(top_p)
        except (TypeError, ValueError):
            raise UsageError(f"temperature and top_p must be numbers, got {temperature!r} and {top_p!r}.") from None
        if temperature < 0:
            raise UsageError(f"temperature must be >= 0 (0 is greedy), got {temperature}.")
        if not 0.0 < top_p <= 1.0:
            raise UsageError(f"top_p must be in (0, 1], got {top_p}.")
        if seeds is None:
            seeds = [0] * len(prompts)
        seeds = [int(s) for s in seeds]
        _check_batch("prompts", prompts, "seeds", seeds)
        max_new_tokens = _check_positive("max_new_tokens", max_new_tokens)
        batch_size = _check_positive("batch_size", batch_size)
        gen_cfg = _generation_config(self.model, self.tokenizer, max_new_tokens=max_new_tokens)

        outputs: list[str] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            conversations = [
                ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}]
                for p in chunk
            ]
            inputs = self.tokenizer.apply_chat_template(
                conversations,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                padding=True,
                sanitize_control_tokens=True,
                tokenizer_kwargs={"padding_side": "left"},
            ).to(self.device)
            extra = {}
            if temperature > 0:
                sampler = _PerRowSampler(seeds[start:start + batch_size], temperature=temperature, top_p=top_p,
                                         top_k=int(top_k))
                extra["logits_processor"] = [sampler]
            with torch.inference_mode():
                sequences = self.model.generate(**inputs, generation_config=gen_cfg, **extra)
            outputs.extend(_decode_new(self.tokenizer, sequences, inputs["input_ids"].shape[1]))
        return outputs

    def save(self, folder) -> Path:
        """Write the model (safetensors) and its tokenizer in the hub layout."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return folder


# --- tiny models ------------------------------------------------------------------------------

# Our own templates, producing the same text as Qwen's published ones for the cases uniedit
# uses (system / user / assistant turns; images and videos as vision_start, a pad, vision_end,
# which the processor expands to one pad per visual token). Every literal is written through
# an expression ({{ '...' }}) so Jinja's whitespace trimming cannot eat a newline.
QWEN_VL_CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- set video_count = namespace(value=0) -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] }}"
    "{%- else -%}"
    "{%- for content in message['content'] -%}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content -%}"
    "{%- set image_count.value = image_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{ 'Picture ' ~ image_count.value ~ ': ' }}{%- endif -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'video' or 'video' in content -%}"
    "{%- set video_count.value = video_count.value + 1 -%}"
    "{%- if add_vision_id -%}{{ 'Video ' ~ video_count.value ~ ': ' }}{%- endif -%}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content -%}"
    "{{ content['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Text tower shared by both tiny models: 2 layers, hidden 64, 4 query / 2 key-value heads
# (grouped-query attention like the real ones), head_dim 16.
_TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    # Larger than the usual 0.02 so a random model's next-token scores are not near-ties:
    # greedy answers then do not flip on float noise between batched and single runs.
    "initializer_range": 0.2,
}
# Vision: 8 px patches merged 2x2 (one LLM token per 16x16 px); min/max pixels of 4 and 16
# tokens, so the 48x40 test image becomes 6 tokens and anything bigger at most 16.
_TINY_PATCH, _TINY_MERGE = 8, 2
_TINY_FACTOR = _TINY_PATCH * _TINY_MERGE
_TINY_MIN_PIXELS = 4 * _TINY_FACTOR ** 2
_TINY_MAX_PIXELS = 16 * _TINY_FACTOR ** 2


def tiny_qwen_tokenizer(chat_template: str, *, model_max_length: int = 32768):
    """A ``Qwen2Tokenizer`` (byte-level BPE, Qwen's pre-tokenizer) trained on the built-in corpus.

    The merges are learned by :func:`uniedit_cli.models.tiny.train_byte_level_bpe`; the vocab and
    merges are then handed to transformers' own ``Qwen2Tokenizer`` so the saved folder has
    Qwen's normaliser, split regex and decoder and loads through ``AutoTokenizer`` like the
    real one. Qwen's control tokens are registered as special (never split, skipped on decode).
    """
    from transformers import Qwen2Tokenizer

    from uniedit_cli.models.tiny import train_byte_level_bpe

    trained = json.loads(train_byte_level_bpe(1024, QWEN_SPECIAL_TOKENS).to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",  # a chat checkpoint's turn end, as in Qwen's instruct tokenizers
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = chat_template
    return tokenizer


def _generation_file(tokenizer):
    """Token ids as in Qwen's generation_config.json, with its sampling defaults (which the
    adapters deliberately override: ask is greedy, rewrite samples per row)."""
    from transformers import GenerationConfig

    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return GenerationConfig(bos_token_id=eot, pad_token_id=eot, eos_token_id=[im_end, eot],
                            do_sample=True, temperature=0.7, top_p=0.8, top_k=20)


def build_tiny_vlm(folder: Path, *, seed: int = 0) -> None:
    """A random-weight Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor``)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from uniedit_cli.models.tiny import write_uniedit_json

    folder = Path(folder)
    tokenizer = tiny_qwen_tokenizer(QWEN_VL_CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            **_TINY_TEXT,
            "vocab_size": len(tokenizer),
            # mrope splits the 8 rotary frequency pairs of head_dim 16 over (time, height, width)
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": _TINY_PATCH,
            "spatial_merge_size": _TINY_MERGE,
            "temporal_patch_size": 2,
            # 32 px windows = 2x2 merged tokens (the real 112 px = 4x4 of 28 px); block 1 is
            # full attention, like every 8th block of the real 32-block tower.
            "window_size": 2 * _TINY_FACTOR,
            "fullatt_block_indexes": [1],
            "out_hidden_size": _TINY_TEXT["hidden_size"],
            "tokens_per_second": 2,
            "initializer_range": 0.2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = _generation_file(tokenizer)

    pixels = {"min_pixels": _TINY_MIN_PIXELS, "max_pixels": _TINY_MAX_PIXELS, "patch_size": _TINY_PATCH,
              "merge_size": _TINY_MERGE, "temporal_patch_size": 2}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    write_uniedit_json(folder, family="vlm", name="qwen2.5-vl-tiny", defaults={"max_new_tokens": 8})


def build_tiny_llm(folder: Path, *, seed: int = 0) -> None:
    """A random-weight Qwen2 chat LM (``Qwen2ForCausalLM`` + ``Qwen2Tokenizer``)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from uniedit_cli.models.tiny import write_uniedit_json

    folder = Path(folder)
    tokenizer = tiny_qwen_tokenizer(QWEN_CHAT_TEMPLATE)
    config = Qwen2Config(
        **_TINY_TEXT,
        vocab_size=len(tokenizer),
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config = _generation_file(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_uniedit_json(folder, family="llm", name="qwen2.5-tiny", defaults={"max_new_tokens": 16})
