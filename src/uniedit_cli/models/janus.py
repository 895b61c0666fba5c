"""Janus-Pro through transformers' ``JanusForConditionalGeneration``: ask, generate, edit, train.

Understanding (``ask``) is transformers' own path: the processor's chat template with
``generation_mode="text"`` and ``model.generate(..., generation_mode="text")`` (REFERENCE.md,
"Janus-Pro in transformers").

Image generation does not use ``model.generate(generation_mode="image")``. That loop draws all
rows from one global RNG stream, so a row's image changes with the batch it shares and with
the process rank that runs it. Ours samples the image tokens itself with classifier-free
guidance (conditional and unconditional rows, one KV cache, logits from the generation head,
``uncond + guidance * (cond - uncond)``, default guidance 5 as in the converted checkpoints)
and draws each row from its own ``torch.Generator`` seeded with that row's seed, so a seed
names one image whatever the batch, the device count or the rank.

Editing is our own design (Janus-Pro has no native edit; Uni-Edit released no Janus code,
REFERENCE.md "Uni-Edit"): the source image enters through the *understanding* encoder (SigLIP +
aligner embeddings scattered into the image placeholder tokens, exactly as in ``ask``), the
instruction text follows it, and the edited image is sampled as VQ tokens after
``<begin_of_image>``, just like text-to-image. This mirrors Uni-Edit's BAGEL recipe, where the
edit is conditioned on the source's ViT (semantic) features only. The conditioning prefix has
one home: :meth:`JanusAdapter.prepare_condition` (tokens and pixels, with per-row flags that
drop the text and/or the image) and :func:`embed_condition` (the model's side). Sampling uses
the flags for the unconditional CFG branch, training for conditioning dropout (InstructPix2Pix
sec. 3.2.1). The training loss is the forward of :class:`JanusEditObjective`, an
``nn.Module``, so that accelerate's DDP / FSDP / DeepSpeed wrappers see the parameters used.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from uniedit_cli.errors import UsageError
from uniedit_cli.models.base import Adapter, make_generator

# Special tokens of the Janus-Pro tokenizer (deepseek-community/Janus-Pro-1B); the tiny model
# uses the same strings so the same code paths serve both.
BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
IMAGE_TOKEN = "<image_placeholder>"
BOI_TOKEN = "<begin_of_image>"
EOI_TOKEN = "<end_of_image>"
ROLE_TOKENS = ("<|User|>", "<|Assistant|>")

# Janus' conversation format ("<|User|>: ...\n\n<|Assistant|>:"), images as placeholders that
# the processor expands to begin/placeholders/end of image. Written for the tiny model; real
# checkpoints ship their own template, which every method here reads from the processor.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set role = message['role'] | lower -%}"
    "{%- if role == 'user' -%}{{ '<|User|>: ' }}"
    "{%- elif role == 'assistant' -%}{{ '<|Assistant|>: ' }}"
    "{%- else -%}{{ message['role'] | capitalize ~ ': ' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image_placeholder>{%- if not loop.last -%}{{ '\n' }}{%- endif -%}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if role == 'assistant' -%}" + EOS_TOKEN + "{%- else -%}{{ '\n\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|Assistant|>:{%- endif -%}"
)

# Marks where the instruction goes when the template is rendered, so that its characters (and
# then its tokens, through the offset mapping) are known exactly; never seen by the model.
_SENTINEL = "\u2063uniedit-instruction\u2063"


@dataclass
class ConditionInputs:
    """A batch of conditioning prefixes before embedding: tensors only, on the adapter's device."""

    input_ids: Any  # (rows, length), left padded with pads (attention 0), ending at <begin_of_image>
    attention_mask: Any  # (rows, length)
    image_rows: Any  # (images,) the rows whose image placeholders take vision features
    pixel_values: Any  # (images, 3, S, S) for those rows, or None

    def as_dict(self) -> dict:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "image_rows": self.image_rows, "pixel_values": self.pixel_values}


@dataclass
class Condition:
    """A batch of conditioning prefixes, left padded, each ending with ``<begin_of_image>``."""

    inputs_embeds: Any  # (rows, length, hidden)
    attention_mask: Any  # (rows, length), 0 on left padding
    input_ids: Any  # (rows, length), after dropping (pads where text/image were dropped)


