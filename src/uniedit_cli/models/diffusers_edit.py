"""Instruction editing through diffusers pipelines: InstructPix2Pix, FLUX.1 Kontext, Qwen-Image-Edit.

Two adapters:

- :class:`InstructPix2PixAdapter` (family ``ip2p``): ``StableDiffusionInstructPix2PixPipeline``
  (timbrooks/instruct-pix2pix, or a folder written by ``uniedit train``).
- :class:`DiffusersEditAdapter` (family ``diffusers-edit``): ``FluxKontextPipeline``
  (black-forest-labs/FLUX.1-Kontext-dev) and ``QwenImageEditPipeline`` /
  ``QwenImageEditPlusPipeline`` (Qwen/Qwen-Image-Edit, -2509), chosen by the checkpoint's
  ``model_index.json``.

Both are batch-first: one pipeline call per batch (per output size), with one CPU
``torch.Generator`` per row (:func:`uniedit_cli.models.base.make_generator`), so a row's noise
depends only on its seed, not on which other rows share its batch or which device runs it
(its pixels may still differ by float rounding, batched kernels summing in another order).

The published defaults (REFERENCE.md, "diffusers editing pipelines") are the keyword defaults:
InstructPix2Pix 100 steps, text guidance 7.5, image guidance 1.5; Kontext 28 steps, distilled
guidance 3.5, about 1024x1024; Qwen-Image-Edit 50 steps, true CFG 4.0 with the negative prompt
" ", about 1024x1024.

The module also builds the registry's tiny models (``ip2p-tiny``, ``flux-kontext-tiny``,
``qwen-image-edit-tiny``): every component at toy size with seeded random weights and
tokenizers trained here on :data:`uniedit_cli.models.tiny.CORPUS`, saved with
``save_pretrained`` so that the same ``from_pretrained`` code path loads them as a real
checkpoint, offline.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path
from typing import Any

from uniedit_cli.errors import UsageError
from uniedit_cli.models.base import Adapter, make_generator

# model_index.json ``_class_name`` -> what DiffusersEditAdapter calls it internally.
KONTEXT, QWEN_EDIT, QWEN_EDIT_PLUS = "FluxKontextPipeline", "QwenImageEditPipeline", "QwenImageEditPlusPipeline"
EDIT_PIPELINES = (KONTEXT, QWEN_EDIT, QWEN_EDIT_PLUS)

# Published defaults per pipeline (REFERENCE.md, "diffusers editing pipelines"). ``size`` is the
# output's long side: 1024 gives Kontext's max_area 1024**2 and Qwen-Image-Edit's 1024*1024
# target area exactly for square inputs.
PIPELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    KONTEXT: {"steps": 28, "guidance": 3.5, "size": 1024},
    QWEN_EDIT: {"steps": 50, "guidance": 4.0, "size": 1024},
    QWEN_EDIT_PLUS: {"steps": 50, "guidance": 4.0, "size": 1024},
}

# Qwen-Image-Edit's true CFG runs only with a negative prompt; the model card's example passes " ".
QWEN_NEGATIVE_PROMPT = " "


# --- shared helpers -------------------------------------------------------------------------

def output_size(width: int, height: int, size: int, multiple: int) -> tuple[int, int]:
    """The ``(width, height)`` an edit of a ``width`` x ``height`` source is produced at.

    Rule: the long side becomes ``size`` and the short side keeps the aspect ratio; both sides
    are then snapped to multiples of ``multiple`` (the long side rounded down, the short side to
    the nearest multiple), never below one multiple. ``multiple`` is what the pipeline needs:
    8 for Stable Diffusion's VAE (InstructPix2Pix), ``vae_scale_factor * 2`` for the packed-latent
    transformers (16 for Kontext and Qwen-Image-Edit).
    """
    size, multiple = int(size), int(multiple)
    if size < multiple:
        raise UsageError(f"--size {size} is too small for this model: the minimum is {multiple}.",
                         hint=f"Use a multiple of {multiple}, e.g. {multiple * 4}.")
    long_side = max(multiple, size // multiple * multiple)
    short = min(width, height) * long_side / max(width, height)
    short_side = max(multiple, int(round(short / multiple)) * multiple)
    return (long_side, short_side) if width >= height else (short_side, long_side)


def _check_batch(images: list, instructions: list[str], seeds: list[int]) -> None:
    if not (len(images) == len(instructions) == len(seeds)):
        raise UsageError(
            f"edit got {len(images)} images, {len(instructions)} instructions and {len(seeds)} seeds;"
            " they must match one to one."
        )
    for i, text in enumerate(instructions):
        if not isinstance(text, str) or not text.strip():
            raise UsageError(f"edit row {i}: the instruction is empty.")


def _check_steps(steps: int) -> int:
    if int(steps) < 1:
        raise UsageError(f"--steps {steps}: need at least 1 denoising step.")
    return int(steps)


def _rgb(image):
    from uniedit_cli.io import to_rgb

    return to_rgb(image)


def _groups(keys: list) -> dict[Any, list[int]]:
    """Row indices grouped by key, in first-seen order (a pipeline batch needs one image size)."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups


