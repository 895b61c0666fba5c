"""What the one training loop needs from each family: the loss, the trainable parts, LoRA
targets, the native resolution, validation edits and the final save.

:func:`trainee_for` wraps a loaded adapter in a :class:`Trainee`. The loop only ever calls
``trainee.training_loss(batch)``, which is the adapter's own ``training_loss`` for Janus
(:class:`uniedit_cli.models.janus.JanusEditObjective`) and :class:`InstructPix2PixObjective`
here for InstructPix2Pix. Both losses are ``nn.Module`` forwards, so accelerate's DDP / FSDP /
DeepSpeed wrappers see every parameter the loss uses.

A batch from the loop holds ``input_images``, ``edit_prompts``, ``edited_images`` (PIL lists),
``row_seeds`` (one per row, see :func:`uniedit_cli.train.data.row_seed`), ``drop_text_prob``,
``drop_image_prob`` and ``rng`` (a :class:`RowRandom` over the row seeds).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from uniedit_cli.errors import UsageError
from uniedit_cli.train.config import FAMILY_TRAINING


class RowRandom(random.Random):
    """A ``random.Random`` whose k-th draw comes from row ``k % rows``'s own stream.

    Janus' ``training_inputs`` draws its dropout decisions row by row (all text decisions, then
    all image decisions); routing each draw to its row's stream makes every row's decisions a
    function of its own seed, not of the rows that share its batch or rank.
    """

    def __init__(self, seeds: Sequence[int]):
        self._streams = [random.Random(f"rows:{int(s)}") for s in seeds] or [random.Random(0)]
        self._calls = 0
        super().__init__(0)

    def _next(self) -> random.Random:
        stream = self._streams[self._calls % len(self._streams)]
        self._calls += 1
        return stream

    def random(self) -> float:  # noqa: D102 - random.Random's contract
        return self._next().random()

    def getrandbits(self, k: int) -> int:  # noqa: D102
        return self._next().getrandbits(k)


@dataclass
class LoraSettings:
    rank: int
    alpha: float
    dropout: float
    targets: str | None  # regex of module names (relative to the trainee's root); None: the family's


def _is_under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class Trainee:
    """Family-independent training plumbing around a loaded adapter; subclasses fill the facts."""

    family: str = ""
    parts: dict[str, tuple[str, ...]] = {}  # --freeze name -> module paths under ``root``
    always_frozen: tuple[str, ...] = ()  # never trained (Janus' VQ tokenizer, SD's VAE)
    default_lora_targets: str = ""

    def __init__(self, adapter):
        self.adapter = adapter
        self.lora: LoraSettings | None = None
        self.frozen_parts: list[str] = []
        assert set(self.parts) == set(FAMILY_TRAINING[self.family]["parts"]), "config.FAMILY_TRAINING is out of date"

    # --- what the subclasses provide
    @property
    def root(self) -> torch.nn.Module:
        """The unwrapped module whose parameters are trained (part paths and LoRA names are under it)."""
        raise NotImplementedError

    @property
    def objective(self) -> torch.nn.Module:
        raise NotImplementedError

    @objective.setter
    def objective(self, wrapped) -> None:
        raise NotImplementedError

    def training_loss(self, batch: dict):
        raise NotImplementedError

    @property
    def native_resolution(self) -> int:
        raise NotImplementedError

    def check_resolution(self, resolution: int | None) -> int:
        raise NotImplementedError

    def enable_gradient_checkpointing(self) -> None:
        raise NotImplementedError

    def edit(self, images: list, instructions: list[str], *, seeds: list[int], **options) -> list:
        return self.adapter.edit(images, instructions, seeds=seeds, **options)

    def save(self, folder: Path, *, extra: dict) -> Path:
        raise NotImplementedError

    def may_skip_parameters(self, drop_image_prob: float) -> bool:
        """Whether a step can leave a trainable parameter without gradient (DDP must then look for it)."""
        return False

    # --- shared
    def configure(self, *, freeze: list[str], lora: LoraSettings | None) -> list[tuple[str, torch.nn.Parameter]]:
        """Set ``requires_grad`` by part (and inject LoRA adapters); returns the trainable parameters."""
        root = self.root
        self.frozen_parts = list(freeze)
        trained_paths = [path for part, paths in self.parts.items() if part not in freeze for path in paths]
        root.requires_grad_(False)
        if lora is None:
            for path in trained_paths:
                root.get_submodule(path).requires_grad_(True)
            for path in self.always_frozen:
                root.get_submodule(path).requires_grad_(False)
        else:
            self._inject_lora(lora, trained_paths)
        trainable = [(name, p) for name, p in root.named_parameters() if p.requires_grad]
        if not trainable:
            raise UsageError("nothing to train: every part is frozen.", hint="Change --freeze.")
        return trainable

    def _inject_lora(self, lora: LoraSettings, trained_paths: list[str]) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        pattern = lora.targets or self.default_lora_targets
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"--lora-targets {pattern!r} is not a valid regular expression ({exc}).") from None
        root = self.root
        names = [name for name, module in root.named_modules()
                 if name and regex.fullmatch(name) and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
                 and _is_under(name, trained_paths) and not _is_under(name, self.always_frozen)]
        if not names:
            raise UsageError(
                f"--lora-targets {pattern!r} matches no linear or conv layer in the trained parts "
                f"({', '.join(p for p in self.parts if p not in self.frozen_parts) or 'none'}).",
                hint="Module names look like " + ", ".join(n for n, _ in list(root.named_modules())[1:4]) + ".")
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=names,
                            bias="none")
        inject_adapter_in_model(config, root)
        root.requires_grad_(False)
        for name, param in root.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
        self.lora = lora
        self.lora_config = config

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA weights (names relative to ``root``, adapter name removed), for final/lora/."""
        return {name.replace(".default", ""): p.detach().cpu().contiguous()
                for name, p in self.root.named_parameters() if "lora_" in name}

    def merge_lora(self) -> None:
        """Fold the LoRA updates into the base weights and put the plain layers back (W + BA)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        root = self.root
        for name, module in list(root.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                parent = root.get_submodule(parent_name) if parent_name else root
                setattr(parent, child, module.get_base_layer())
        self.lora = None

    def uniedit_meta(self, extra: dict) -> dict:
        resolved = self.adapter.resolved
        meta = dict(resolved.metadata or {})
        meta.update({"family": self.family, "base_model": meta.get("base_model") or resolved.display,
                     "defaults": meta.get("defaults", {})})
        meta.update(extra)
        return meta


# --- Janus-Pro ----------------------------------------------------------------------------------

class JanusTrainee(Trainee):
    """Janus-Pro: the adapter's ``training_loss`` (VQ-token cross-entropy through the generation
    head, source image through the understanding encoder; ``models/janus.py``)."""

    family = "janus"
    parts = {
        "vision": ("model.vision_model", "model.aligner"),  # SigLIP + aligner: frozen by default (Uni-Edit: ViT frozen)
        "language": ("model.language_model",),
        "generation": ("model.generation_embeddings", "model.generation_aligner", "model.generation_head"),
    }
    # The VQ tokenizer stays frozen (REFERENCE.md, Janus training). An untied lm_head is unused
    # by the edit loss (Uni-Edit trains with no text loss), so it stays as it is too.
    always_frozen = ("model.vqmodel",)
    default_lora_targets = (r"model\.language_model\.layers\.\d+\."
                            r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))")

    @property
    def root(self):
        return self.adapter.model

    @property
    def objective(self):
        return self.adapter.objective

    @objective.setter
    def objective(self, wrapped) -> None:
        self.adapter.objective = wrapped

    def training_loss(self, batch: dict):
        return self.adapter.training_loss(batch)

    @property
    def native_resolution(self) -> int:
        return int(self.adapter.image_size)

    def check_resolution(self, resolution: int | None) -> int:
        native = self.native_resolution
        if resolution is not None and int(resolution) != native:
            grid = self.adapter.model.model.vqmodel.quantize.quant_state_dims
            raise UsageError(
                f"--resolution {resolution}: {self.adapter.resolved.display} generates {native}x{native} images "
                f"(a {grid[0]}x{grid[1]} VQ token grid), so its targets must be {native} px.",
                hint="Omit --resolution (sources and targets are resized to the model's size).")
        return native

    def enable_gradient_checkpointing(self) -> None:
        # non-reentrant: correct with frozen embeddings (the reentrant variant needs inputs that require grad)
        self.adapter.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def may_skip_parameters(self, drop_image_prob: float) -> bool:
        # a batch whose source images are all dropped never runs the vision encoder
        return "vision" not in self.frozen_parts and drop_image_prob > 0

    def save(self, folder: Path, *, extra: dict) -> Path:
        return self.adapter.save(folder, extra=self.uniedit_meta(extra))


# --- InstructPix2Pix ----------------------------------------------------------------------------

class InstructPix2PixObjective(torch.nn.Module):
    """The InstructPix2Pix loss (Brooks et al. 2023, sec. 3.2.1), as in diffusers' train_instruct_pix2pix.py.

    The target image is encoded by the frozen VAE (a posterior sample, scaled by the VAE's
    scaling factor) and noised by the DDPM forward process at a uniform timestep; the UNet
    (8 input channels: the noisy latents and the source image's unscaled latent mode, the same
    conditioning the pipeline builds at inference) predicts the scheduler's prediction target
    (epsilon, v or the sample) from the instruction's CLIP embedding. Conditioning dropout as in
    InstructPix2Pix sec. 3.2.1 (and diffusers' example): with the default 0.05 / 0.05, 5% of
    rows get the empty prompt's embedding, 5% zero source latents and 5% both, the
    unconditional inputs of the pipeline's two-way classifier-free guidance (eq. 3).
    """

    def __init__(self, unet, vae, text_encoder, noise_scheduler):
        super().__init__()
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.noise_scheduler = noise_scheduler  # not a module: no parameters
        self._null_embedding = None

    def _encode_text(self, input_ids):
        if any(p.requires_grad for p in self.text_encoder.parameters()):
            return self.text_encoder(input_ids, return_dict=False)[0]
        with torch.no_grad():
            return self.text_encoder(input_ids, return_dict=False)[0]

    def _null(self, null_input_ids):
        trained = any(p.requires_grad for p in self.text_encoder.parameters())
        if trained:
            return self._encode_text(null_input_ids)
        if self._null_embedding is None or self._null_embedding.device != null_input_ids.device:
            # a frozen text encoder gives the empty prompt the same embedding every step: once is enough
            self._null_embedding = self._encode_text(null_input_ids).detach()
        return self._null_embedding

    def forward(self, source_pixel_values, target_pixel_values, input_ids, null_input_ids, drop_text, drop_image,
                noise, timesteps, posterior_noise):
        vae_dtype = next(self.vae.parameters()).dtype
        with torch.no_grad():
            # Two VAE passes, not one of twice the batch: the encoder's mid-block attention is
            # quadratic in the latent size and would double the peak memory.
            posterior = self.vae.encode(target_pixel_values.to(vae_dtype)).latent_dist
            latents = (posterior.mean + posterior.std * posterior_noise.to(posterior.mean.dtype))
            latents = latents * self.vae.config.scaling_factor
            # the source enters as the posterior mode, unscaled: what the pipeline's prepare_image_latents uses
            source_latents = self.vae.encode(source_pixel_values.to(vae_dtype)).latent_dist.mode()
        text = self._encode_text(input_ids)
        null = self._null(null_input_ids).to(text.dtype)
        text = torch.where(drop_text.view(-1, 1, 1), null.expand_as(text), text)
        keep_image = (~drop_image).to(source_latents.dtype).view(-1, 1, 1, 1)
        source_latents = source_latents * keep_image
        noise = noise.to(latents.dtype)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        elif prediction_type == "sample":
            target = latents
        else:  # pragma: no cover - diffusers' schedulers know only these three
            raise UsageError(f"the scheduler's prediction type {prediction_type!r} is not supported for training.")
        model_input = torch.cat([noisy, source_latents.to(noisy.dtype)], dim=1)
        prediction = self.unet(model_input, timesteps, text, return_dict=False)[0]
        return F.mse_loss(prediction.float(), target.float(), reduction="mean")


def pixels_to_tensor(images: Sequence, device) -> torch.Tensor:
    """PIL RGB images (one size) -> (B, 3, H, W) float in [-1, 1] (Stable Diffusion's VAE range)."""
    import numpy as np

    array = np.stack([np.asarray(img.convert("RGB"), dtype=np.uint8) for img in images])
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    return tensor.contiguous().to(device)


class InstructPix2PixTrainee(Trainee):
    """InstructPix2Pix through the adapter's pipeline components (``adapter.pipe``)."""

    family = "ip2p"
    parts = {"unet": ("unet",), "text": ("text_encoder",)}
    always_frozen = ("vae",)
    # diffusers' LoRA convention for Stable Diffusion UNets: the attention projections
    default_lora_targets = r"unet\..*\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)"

    def __init__(self, adapter):
        super().__init__(adapter)
        from diffusers import DDPMScheduler

        pipe = adapter.pipe
        if type(pipe).__name__ != "StableDiffusionInstructPix2PixPipeline":
            raise UsageError(f"training {type(pipe).__name__} is not supported yet; uniedit trains the Stable Diffusion "
                             "InstructPix2Pix pipeline.")
        if pipe.unet.config.in_channels != 2 * pipe.vae.config.latent_channels:
            raise UsageError(
                f"{adapter.resolved.display}: its UNet takes {pipe.unet.config.in_channels} input channels; InstructPix2Pix "
                f"needs {2 * pipe.vae.config.latent_channels} (noisy latents + source latents, paper sec. 3.2.1).")
        # Training noises with the DDPM forward process of the checkpoint's own schedule (betas,
        # prediction type), as diffusers' example loads DDPMScheduler from the model's scheduler config.
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.module = InstructPix2PixObjective(pipe.unet, pipe.vae, pipe.text_encoder, self.noise_scheduler)
        self._wrapped = self.module
        self.tokenizer = pipe.tokenizer
        self._null_ids = None

    @property
    def root(self):
        return self.module

    @property
    def objective(self):
        return self._wrapped

    @objective.setter
    def objective(self, wrapped) -> None:
        self._wrapped = wrapped

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.adapter.pipe.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        return int(self.adapter.pipe.unet.config.sample_size) * self.vae_scale_factor

    def check_resolution(self, resolution: int | None) -> int:
        factor = self.vae_scale_factor
        resolution = self.native_resolution if resolution is None else int(resolution)
        if resolution % factor or resolution < factor:
            raise UsageError(
                f"--resolution {resolution}: {self.adapter.resolved.display}'s VAE downsamples by {factor}, so the side "
                f"must be a positive multiple of {factor}.",
                hint=f"Try {max(factor, resolution // factor * factor)}.")
        return resolution

    def enable_gradient_checkpointing(self) -> None:
        self.adapter.pipe.unet.enable_gradient_checkpointing()
        if "text" not in self.frozen_parts:
            self.adapter.pipe.text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _tokenize(self, texts: list[str]):
        # the pipeline's own prompt encoding: padded to the tokenizer's maximum length, truncated
        return self.tokenizer(texts, max_length=self.tokenizer.model_max_length, padding="max_length", truncation=True,
                              return_tensors="pt").input_ids

    def training_inputs(self, batch: dict) -> dict:
        device = self.adapter.device
        sources, prompts, targets = batch["input_images"], batch["edit_prompts"], batch["edited_images"]
        if not (len(sources) == len(prompts) == len(targets)):
            raise UsageError("a training batch needs one source, instruction and target per row.")
        seeds = batch.get("row_seeds") or [random.getrandbits(63) for _ in prompts]
        p_text = float(batch.get("drop_text_prob") or 0.0)
        p_image = float(batch.get("drop_image_prob") or 0.0)
        source_pixels = pixels_to_tensor(sources, device)
        target_pixels = pixels_to_tensor(targets, device)
        factor = self.vae_scale_factor
        shape = (self.adapter.pipe.vae.config.latent_channels, target_pixels.shape[2] // factor,
                 target_pixels.shape[3] // factor)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps, drop_text, drop_image, noise, posterior_noise = [], [], [], [], []
        for seed in seeds:
            # every draw of a row comes from its own generator, in a fixed order
            g = torch.Generator().manual_seed(int(seed))
            timesteps.append(torch.randint(0, steps, (1,), generator=g))
            # InstructPix2Pix sec. 3.2.1: 5% of rows lose the instruction only, 5% the image only
            # and 5% both (the fully unconditional branch of eq. 3), from one draw per row
            u = float(torch.rand(2, generator=g)[0])
            text_only, image_only, both = p_text, p_image, min(p_text, p_image)
            drop_text.append(u < text_only or text_only + image_only <= u < text_only + image_only + both)
            drop_image.append(text_only <= u < text_only + image_only + both)
            noise.append(torch.randn(shape, generator=g))
            posterior_noise.append(torch.randn(shape, generator=g))
        if self._null_ids is None:
            self._null_ids = self._tokenize([""])
        return {
            "source_pixel_values": source_pixels,
            "target_pixel_values": target_pixels,
            "input_ids": self._tokenize(list(prompts)).to(device),
            "null_input_ids": self._null_ids.to(device),
            "drop_text": torch.tensor(drop_text, device=device),
            "drop_image": torch.tensor(drop_image, device=device),
            "noise": torch.stack(noise).to(device),
            "timesteps": torch.cat(timesteps).long().to(device),
            "posterior_noise": torch.stack(posterior_noise).to(device),
        }

    def training_loss(self, batch: dict):
        return self._wrapped(**self.training_inputs(batch))

    def save(self, folder: Path, *, extra: dict) -> Path:
        from uniedit_cli.io import write_json

        folder = Path(folder)
        self.adapter.save(folder)
        meta = self.uniedit_meta(extra)
        meta.setdefault("pipeline", type(self.adapter.pipe).__name__)
        write_json(folder / "uniedit.json", meta)
        return folder


TRAINEES: dict[str, type[Trainee]] = {"janus": JanusTrainee, "ip2p": InstructPix2PixTrainee}


def trainee_for(adapter) -> Trainee:
    family = adapter.resolved.family
    if family not in TRAINEES:
        raise UsageError(f"the {family} family cannot be trained by `uniedit train` yet; trainable: {', '.join(TRAINEES)}.")
    return TRAINEES[family](adapter)


def adapter_batch(rows: dict, *, drop_text_prob: float, drop_image_prob: float) -> dict:
    """The loop's collated rows -> the batch every family's ``training_loss`` takes."""
    return {
        "input_images": rows["source"], "edit_prompts": rows["instruction"], "edited_images": rows["target"],
        "row_seeds": rows["row_seed"], "drop_text_prob": drop_text_prob, "drop_image_prob": drop_image_prob,
        "rng": RowRandom(rows["row_seed"]),
    }


def describe_parameters(root: torch.nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in root.parameters())
    trainable = sum(p.numel() for p in root.parameters() if p.requires_grad)
    return {"parameters": total, "trainable_parameters": trainable}