class JanusAdapter(Adapter):
    family = "janus"

    def __init__(self, resolved, device, dtype):
        super().__init__(resolved, device, dtype)
        from transformers import JanusForConditionalGeneration, JanusProcessor

        # Safetensors only and no remote code: a checkpoint folder is data, never code.
        self.model = JanusForConditionalGeneration.from_pretrained(
            resolved.location, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
        self.processor = JanusProcessor.from_pretrained(resolved.location, trust_remote_code=False)
        self.model.to(device).eval()
        # Janus' VQ tokenizer is never trained (REFERENCE.md: "The VQ model stays frozen").
        self.model.model.vqmodel.requires_grad_(False)
        self.tokenizer = self.processor.tokenizer
        self._objective = None
        self._check_tokens()

    # ------------------------------------------------------------------ model facts

    def _token_id(self, token: str | None, what: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token) if token else None
        if token_id is None or (token_id == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise UsageError(
                f"model {self.resolved.display!r}: its tokenizer has no {what} token {token!r}.",
                hint="The folder is not a complete Janus checkpoint (tokenizer files missing or replaced).",
            )
        return int(token_id)

    def _check_tokens(self) -> None:
        gen = self.model.generation_config
        self.image_token_id = int(self.model.config.image_token_id)
        self.boi_token_id = self._token_id(self.processor.image_start_token, "begin-of-image")
        self.eoi_token_id = self._token_id(self.processor.image_end_token, "end-of-image")
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        if pad is None:
            raise UsageError(f"model {self.resolved.display!r} defines no pad token: Janus' unconditional prompt needs one.")
        self.pad_token_id = int(pad)
        bos = gen.bos_token_id if gen.bos_token_id is not None else self.tokenizer.bos_token_id
        self.bos_token_id = None if bos is None else int(bos)
        rows, cols = self.model.model.vqmodel.quantize.quant_state_dims
        self.num_image_tokens = int(rows * cols)
        if self.processor.num_image_tokens != self.model.config.vision_config.num_image_tokens:
            raise UsageError(
                f"model {self.resolved.display!r}: processor expands an image to {self.processor.num_image_tokens} tokens "
                f"but the vision encoder makes {self.model.config.vision_config.num_image_tokens}.",
                hint="processor_config.json and config.json come from different checkpoints.",
            )

    @property
    def image_size(self) -> int:
        """Side in pixels of generated images: VQ grid side times the decoder's upsampling."""
        vq = self.model.config.vq_config
        return int(self.model.model.vqmodel.quantize.quant_state_dims[0] * 2 ** (len(vq.channel_multiplier) - 1))

    # ------------------------------------------------------------------ ask

    def ask(self, images: Sequence, questions: Sequence[str], *, max_new_tokens: int = 128, **_) -> list[str]:
        """Greedy answers, one per (image, question) pair; the image may be ``None`` for text-only."""
        _same_length(images=images, questions=questions)
        if not questions:
            return []
        conversations = []
        for image, question in zip(images, questions):
            content = ([{"type": "image", "image": image}] if image is not None else []) + [
                {"type": "text", "text": str(question)}
            ]
            conversations.append([{"role": "user", "content": content}])
        inputs = self.processor.apply_chat_template(
            conversations,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            # The processor pads on the left (JanusProcessor.text_kwargs), as batched decoding needs.
            processor_kwargs={"padding": True, "generation_mode": "text"},
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                generation_mode="text",
                # max_length rather than max_new_tokens: Janus' generate() hands a full generation
                # config down, and both set would log a warning on every call.
                max_length=inputs["input_ids"].shape[1] + int(max_new_tokens),
                do_sample=False,
                pad_token_id=self.pad_token_id,
            )
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]

    # ------------------------------------------------------------------ conditioning

    def prepare_condition(
        self,
        texts: Sequence[str],
        images: Sequence | None = None,
        *,
        drop_text: Sequence[bool] | None = None,
        drop_image: Sequence[bool] | None = None,
    ) -> ConditionInputs:
        """Token ids and pixels of ``[image] + text`` prompts (no model compute; see :func:`embed_condition`).

        Each row is the chat template's user turn (an optional source image for the
        understanding encoder, then the text) plus the assistant prompt and ``<begin_of_image>``
        (the processor's ``generation_mode="image"`` suffix), left padded. Dropping keeps the
        length and writes pad tokens instead, the way Janus builds its unconditional prompt:

        - ``drop_text[i]``: the text's tokens become pads;
        - ``drop_image[i]``: the image block (begin, placeholders, end) becomes pads and no
          vision features are used;
        - both: every token but BOS and the final ``<begin_of_image>`` becomes a pad, which is
          exactly Janus' unconditional CFG prompt.
        """
        n = len(texts)
        images = list(images) if images is not None else [None] * n
        drop_text = list(drop_text) if drop_text is not None else [False] * n
        drop_image = list(drop_image) if drop_image is not None else [False] * n
        _same_length(texts=texts, images=images, drop_text=drop_text, drop_image=drop_image)
        if n == 0:
            raise UsageError("no prompts to condition on.")

        rows: list[list[int]] = []
        image_rows: list[int] = []  # rows whose image placeholders receive vision features
        kept_images = []
        for text, image, no_text, no_image in zip(texts, images, drop_text, drop_image):
            ids, text_mask, image_mask = self._tokenize_prompt(str(text), image is not None)
            if no_text and (no_image or image is None):
                keep = [i == 0 and tok == self.bos_token_id for i, tok in enumerate(ids)]
                keep[-1] = True  # the final <begin_of_image>
                ids = [tok if k else self.pad_token_id for tok, k in zip(ids, keep)]
            else:
                if no_text:
                    ids = [self.pad_token_id if m else tok for tok, m in zip(ids, text_mask)]
                if image is not None and no_image:
                    ids = [self.pad_token_id if m else tok for tok, m in zip(ids, image_mask)]
            if image is not None and not no_image:
                image_rows.append(len(rows))
                kept_images.append(image)
            rows.append(ids)

        length = max(len(r) for r in rows)
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        for i, ids in enumerate(rows):  # left padding: every row ends at <begin_of_image>
            input_ids[i, length - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, length - len(ids):] = 1
        pixel_values = None
        if kept_images:
            pixel_values = self.processor.image_processor(kept_images, return_tensors="pt")["pixel_values"]
        return ConditionInputs(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            image_rows=torch.tensor(image_rows, dtype=torch.long, device=self.device),
            pixel_values=None if pixel_values is None else pixel_values.to(self.device),
        )

    def build_condition(self, texts: Sequence[str], images: Sequence | None = None, *,
                        drop_text: Sequence[bool] | None = None,
                        drop_image: Sequence[bool] | None = None) -> Condition:
        """:meth:`prepare_condition` then :func:`embed_condition`: prefixes ready for sampling."""
        inputs = self.prepare_condition(texts, images, drop_text=drop_text, drop_image=drop_image)
        return Condition(
            inputs_embeds=embed_condition(self.model, inputs),
            attention_mask=inputs.attention_mask,
            input_ids=inputs.input_ids,
        )

    def _tokenize_prompt(self, text: str, with_image: bool) -> tuple[list[int], list[bool], list[bool]]:
        """Token ids of one prompt, with masks of the text's tokens and of the image block's."""
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": _SENTINEL}]
        rendered = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        if isinstance(rendered, list):
            rendered = rendered[0]
        if rendered.count(_SENTINEL) != 1:
            raise UsageError(
                f"model {self.resolved.display!r}: its chat template does not place the user's text exactly once.",
                hint="Use a Janus checkpoint with its own chat_template.",
            )
        # What JanusProcessor does in generation_mode="image": expand each image placeholder
        # to begin + placeholders + end of image, and append <begin_of_image> to the prompt.
        image_block = self.processor.replace_image_token({}, 0)
        rendered = rendered.replace(self.processor.image_token, image_block) + self.processor.image_start_token
        text = text.strip()  # the template trims text parts; keep rendered and measured text equal
        start = rendered.index(_SENTINEL)
        prompt = rendered.replace(_SENTINEL, text)
        end = start + len(text)
        # Tokenized as one string, so the text's tokens are the ones the model was trained on
        # (a piecewise encoding would split ": a" differently at the boundary).
        bos = self.tokenizer.bos_token
        # As the processor: a template that writes BOS itself gets no second one.
        enc = self.tokenizer(prompt, return_offsets_mapping=True,
                             add_special_tokens=not (bos is not None and prompt.startswith(bos)))
        ids = list(enc["input_ids"])
        text_mask = [s < end and e > start and e > s for s, e in enc["offset_mapping"]]
        image_mask = [tok in (self.image_token_id, self.eoi_token_id) for tok in ids]
        image_mask = [m or (tok == self.boi_token_id and i < len(ids) - 1) for i, (tok, m) in enumerate(zip(ids, image_mask))]
        if ids[-1] != self.boi_token_id:
            raise UsageError(f"model {self.resolved.display!r}: the prompt does not end with {self.processor.image_start_token!r}.")
        return ids, text_mask, image_mask

    # ------------------------------------------------------------------ image sampling

    def _sample_image_tokens(self, cond: Condition, uncond: Condition | None, *, seeds: Sequence[int],
                             guidance: float, temperature: float):
        """Autoregressive VQ tokens with CFG; row ``i`` draws only from ``make_generator(seeds[i])``."""
        batch = cond.inputs_embeds.shape[0]
        generators = [make_generator(seed) for seed in seeds]
        use_cfg = uncond is not None
        if use_cfg:
            length = max(cond.inputs_embeds.shape[1], uncond.inputs_embeds.shape[1])
            embeds = torch.cat([_left_pad(cond.inputs_embeds, length), _left_pad(uncond.inputs_embeds, length)])
            mask = torch.cat([_left_pad(cond.attention_mask, length), _left_pad(uncond.attention_mask, length)])
        else:
            embeds, mask = cond.inputs_embeds, cond.attention_mask
        # Positions count real tokens only, so left padding (which depends on the other rows of
        # the batch) does not shift a row's rotary positions.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        language_model = self.model.model.language_model
        tokens = torch.empty((batch, self.num_image_tokens), dtype=torch.long)
        past = None
        for step in range(self.num_image_tokens):
            out = language_model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                past_key_values=past, use_cache=True,
            )
            past = out.past_key_values
            logits = self.model.model.generation_head(out.last_hidden_state[:, -1, :]).float()
            if use_cfg:
                logits = logits[batch:] + guidance * (logits[:batch] - logits[batch:])
            if temperature <= 0:
                next_tokens = logits.argmax(-1).cpu()
            else:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                next_tokens = torch.cat([
                    torch.multinomial(probs[i], 1, generator=generators[i]) for i in range(batch)
                ])
            tokens[:, step] = next_tokens
            if step + 1 == self.num_image_tokens:
                break
            step_ids = next_tokens.to(self.device).unsqueeze(-1)
            if use_cfg:
                step_ids = torch.cat([step_ids, step_ids])
            # Generated tokens re-enter through the generation embedding + aligner, not the text
            # embedding table (Janus' decoupled generation path).
            embeds = self.model.prepare_embeddings_for_image_generation(step_ids)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            positions = positions[:, -1:] + 1
        return tokens

    def decode_tokens(self, tokens) -> list:
        """VQ token ids (batch, num_image_tokens) -> PIL RGB images."""
        import numpy as np
        from PIL import Image

        with torch.inference_mode():
            pixels = self.model.model.vqmodel.decode(tokens.to(self.device))  # (B, 3, H, W) in [-1, 1]
        # Janus' VQ decoder works in [-1, 1] (the original Janus sampling script maps it with
        # (x + 1) / 2 * 255); that range belongs to the VQ model, not to the understanding
        # processor's normalization, so it is applied here directly.
        pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray(np.ascontiguousarray(a)) for a in arrays]  # uint8 HxWx3 -> RGB

    def _sample(self, texts, images, *, seeds, guidance, temperature) -> list:
        _same_length(prompts=texts, seeds=seeds)
        if not texts:
            return []
        guidance = float(guidance)
        with torch.inference_mode():
            cond = self.build_condition(texts, images)
            uncond = None
            if guidance != 1.0:  # at scale 1 the guided logits are the conditional ones
                n = len(texts)
                uncond = self.build_condition(texts, images, drop_text=[True] * n, drop_image=[True] * n)
            tokens = self._sample_image_tokens(cond, uncond, seeds=seeds, guidance=guidance, temperature=float(temperature))
        # Decoded one image at a time: batched convolutions may round differently with the
        # batch size, and a seed must name one exact image.
        return [self.decode_tokens(tokens[i:i + 1])[0] for i in range(tokens.shape[0])]

    def generate(self, prompts: Sequence[str], *, seeds: Sequence[int], guidance: float = 5.0,
                 temperature: float = 1.0, **_) -> list:
        """Text-to-image, one image per prompt. ``temperature <= 0`` samples greedily."""
        return self._sample(list(prompts), None, seeds=list(seeds), guidance=guidance, temperature=temperature)

    def edit(self, images: Sequence, instructions: Sequence[str], *, seeds: Sequence[int], guidance: float = 5.0,
             temperature: float = 1.0, **_) -> list:
        """Instruction editing: the source image through the understanding encoder + the instruction."""
        _same_length(images=images, instructions=instructions)
        if any(image is None for image in images):
            raise UsageError("edit needs a source image for every instruction.")
        return self._sample(list(instructions), list(images), seeds=list(seeds), guidance=guidance,
                            temperature=temperature)

    # ------------------------------------------------------------------ training

    def target_pixels(self, images: Sequence):
        """Edited images as the VQ encoder's input: generation size, [-1, 1] (Janus' VQ range)."""
        side = self.image_size
        # Same resize and square padding as the understanding path, at the generation size.
        return self.processor.image_processor(
            list(images), size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
            return_tensors="pt",
        )["pixel_values"].to(self.device)

    def training_inputs(self, batch: dict) -> dict:
        """Tensors for :class:`JanusEditObjective` from a batch of edit rows.

        ``batch``: ``input_images`` (PIL list), ``edit_prompts`` (str list), ``edited_images``
        (PIL list), optional ``drop_text_prob`` / ``drop_image_prob`` (per-row conditioning
        dropout, InstructPix2Pix sec. 3.2.1, so the model also learns the branches CFG uses; with
        both dropped a row is Janus' unconditional prompt) and ``rng`` (a ``random.Random``).
        """
        sources, prompts, targets = batch["input_images"], batch["edit_prompts"], batch["edited_images"]
        _same_length(input_images=sources, edit_prompts=prompts, edited_images=targets)
        drop_text_prob = float(batch.get("drop_text_prob") or 0.0)
        drop_image_prob = float(batch.get("drop_image_prob") or 0.0)
        rng = batch.get("rng") or random
        drop_text = [rng.random() < drop_text_prob for _ in prompts]
        drop_image = [rng.random() < drop_image_prob for _ in prompts]
        cond = self.prepare_condition(prompts, sources, drop_text=drop_text, drop_image=drop_image)
        return {**cond.as_dict(), "target_pixel_values": self.target_pixels(targets)}

    @property
    def objective(self) -> "JanusEditObjective":
        """The training loss as a module (wrap it with ``accelerator.prepare`` to train)."""
        if self._objective is None:
            self._objective = JanusEditObjective(self.model)
        return self._objective

    @objective.setter
    def objective(self, wrapped) -> None:
        self._objective = wrapped

    def training_loss(self, batch: dict):
        """Cross-entropy of the edited image's VQ tokens through the generation head (VQ frozen)."""
        return self.objective(**self.training_inputs(batch))

    # ------------------------------------------------------------------ saving

    def save(self, folder, *, extra: dict | None = None) -> Path:
        """``save_pretrained`` of model and processor (safetensors) plus ``uniedit.json``."""
        from uniedit_cli.io import write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.processor.save_pretrained(folder)
        meta = dict(self.resolved.metadata or {})
        meta.update({
            "family": self.family,
            "base_model": meta.get("base_model") or self.resolved.display,
            "defaults": meta.get("defaults", {}),
        })
        meta.update(extra or {})
        write_json(folder / "uniedit.json", meta)
        return folder