def _from_pretrained(pipeline_cls, resolved, dtype, **extra):
    """``from_pretrained`` for a folder or a hub id: safetensors only, no remote code."""
    try:  # diffusers renamed torch_dtype to dtype (the old name warns); older releases know only torch_dtype
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401

        dtype_key = "dtype"
    except ImportError:
        dtype_key = "torch_dtype"
    kwargs: dict[str, Any] = {dtype_key: dtype, "use_safetensors": True, **extra}
    if resolved.local:
        kwargs["local_files_only"] = True
    with _no_progress_bars():
        return pipeline_cls.from_pretrained(resolved.location, **kwargs)


@contextlib.contextmanager
def _no_progress_bars():
    """No per-component / per-shard tqdm bars while loading or saving (the CLI reports progress itself)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(mod, mod.is_progress_bar_enabled()) for mod in (diffusers_logging, transformers_logging)]
    for mod, _ in states:
        mod.disable_progress_bar()
    try:
        yield
    finally:
        for mod, enabled in states:
            if enabled:
                mod.enable_progress_bar()


class _PipelineAdapter(Adapter):
    """What both adapters share: the loaded pipeline as ``self.pipe``, ``save``, ``describe``."""

    pipe: Any

    def _finish_loading(self, pipe) -> None:
        pipe.to(self.device)
        # The CLI draws its own progress bar per batch; the pipelines' per-step tqdm bars would
        # interleave with it.
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe

    def save(self, folder) -> None:
        """Write the pipeline in its own ``save_pretrained`` layout, safetensors only."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.pipe.save_pretrained(str(folder), safe_serialization=True)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pipeline": type(self.pipe).__name__}

    def _generators(self, seeds: list[int]):
        # One CPU generator per row: diffusers draws each row's noise from its own generator
        # (randn_tensor with a list), so a row's noise does not depend on its batch.
        return [make_generator(seed) for seed in seeds]


# --- InstructPix2Pix ------------------------------------------------------------------------

IP2P_PIPELINES = ("StableDiffusionInstructPix2PixPipeline", "StableDiffusionXLInstructPix2PixPipeline")


