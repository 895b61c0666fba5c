"""Instruction editing through diffusers pipelines: InstructPix2Pix, FLUX.1 Kontext, Qwen-Image-Edit.

Two adapters:

- :class:`InstructPix2PixAdapter` (family ``ip2p``): ``StableDiffusionInstructPix2PixPipeline``
  (timbrooks/instruct-pix2pix, or a folder written by ``uniedit train``).
- :class:`DiffusersEditAdapter` (family ``diffusers-edit``): ``FluxKontextPipeline``
  (black-forest-labs/FLUX.1-Kontext-dev) and ``QwenImageEditPipeline`` /
  ``QwenImageEditPlusPipeline`` (Qwen/Qwen-Image-Edit, -2509), chosen by the checkpoint's
  ``model_index.json``.

Both are batch-first: one pipeline call per batch, with one CPU ``torch.Generator`` per row
(:func:`uniedit_cli.models.base.make_generator`), so a row's output depends only on its seed
and not on which other rows share its batch or which device runs it.

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

# Qwen-Image-Edit's true CFG needs a negative prompt; the model card's examples use " ".
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
    kwargs: dict[str, Any] = {"torch_dtype": dtype, "use_safetensors": True, **extra}
    if resolved.local:
        kwargs["local_files_only"] = True
    return pipeline_cls.from_pretrained(resolved.location, **kwargs)


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
        # (randn_tensor with a list), so a row's result does not depend on its batch.
        return [make_generator(seed) for seed in seeds]


# --- InstructPix2Pix ------------------------------------------------------------------------

class InstructPix2PixAdapter(_PipelineAdapter):
    """InstructPix2Pix (Brooks et al. 2023) through ``StableDiffusionInstructPix2PixPipeline``.

    Components stay reachable for training: ``self.pipe.unet``, ``.vae``, ``.text_encoder``,
    ``.tokenizer``, ``.scheduler``.
    """

    family = "ip2p"
    # Stable Diffusion's VAE downsamples by 8; the UNet needs latents divisible by its own
    # downsampling too, which 8 pixels per latent cell keeps simple for every SD-style UNet.
    size_multiple = 8

    def __init__(self, resolved, device, dtype):
        super().__init__(resolved, device, dtype)
        from diffusers import StableDiffusionInstructPix2PixPipeline

        pipe = _from_pretrained(StableDiffusionInstructPix2PixPipeline, resolved, dtype)
        self._finish_loading(pipe)

    @property
    def multiple(self) -> int:
        return max(self.size_multiple, int(self.pipe.vae_scale_factor))

    def edit(self, images: list, instructions: list[str], *, seeds: list[int], steps: int = 100,
             guidance: float = 7.5, image_guidance: float = 1.5, size: int = 512, **_: Any) -> list:
        """Edit ``images`` by ``instructions``; returns RGB PIL images.

        Size rule: each source is resized (Lanczos) so its long side is ``size`` and both sides
        are multiples of 8, keeping the aspect ratio (:func:`output_size`); the output has that
        size, since InstructPix2Pix denoises at the conditioning image's resolution.
        ``guidance`` is the text guidance s_T and ``image_guidance`` the image guidance s_I of
        the paper's two-way classifier-free guidance (InstructPix2Pix sec. 3.2.1, eq. 3).
        """
        from PIL import Image

        _check_batch(images, instructions, seeds)
        steps = _check_steps(steps)
        if float(image_guidance) < 1.0:
            # the pipeline disables all guidance below 1 (and the paper never goes below 1)
            raise UsageError(f"--image-guidance {image_guidance}: InstructPix2Pix needs a value of at least 1.")
        sources = [_rgb(img) for img in images]
        targets = [output_size(img.width, img.height, size, self.multiple) for img in sources]
        results: list = [None] * len(sources)
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
        name = _hub_class_name(resolved.location) or _class_name_from_id(resolved.location)
    if name not in EDIT_PIPELINES:
        raise UsageError(
            f"{resolved.display!r} is a {name or 'unknown'} pipeline; the diffusers-edit family runs "
            f"{', '.join(EDIT_PIPELINES)}.",
            hint="For InstructPix2Pix checkpoints pass --family ip2p.",
        )
    return name


def _hub_class_name(hub_id: str) -> str | None:
    """``_class_name`` from a hub checkpoint's model_index.json (the cache, or the hub if online)."""
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(hub_id, "model_index.json")).read_text(encoding="utf-8")).get("_class_name")
    except Exception:  # noqa: BLE001 - offline / not cached: fall back to the name
        return None


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
             max_sequence_length: int | None = None, **_: Any) -> list:
        """Edit ``images`` by ``instructions``; returns RGB PIL images of :func:`output_size`.

        ``None`` means the loaded pipeline's published default (:data:`PIPELINE_DEFAULTS`).
        Size rule: the long side is ``size``, the aspect ratio is kept, both sides are
        multiples of ``vae_scale_factor * 2``.
        """
        _check_batch(images, instructions, seeds)
        d = self.defaults
        steps = _check_steps(d["steps"] if steps is None else steps)
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
        # The pipeline resizes the reference itself (to a ~1024x1024 area for the VAE, and
        # through the processor's pixel budget for Qwen2.5-VL): pass the full-resolution source.
        batch = [sources[i] for i in rows]
        return self.pipe(
            image=batch if len(batch) > 1 or self.pipeline_name == QWEN_EDIT else batch[0],
            prompt=[instructions[i] for i in rows] if self.pipeline_name == QWEN_EDIT else instructions[rows[0]],
            negative_prompt=[negative] * len(rows) if self.pipeline_name == QWEN_EDIT else negative,
            true_cfg_scale=guidance,
            generator=self._generators([seeds[i] for i in rows]),
            **common,
        ).images


# --- tiny models ----------------------------------------------------------------------------
#
# Sizes follow diffusers' own fast tests (tests/pipelines/*: UNet block_out_channels (32, 64)
# with in_channels 8 for pix2pix, one-layer Flux transformer, one-block VAEs), but every
# tokenizer is trained here instead of downloaded. Each builder seeds torch before each
# component, so the same seed writes the same weights.

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


def build_clip_tokenizer(folder: Path, *, vocab_size: int = 600, model_max_length: int = 77):
    """A ``CLIPTokenizer`` trained on the built-in corpus, saved to ``folder``; returns it.

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
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def build_t5_tokenizer(folder: Path, *, vocab_size: int = 400, model_max_length: int = 512):
    """A ``T5Tokenizer`` (Unigram, SentencePiece-style ``▁`` word marks) trained on the built-in
    corpus, saved to ``folder``; returns it. T5's layout: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2."""
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
    tokenizer.save_pretrained(str(folder))
    return tokenizer