def embed_condition(model, inputs: ConditionInputs | None = None, *, input_ids=None, image_rows=None,
                    pixel_values=None):
    """Text embeddings with the source images' understanding features in their placeholders."""
    if inputs is not None:
        input_ids, image_rows, pixel_values = inputs.input_ids, inputs.image_rows, inputs.pixel_values
    embeds = model.get_input_embeddings()(input_ids)
    if pixel_values is None or image_rows is None or image_rows.numel() == 0:
        return embeds
    dtype = embeds.dtype
    # SigLIP + aligner, the path `ask` uses: (images, num_image_tokens, hidden).
    features = model.model.get_image_features(pixel_values.to(dtype), return_dict=True).pooler_output
    slots = input_ids.new_zeros(input_ids.shape, dtype=torch.bool)
    slots[image_rows] = input_ids[image_rows] == model.config.image_token_id
    return embeds.masked_scatter(slots.unsqueeze(-1), features.to(dtype))


class JanusEditObjective(torch.nn.Module):
    """The edit loss as a module forward, so DDP / FSDP / DeepSpeed wrappers see every parameter use.

    REFERENCE.md ("Janus-Pro in transformers", Training): the model's own forward gives only the
    text loss; the image-token loss takes the VQ ids of the target as labels, their generation
    embeddings as inputs and the generation head's logits. The VQ stays frozen.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, image_rows, pixel_values, target_pixel_values):
        janus = self.model.model
        with torch.no_grad():
            vq_dtype = next(janus.vqmodel.parameters()).dtype
            encoded = janus.vqmodel.encode(target_pixel_values.to(vq_dtype), return_dict=True)
        target_ids = encoded.image_tokens.view(target_pixel_values.shape[0], -1)
        prefix = embed_condition(self.model, input_ids=input_ids, image_rows=image_rows, pixel_values=pixel_values)
        # Teacher forcing: the output at <begin_of_image> predicts token 0, the output at token k
        # predicts token k + 1.
        image_embeds = self.model.prepare_embeddings_for_image_generation(target_ids[:, :-1])
        embeds = torch.cat([prefix, image_embeds.to(prefix.dtype)], dim=1)
        mask = torch.cat([attention_mask, attention_mask.new_ones(target_ids[:, :-1].shape)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = janus.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
        ).last_hidden_state
        logits = janus.generation_head(hidden[:, -target_ids.shape[1]:, :])
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target_ids.reshape(-1))


def _same_length(**lists) -> None:
    lengths = {name: len(values) for name, values in lists.items()}
    if len(set(lengths.values())) > 1:
        raise UsageError("inputs must have one entry per row: " + ", ".join(f"{k}={v}" for k, v in lengths.items()) + ".")


def _left_pad(tensor, length: int):
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = (0, 0, missing, 0) if tensor.dim() == 3 else (missing, 0)
    return F.pad(tensor, pad, value=0)


# ---------------------------------------------------------------------- the tiny model

@dataclass(frozen=True)
class JanusDims:
    """The sizes of a Janus model built from config (random weights, no download)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int  # the text vocabulary is padded up to this many rows (the tokenizer is small)
    max_positions: int
    image_size: int  # both encoders see image_size px; one image is (image_size // 16 or patch) ** 2 tokens
    patch_size: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_mlp_ratio: float
    vq_codes: int
    vq_base_channels: int
    vq_channel_multiplier: tuple[int, ...]
    vq_res_blocks: int
    vq_latent_channels: int
    tie_embeddings: bool = True  # the text embedding and LM head share weights

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