class InstructPix2PixAdapter(_PipelineAdapter):
    """InstructPix2Pix (Brooks et al. 2023) through ``StableDiffusionInstructPix2PixPipeline``
    (or the SDXL variant, when a folder's model_index.json names it).

    Components stay reachable for training: ``self.pipe.unet``, ``.vae``, ``.text_encoder``,
    ``.tokenizer``, ``.scheduler``. The pipeline keeps what the checkpoint ships, a safety checker
    included if it has one (tiny folders have none).
    """

    family = "ip2p"
    # Stable Diffusion's VAE downsamples by 8: sides must be multiples of 8 (the UNet copes with
    # latents its own downsampling does not divide).
    size_multiple = 8

    def __init__(self, resolved, device, dtype):
        super().__init__(resolved, device, dtype)
        import diffusers

        name = IP2P_PIPELINES[0]
        index = Path(resolved.location) / "model_index.json"
        if resolved.local and index.exists():
            found = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
            if found not in IP2P_PIPELINES:
                raise UsageError(
                    f"model folder {resolved.location!r} holds a {found or 'unnamed'} pipeline, not InstructPix2Pix.",
                    hint=f"The ip2p family runs {', '.join(IP2P_PIPELINES)}; check --family.",
                )
            name = found
        self._finish_loading(_from_pretrained(getattr(diffusers, name), resolved, dtype))

    @property
    def multiple(self) -> int:
        return max(self.size_multiple, int(self.pipe.vae_scale_factor))

    def edit(self, images: list, instructions: list[str], *, seeds: list[int], steps: int | None = 100,
             guidance: float | None = 7.5, image_guidance: float | None = 1.5, size: int | None = 512,
             **_: Any) -> list:
        """Edit ``images`` by ``instructions``; returns RGB PIL images.

        Size rule: each source is resized (Lanczos) so its long side is ``size`` and both sides
        are multiples of 8, keeping the aspect ratio (:func:`output_size`); the output has that
        size, since InstructPix2Pix denoises at the conditioning image's resolution.
        ``guidance`` is the text guidance s_T and ``image_guidance`` the image guidance s_I of
        the paper's two-way classifier-free guidance (InstructPix2Pix sec. 3.2.1, eq. 3).
        ``None`` for a knob means its published default (REFERENCE.md: 100 / 7.5 / 1.5; 512 px).
        """
        from PIL import Image

        _check_batch(images, instructions, seeds)
        steps = _check_steps(100 if steps is None else steps)
        guidance = 7.5 if guidance is None else guidance
        image_guidance = 1.5 if image_guidance is None else image_guidance
        size = 512 if size is None else size
        if float(image_guidance) < 1.0:
            # below 1 the pipeline silently turns off both guidances, text guidance included
            raise UsageError(f"--image-guidance {image_guidance}: InstructPix2Pix needs a value of at least 1.")
        sources = [_rgb(img) for img in images]
        targets = [output_size(img.width, img.height, size, self.multiple) for img in sources]
        results: list = [None] * len(sources)
        # SD's pipeline denoises at the image's size; the SDXL variant at height/width (default 1024)
        sized = "height" in inspect.signature(self.pipe.__call__).parameters
        # One pipeline call per output size (a call stacks its images into one tensor); in the
        # usual case, every row the same size, that is one call for the whole batch.
        for (width, height), rows in _groups(targets).items():
            out = self.pipe(
                prompt=[instructions[i] for i in rows],
                image=[sources[i].resize((width, height), Image.LANCZOS) for i in rows],
                num_inference_steps=steps,
                guidance_scale=float(guidance),
                image_guidance_scale=float(image_guidance),
                generator=self._generators([seeds[i] for i in rows]),
                output_type="pil",
                **({"height": height, "width": width} if sized else {}),
            ).images
            for i, img in zip(rows, out):
                results[i] = img.convert("RGB")
        return results


# --- FLUX.1 Kontext and Qwen-Image-Edit -----------------------------------------------------

def _pipeline_class_name(resolved) -> str:
    """Which pipeline a diffusers-edit checkpoint is: its model_index.json, else its name."""
    if resolved.local:
        index = Path(resolved.location) / "model_index.json"
        if not index.exists():
            raise UsageError(
                f"model folder {resolved.location!r} has no model_index.json, so it is not a diffusers pipeline.",
                hint=f"diffusers-edit folders hold one of: {', '.join(EDIT_PIPELINES)}.",
            )
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    else:
        name = _hub_class_name(resolved.location)
    if not name:
        raise UsageError(
            f"cannot tell which pipeline {resolved.display!r} is: no model_index.json could be read and "
            "its name says neither Kontext nor Qwen-Image-Edit.",
            hint="Download it (`hf download <id> --local-dir <folder>`) and pass --model <folder>.",
        )
    if name not in EDIT_PIPELINES:
        raise UsageError(
            f"{resolved.display!r} is a {name}; the diffusers-edit family runs {', '.join(EDIT_PIPELINES)}.",
            hint="For InstructPix2Pix checkpoints pass --family ip2p.",
        )
    return name


def _hub_class_name(hub_id: str) -> str:
    """``_class_name`` of a hub checkpoint: its cached model_index.json, else its name, else
    (an unfamiliar name) its model_index.json from the hub."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hub_id, "model_index.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text(encoding="utf-8")).get("_class_name", "")
    except (ImportError, OSError, ValueError):
        pass
    name = _class_name_from_id(hub_id)
    if name:
        return name
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(hub_id, "model_index.json")).read_text(encoding="utf-8")).get("_class_name", "")
    except Exception:  # noqa: BLE001 - offline, gated, missing: the caller names the problem
        return ""


def _class_name_from_id(hub_id: str) -> str:
    low = hub_id.lower()
    if "kontext" in low:
        return KONTEXT
    if "qwen-image-edit" in low:
        # Qwen-Image-Edit-2509 and later releases are the multi-image "Plus" pipeline.
        return QWEN_EDIT_PLUS if any(tag in low for tag in ("2509", "2511", "plus")) else QWEN_EDIT
    return ""


class DiffusersEditAdapter(_PipelineAdapter):
    """FLUX.1 Kontext [dev] and Qwen-Image-Edit (and -Plus) behind one ``edit``.

    ``guidance`` maps to each pipeline's own knob: Kontext is guidance-distilled, so it is the
    embedded ``guidance_scale`` (one forward pass per step); Qwen-Image-Edit runs true
    classifier-free guidance, so it is ``true_cfg_scale`` with a negative prompt.
    """

    family = "diffusers-edit"

    def __init__(self, resolved, device, dtype):
        super().__init__(resolved, device, dtype)
        import diffusers

        self.pipeline_name = _pipeline_class_name(resolved)
        pipeline_cls = getattr(diffusers, self.pipeline_name, None)
        if pipeline_cls is None:
            raise UsageError(
                f"this diffusers ({diffusers.__version__}) has no {self.pipeline_name}.",
                hint="Upgrade diffusers: pip install -U diffusers.",
            )
        self._finish_loading(_from_pretrained(pipeline_cls, resolved, dtype))
        self.defaults = dict(PIPELINE_DEFAULTS[self.pipeline_name])

    @property
    def multiple(self) -> int:
        # Both transformers pack 2x2 latent patches into one token: sides must be multiples of
        # vae_scale_factor * 2 (the pipelines floor to this themselves; we do it first so the
        # reported size is the real one).
        return int(self.pipe.vae_scale_factor) * 2

    def edit(self, images: list, instructions: list[str], *, seeds: list[int], steps: int | None = None,
             guidance: float | None = None, size: int | None = None, negative_prompt: str | None = None,
             max_sequence_length: int | None = None, image_guidance: float | None = None, **_: Any) -> list:
        """Edit ``images`` by ``instructions``; returns RGB PIL images of :func:`output_size`.

        ``None`` means the loaded pipeline's published default (:data:`PIPELINE_DEFAULTS`).
        Size rule: the long side is ``size``, the aspect ratio is kept, both sides are
        multiples of ``vae_scale_factor * 2``. ``negative_prompt`` (Qwen-Image-Edit only)
        defaults to " "; ``max_sequence_length`` caps the text tokens (pipeline default 512).
        """
        if image_guidance is not None:
            raise UsageError(
                f"--image-guidance is an InstructPix2Pix knob; {self.pipeline_name} has only --guidance "
                f"({'distilled guidance' if self.pipeline_name == KONTEXT else 'true classifier-free guidance'}).",
            )
        if negative_prompt is not None and self.pipeline_name == KONTEXT:
            raise UsageError("negative_prompt: FLUX.1 Kontext [dev] is guidance-distilled and takes no negative prompt.")
        _check_batch(images, instructions, seeds)
        d = self.defaults
        steps = _check_steps(d["steps"] if steps is None else steps)
        if steps < 2 and self.pipe.scheduler.config.get("shift_terminal"):
            # the scheduler stretches its sigmas to end at shift_terminal, dividing by
            # (1 - last sigma); with one step that sigma is 1 and the image comes out NaN
            raise UsageError(f"--steps {steps}: {self.pipeline_name}'s scheduler needs at least 2 steps.")
        guidance = float(d["guidance"] if guidance is None else guidance)
        size = int(d["size"] if size is None else size)
        sources = [_rgb(img) for img in images]
        targets = [output_size(img.width, img.height, size, self.multiple) for img in sources]
        results: list = [None] * len(sources)
        for (width, height), rows in _groups(targets).items():
            common = dict(
                num_inference_steps=steps, height=height, width=width, output_type="pil",
                **({"max_sequence_length": int(max_sequence_length)} if max_sequence_length else {}),
            )
            if self.pipeline_name == KONTEXT:
                out = self._kontext(sources, instructions, seeds, rows, width, height, guidance, common)
            elif self.pipeline_name == QWEN_EDIT:
                out = self._qwen(sources, instructions, seeds, rows, guidance, negative_prompt, common)
            else:
                # QwenImageEditPlusPipeline accepts a batch of one prompt only (it treats a list
                # of images as several references for that prompt): run its rows one by one.
                out = []
                for i in rows:
                    out += self._qwen(sources, instructions, seeds, [i], guidance, negative_prompt, common)
            for i, img in zip(rows, out):
                results[i] = img.convert("RGB")
        return results

    def _kontext(self, sources, instructions, seeds, rows, width, height, guidance, common):
        from PIL import Image

        kwargs: dict[str, Any] = {}
        if "_auto_resize" in inspect.signature(self.pipe.__call__).parameters:
            # By default the pipeline resizes the reference to one of Kontext's ~1 MP training
            # resolutions whatever the output size. We give it the reference at the output size
            # instead, so --size controls the cost; at the default size 1024 and a square input
            # the two agree (1024x1024 is one of those resolutions).
            kwargs["_auto_resize"] = False
        return self.pipe(
            image=[sources[i].resize((width, height), Image.LANCZOS) for i in rows],
            prompt=[instructions[i] for i in rows],
            guidance_scale=guidance,
            # The pipeline rescales (height, width) to max_area at their aspect ratio: asking for
            # exactly height * width keeps our size.
            max_area=width * height,
            generator=self._generators([seeds[i] for i in rows]),
            **common, **kwargs,
        ).images

    def _qwen(self, sources, instructions, seeds, rows, guidance, negative_prompt, common):
        negative = QWEN_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        plus = self.pipeline_name == QWEN_EDIT_PLUS  # then ``rows`` is one row (see edit)
        return self.pipe(
            # The pipeline resizes the reference itself (to a ~1024x1024 area for the VAE, and to
            # the processor's pixel budget for Qwen2.5-VL): pass the full-resolution source. For
            # Plus, a list is the references of its one prompt.
            image=[sources[i] for i in rows],
            prompt=instructions[rows[0]] if plus else [instructions[i] for i in rows],
            negative_prompt=negative if plus else [negative] * len(rows),
            true_cfg_scale=guidance,
            generator=self._generators([seeds[i] for i in rows]),
            **common,
        ).images


# --- tiny models ----------------------------------------------------------------------------
#
# Sizes follow diffusers' own fast tests (tests/pipelines/*: UNet block_out_channels (32, 64)
# with in_channels 8 for pix2pix, one-layer Flux transformer, small VAEs), but every tokenizer
# is trained here instead of downloaded. Each builder seeds torch before each component, so the
# same seed writes the same weights.

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable character table (byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _merges_of(tokenizer) -> list[tuple[str, str]]:
    model = json.loads(tokenizer.to_str())["model"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def _bpe_vocab(alphabet: list[str], merges: list[tuple[str, str]], specials: list[str]) -> dict[str, int]:
    """A BPE vocabulary laid out like the released ones: alphabet, merge results, specials."""
    vocab: dict[str, int] = {}
    for token in [*alphabet, *("".join(m) for m in merges), *specials]:
        vocab.setdefault(token, len(vocab))
    return vocab


def build_clip_tokenizer(folder: Path | None, *, vocab_size: int = 600, model_max_length: int = 77):
    """A ``CLIPTokenizer`` trained on the built-in corpus, saved to ``folder`` when given; returns it.

    CLIP's conventions: lowercase, byte-level alphabet, ``</w>`` marks the end of a word, and
    the vocabulary is 256 bytes, the same 256 with ``</w>``, the merges, then
    ``<|startoftext|>`` and ``<|endoftext|>`` (which also pads).
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    from uniedit_cli.models.tiny import corpus

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    # the same word split as transformers' CLIPTokenizer, so learned merges apply unchanged
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    byte_chars = list(_bytes_to_unicode().values())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], initial_alphabet=byte_chars,
                                  end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(corpus(), trainer=trainer)
    merges = _merges_of(tok)
    vocab = _bpe_vocab(byte_chars + [c + "</w>" for c in byte_chars], merges, ["<|startoftext|>", "<|endoftext|>"])
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    if folder is not None:
        tokenizer.save_pretrained(str(folder))
    return tokenizer