#: ``janus-tiny``: 32 px, an 8x8 token grid for both encoders.
TINY_DIMS = JanusDims(
    hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64, vocab=0, max_positions=512, image_size=32, patch_size=4,
    vision_hidden=32, vision_layers=1, vision_heads=4, vision_mlp_ratio=2.0, vq_codes=64, vq_base_channels=32,
    vq_channel_multiplier=(1, 1, 2), vq_res_blocks=1, vq_latent_channels=32,
)
#: The Janus-Pro-1B architecture (deepseek-community/Janus-Pro-1B's config): a 24-layer Llama
#: (2048 wide, 16 heads, MLP 5632, 102,400-token vocabulary), SigLIP-L/16 at 384 px (576 tokens)
#: and the VQ16 tokenizer (16,384 codes of 8 dims, a 24x24 grid). Used by benchmarks with random weights.
JANUS_PRO_1B_DIMS = JanusDims(
    hidden=2048, layers=24, heads=16, kv_heads=16, intermediate=5632, vocab=102400, max_positions=16384,
    image_size=384, patch_size=16, vision_hidden=1024, vision_layers=24, vision_heads=16, vision_mlp_ratio=4.0,
    vq_codes=16384, vq_base_channels=128, vq_channel_multiplier=(1, 1, 2, 2, 4), vq_res_blocks=2,
    vq_latent_channels=256, tie_embeddings=False,
)