def build_t5_tokenizer(folder: Path | None, *, vocab_size: int = 400, model_max_length: int = 512):
    """A ``T5Tokenizer`` (Unigram, SentencePiece-style ``▁`` word marks) trained on the built-in
    corpus, saved to ``folder`` when given; returns it. T5's layout: ``<pad>`` 0, ``</s>`` 1,
    ``<unk>`` 2."""
    import string

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    from uniedit_cli.models.tiny import corpus

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
        # every printable ASCII character stays a piece, so English text never hits <unk>
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation) + ["▁"],
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    # no sentinel <extra_id_*> tokens: they only matter for T5's span-corruption pretraining
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    if folder is not None:
        tokenizer.save_pretrained(str(folder))
    return tokenizer


def _clip_text_encoder(tokenizer, *, hidden_size: int = 32, seed: int = 0):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=37, projection_dim=hidden_size,
        num_hidden_layers=5, num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        layer_norm_eps=1e-5, hidden_act="gelu",
        # the pooled output reads the hidden state at the first eos token, found by this id
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModel(config).eval()


def build_tiny_ip2p(folder: Path, *, seed: int = 0) -> None:
    """Write a tiny InstructPix2Pix checkpoint (random weights) to ``folder``."""
    import torch
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline,
                           UNet2DConditionModel)

    from uniedit_cli.models.tiny import write_uniedit_json

    folder = Path(folder)
    tokenizer = build_clip_tokenizer(None)
    text_encoder = _clip_text_encoder(tokenizer, hidden_size=32, seed=seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16,
        # InstructPix2Pix's one architectural change to Stable Diffusion: 4 extra input channels
        # for the source image's latents, concatenated to the noisy latents (paper sec. 3.2.1).
        in_channels=8, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_encoder.config.hidden_size,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    # timbrooks/instruct-pix2pix ships Euler ancestral with Stable Diffusion's training schedule
    scheduler = EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1,
    )
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    with _no_progress_bars():
        pipe.save_pretrained(str(folder), safe_serialization=True)
    write_uniedit_json(folder, family="ip2p", name="ip2p-tiny",
                       defaults={"steps": 4, "size": 32}, pipeline="StableDiffusionInstructPix2PixPipeline")