def build_tiny(folder: Path, *, seed: int = 0) -> None:
    """Write ``janus-tiny``: a random-weight Janus that asks, generates (32x32) and edits offline."""
    build_random(folder, TINY_DIMS, seed=seed, name="janus-tiny", defaults={"max_new_tokens": 8})


def build_random(folder: Path, dims: JanusDims, *, seed: int = 0, name: str, defaults: dict | None = None,
                 save_dtype=None) -> None:
    """Write a random-weight Janus of the given sizes in the ``save_pretrained`` layout.

    Follows REFERENCE.md's recipe for a config that can generate images: the VQ projection and
    image-token embedding sizes equal the text hidden size, one image is
    ``(image_size // patch_size) ** 2`` tokens for both encoders (the VQ downsamples by
    ``2 ** (len(channel_multiplier) - 1)``, which must equal the patch size), and BOS / pad /
    begin-of-image ids sit on the generation config. The tokenizer is a small byte-level BPE
    trained on the fly; the embedding table is padded to ``dims.vocab`` rows.
    """

    from tokenizers import processors
    from transformers import (
        GenerationConfig,
        JanusForConditionalGeneration,
        JanusImageProcessor,
        JanusProcessor,
        PreTrainedTokenizerFast,
    )

    from uniedit_cli.models import tiny

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    specials = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN, *ROLE_TOKENS]
    raw = tiny.train_byte_level_bpe(384, specials)
    # Janus' tokenizer prepends BOS to every encoding; the CFG prompt keeps it.
    raw.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, raw.token_to_id(BOS_TOKEN))],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN},
        padding_side="left", model_max_length=512,
    )

    config = janus_config(dims, tokenizer)
    image_size, num_image_tokens = dims.image_size, dims.num_image_tokens
    model = JanusForConditionalGeneration(config).eval()
    boi_id = tokenizer.convert_tokens_to_ids(BOI_TOKEN)
    # As the converted Janus-Pro checkpoints: guidance 5, temperature 1, pad and BOI ids.
    # transformers' own image-mode generate() reads BOI from generation_kwargs.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, guidance_scale=5.0, temperature=1.0,
        boi_token_id=boi_id, generation_kwargs={"boi_token_id": boi_id},
    )
    image_processor = JanusImageProcessor(
        # Janus-Pro's preprocessor: mean = std = 0.5.
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    processor = JanusProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
        num_image_tokens=num_image_tokens, use_default_system_prompt=False,
    )
    if save_dtype is not None:
        model = model.to(save_dtype)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    tiny.write_uniedit_json(folder, family="janus", name=name, defaults=dict(defaults or {}))