def _t5_encoder(tokenizer, *, d_model: int = 32, seed: int = 0):
    import torch
    from transformers import T5Config, T5EncoderModel

    # T5 v1.1 layout (gated GELU feed-forward), the variant FLUX's text_encoder_2 uses
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def build_tiny_flux_kontext(folder: Path, *, seed: int = 0) -> None:
    """Write a tiny FLUX.1 Kontext checkpoint (random weights) to ``folder``."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel

    from uniedit_cli.models.tiny import write_uniedit_json

    folder = Path(folder)
    tokenizer = build_clip_tokenizer(None)
    tokenizer_2 = build_t5_tokenizer(None)
    text_encoder = _clip_text_encoder(tokenizer, hidden_size=32, seed=seed)
    text_encoder_2 = _t5_encoder(tokenizer_2, d_model=32, seed=seed)
    latent_channels = 4
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, layers_per_block=1, sample_size=32,
        # FLUX's VAE has no quant convs and normalises latents with a shift as well as a scale
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611,
    )
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        # the pipeline packs 2x2 latent patches into one token: in_channels = 4 * latent channels
        patch_size=1, in_channels=latent_channels * 4, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, axes_dims_rope=(4, 4, 8),
        joint_attention_dim=text_encoder_2.config.d_model, pooled_projection_dim=text_encoder.config.hidden_size,
        # FLUX.1 [dev] and Kontext [dev] are guidance-distilled: the scale is an input embedding
        guidance_embeds=True,
    )
    # FLUX.1 [dev]'s scheduler config: resolution-dependent shift (mu from the token count)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
        base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15,
    )
    pipe = FluxKontextPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
        image_encoder=None, feature_extractor=None,
    )
    with _no_progress_bars():
        pipe.save_pretrained(str(folder), safe_serialization=True)
    write_uniedit_json(folder, family="diffusers-edit", name="flux-kontext-tiny",
                       defaults={"steps": 2, "size": 32}, pipeline=KONTEXT)


# Qwen2-VL's special tokens, in the released order (they follow the BPE vocabulary there too).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Qwen2's pre-tokenizer split (transformers' Qwen2Tokenizer uses the same pattern)
_QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def build_qwen2_tokenizer(folder: Path | None, *, vocab_size: int = 1200, extra_text: list[str] | None = None):
    """A ``Qwen2Tokenizer`` (byte-level BPE, Qwen2-VL special tokens) trained on the built-in
    corpus plus ``extra_text``, saved to ``folder`` when given; returns it."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from uniedit_cli.models.tiny import corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    byte_chars = list(_bytes_to_unicode().values())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[], initial_alphabet=byte_chars, show_progress=False)
    tok.train_from_iterator(corpus() + list(extra_text or []) * 4, trainer=trainer)
    merges = _merges_of(tok)
    vocab = _bpe_vocab(byte_chars, merges, QWEN_SPECIAL_TOKENS)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        model_max_length=32768, padding_side="right",
    )
    # the specials are single tokens that text never splits into or merges across
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    if folder is not None:
        tokenizer.save_pretrained(str(folder))
    return tokenizer