def janus_config(dims: JanusDims, tokenizer):
    """The ``JanusConfig`` of a model of these sizes around ``tokenizer`` (special tokens included)."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    hidden, image_size, patch_size = dims.hidden, dims.image_size, dims.patch_size
    if 2 ** (len(dims.vq_channel_multiplier) - 1) != patch_size:
        raise ValueError(f"the VQ downsamples by {2 ** (len(dims.vq_channel_multiplier) - 1)}, the patch size is {patch_size}")
    num_image_tokens = dims.num_image_tokens  # the same grid for both encoders
    text_config = LlamaConfig(
        vocab_size=max(len(tokenizer), dims.vocab), hidden_size=hidden, intermediate_size=dims.intermediate,
        num_hidden_layers=dims.layers, num_attention_heads=dims.heads, num_key_value_heads=dims.kv_heads,
        max_position_embeddings=dims.max_positions, **({} if dims.tie_embeddings else {"tie_word_embeddings": False}),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = JanusVisionConfig(
        hidden_size=dims.vision_hidden, num_hidden_layers=dims.vision_layers, num_attention_heads=dims.vision_heads,
        mlp_ratio=dims.vision_mlp_ratio, image_size=image_size,
        patch_size=patch_size, projection_dim=hidden, depth=2, num_image_tokens=num_image_tokens,
    )
    vq_extra = {} if dims is TINY_DIMS else {"num_patches": image_size // patch_size}
    vq_config = JanusVQVAEConfig(
        # base_channels >= 32: the VQ's GroupNorm uses 32 groups.
        embed_dim=8, num_embeddings=dims.vq_codes, latent_channels=dims.vq_latent_channels,
        base_channels=dims.vq_base_channels, channel_multiplier=list(dims.vq_channel_multiplier),
        num_res_blocks=dims.vq_res_blocks, projection_dim=hidden, image_token_embed_dim=hidden, num_hidden_layers=2,
        **vq_extra,
    )
    config = JanusConfig(
        text_config=text_config, vision_config=vision_config, vq_config=vq_config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **({} if dims.tie_embeddings else {"tie_word_embeddings": False}),
    )
    return config