def _qwen_edit_templates() -> list[tuple[str, int]]:
    """``(prompt template, hidden states dropped)`` of the installed Qwen-Image-Edit pipelines.

    The pipelines drop the first ``prompt_template_encode_start_idx`` (64) hidden states of the
    text encoder: with the released tokenizer that is exactly the fixed system prefix. Training
    the tiny tokenizer on the templates (one token per word, as there) keeps that true here.
    """
    import diffusers

    templates = []
    for name in (QWEN_EDIT, QWEN_EDIT_PLUS):
        cls = getattr(diffusers, name, None)
        if cls is None:
            continue
        empty = cls(scheduler=None, vae=None, text_encoder=None, tokenizer=None, processor=None, transformer=None)
        templates.append((empty.prompt_template_encode, empty.prompt_template_encode_start_idx))
    return templates


def _check_template_prefix(tokenizer, templates: list[tuple[str, int]]) -> None:
    for template, drop in templates:
        prefix = template.split("{}")[0].split("<|vision_start|>")[0]
        n = len(tokenizer(prefix).input_ids)
        if n != drop:  # an upstream template change: the tiny model still runs, but say so
            import warnings

            warnings.warn(f"tiny Qwen tokenizer: the pipeline's system prefix is {n} tokens, the pipeline drops {drop}.",
                          stacklevel=2)


def build_tiny_qwen_image_edit(folder: Path, *, seed: int = 0) -> None:
    """Write a tiny Qwen-Image-Edit checkpoint (random weights) to ``folder``.

    The pipeline always resizes the reference image to a ~1024x1024 area before the VAE
    (hard-coded in diffusers), so even this tiny model encodes a 1 MP image per row: that, not
    the transformer, is most of its edit time.
    """
    import torch
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline,
                           QwenImageTransformer2DModel)
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    from uniedit_cli.models.tiny import write_uniedit_json

    folder = Path(folder)
    templates = _qwen_edit_templates()
    tokenizer = build_qwen2_tokenizer(None, extra_text=[t.format("") for t, _ in templates])
    _check_template_prefix(tokenizer, templates)
    ids = tokenizer.convert_tokens_to_ids
    # Qwen2.5-VL's vision tower: 14 px patches, 2x2 patches merged per token. A small pixel
    # budget (28x28 .. 56x56) keeps the reference image at 1 to 4 tokens for the text encoder.
    budget = dict(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, temporal_patch_size=2, merge_size=2)
    # the processor class requires a video processor too (unused by the edit pipeline)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**budget), tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(**budget))
    hidden = 32
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 4096,
            # multimodal RoPE: the head's 8 frequency pairs split over (time, height, width)
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 37, "num_heads": 2, "out_hidden_size": hidden,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    z_dim = 4
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(
        # Four 2x downsamplings (a 16x VAE; the released one is 8x) so the 1 MP reference becomes
        # 32x32 packed tokens, not 64x64. The encoder's full-resolution causal Conv3d layers
        # dominate the cost on CPU: few channels, and num_res_blocks=0 (the encoder is then
        # conv_in, strided resamples and the mid block; the decoder keeps one block per level)
        # cut encoding the 1 MP reference from ~5 s to ~1.2 s.
        base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=0, temperal_downsample=[False] * 4,
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim,
    )
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=z_dim * 4, out_channels=z_dim, num_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=hidden, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )
    # Qwen-Image's scheduler config: dynamic (resolution-dependent) exponential time shift, with
    # the schedule stretched to end at shift_terminal
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_image_seq_len=256,
        max_image_seq_len=8192, base_shift=0.5, max_shift=0.9, shift_terminal=0.02, time_shift_type="exponential",
    )
    pipe = QwenImageEditPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                 processor=processor, transformer=transformer)
    with _no_progress_bars():
        pipe.save_pretrained(str(folder), safe_serialization=True)
    write_uniedit_json(folder, family="diffusers-edit", name="qwen-image-edit-tiny",
                       # guidance: Qwen's true CFG 4.0, not the family-wide Kontext 3.5
                       defaults={"steps": 2, "size": 32, "guidance": 4.0}, pipeline=QWEN_EDIT)
