"""The two feature extractors of the MagicBrush protocol, loaded offline and run batched.

- CLIP: OpenAI CLIP ViT-B/32 through open_clip (``ViT-B-32`` with QuickGELU, the ``openai``
  weights), preprocessed exactly as OpenAI's ``clip.load`` transform: Resize(224, bicubic) of
  the shortest side, CenterCrop(224), ToTensor, Normalize(OpenAI mean/std)
  (MagicBrush evaluation/image_eval.py: ``clip.load("ViT-B/32")``).
- DINO: ViT-S/16 (``dino_vits16``), CLS token after the final norm, preprocessed as
  image_eval.py: Resize(256, bicubic), CenterCrop(224), ToTensor, ImageNet Normalize. Built
  through timm (``vit_small_patch16_224.dino``), whose parameter names are DINO's own, so both
  a timm checkpoint and torch hub's ``dino_deitsmall16_pretrain.pth`` state dict load.

Resizing and cropping use the same PIL operations as the official torchvision transforms (so
pixels are identical); the ToTensor/Normalize arithmetic runs batched on the device with the
same float32 operations. Models run in fp32 by default (bf16 / fp16 allowed for speed: the
cosines are always computed in float64 from float32 features).

Weights are never fetched behind the user's back when offline: a missing file is a
:class:`~uniedit_cli.errors.UsageError` naming the file, the hub cache it was looked for in and
the ``--clip-weights`` / ``--dino-weights`` option. Checkpoints are read with safetensors or
``torch.load(weights_only=True)`` only (OpenAI's original TorchScript ``ViT-B-32.pt`` is read
with ``torch.jit.load`` for its tensors).
"""

from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from uniedit_cli.errors import UsageError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CLIP_ARCH = "ViT-B-32"  # open_clip name; OpenAI's weights need QuickGELU (open_clip's pretrained cfg)
CLIP_HUB_REPO = "timm/vit_base_patch32_clip_224.openai"  # where open_clip 3.x fetches the `openai` tag
CLIP_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CLIP_LEGACY_FILE = Path("~/.cache/clip/ViT-B-32.pt")  # OpenAI's clip package and open_clip's URL cache
DINO_ARCH = "vit_small_patch16_224.dino"
DINO_HUB_REPO = "timm/vit_small_patch16_224.dino"
DINO_HUB_FILES = ("model.safetensors", "pytorch_model.bin")
DINO_TORCH_HUB_FILE = "dino_deitsmall16_pretrain.pth"  # torch.hub.load('facebookresearch/dino:main', 'dino_vits16')


# Random-weight builds (tests, benchmarks) are deterministic in (seed, device, dtype): build each
# once per process (a CLIP build initialises 151M parameters). Treat them as read-only.
_RANDOM_MODELS: dict[tuple, Any] = {}


# --- device / dtype -------------------------------------------------------------------------

def resolve_metric_dtype(dtype: str | Any):
    """``fp32`` (the default, and what ``auto`` means: numbers comparable with published ones),
    ``bf16`` or ``fp16`` for speed on a GPU."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"auto": torch.float32, "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    key = str(dtype).lower()
    if key not in table:
        raise UsageError(f"metric dtype {dtype!r}: expected auto, fp32, bf16 or fp16.")
    return table[key]


def resolve_metric_device(device: str | Any = "auto"):
    import torch

    if isinstance(device, torch.device):
        return device
    from uniedit_cli.models.base import resolve_device

    return resolve_device(str(device))


# Bump when preprocessing or pooling changes: persisted reference embeddings are keyed by it.
PREPROCESS_VERSION = 1


def encoder_cache_key(name: str, source: str, dtype, device) -> str:
    """Identifies what an embedding depends on besides the image: model, weights file (path,
    size, mtime), dtype, device type and the preprocessing version."""
    import hashlib

    ident = source
    p = Path(source)
    if p.is_file():
        st = p.stat()
        ident = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    raw = f"{name}|{ident}|{dtype}|{getattr(device, 'type', device)}|v{PREPROCESS_VERSION}"
    return f"{name}-{hashlib.sha1(raw.encode()).hexdigest()[:16]}"


# --- preprocessing (PIL, identical to the official torchvision transforms) ------------------

def clip_pixels(img) -> np.ndarray:
    """OpenAI CLIP's Resize(224, bicubic) + CenterCrop(224) of an RGB PIL image -> uint8 HxWx3."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    img = TF.center_crop(TF.resize(img, 224, interpolation=InterpolationMode.BICUBIC), 224)
    return np.asarray(img.convert("RGB"))


def dino_pixels(img) -> np.ndarray:
    """image_eval.py's DINO transform: Resize(256, interpolation=3 = bicubic) + CenterCrop(224)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    img = TF.center_crop(TF.resize(img, 256, interpolation=InterpolationMode.BICUBIC), 224)
    return np.asarray(img.convert("RGB"))


def _to_model_input(arrays: Sequence[np.ndarray], mean, std, device, dtype):
    """ToTensor + Normalize for a batch, on the device, in torchvision's float32 arithmetic."""
    import torch

    x = torch.from_numpy(np.stack(arrays)).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).to(torch.float32).div(255)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return x.sub(m).div(s).to(dtype)


# --- checkpoints ----------------------------------------------------------------------------

def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def read_state_dict(path: str | os.PathLike, *, what: str, option: str) -> dict[str, Any]:
    """Tensors of a checkpoint file: safetensors, or a state dict through
    ``torch.load(weights_only=True)`` (never a full unpickle), or a TorchScript archive's
    parameters. Nested ``state_dict`` / ``model`` / ``teacher`` entries are unwrapped and a
    ``module.`` prefix dropped."""
    import torch

    p = Path(os.path.expanduser(str(path)))
    if not p.is_file():
        raise UsageError(f"{what} weights {str(p)!r}: no such file.", hint=f"Pass an existing file to {option}.")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p), device="cpu")
        except Exception as exc:
            raise UsageError(f"{what} weights {str(p)!r} are not a readable safetensors file ({exc}).") from None
    elif _is_torchscript(p):
        try:
            obj = dict(torch.jit.load(str(p), map_location="cpu").state_dict())
        except Exception as exc:
            raise UsageError(f"{what} weights {str(p)!r}: could not read the TorchScript archive ({exc}).") from None
    else:
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UsageError(
                f"{what} weights {str(p)!r} cannot be loaded safely ({first}).",
                hint="Only safetensors files and plain state dicts (torch.load weights_only=True) are accepted; "
                     "convert the checkpoint to safetensors.",
            ) from None
    for key in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise UsageError(f"{what} weights {str(p)!r} do not hold a state dict (found {type(obj).__name__}).")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _hub_cached_file(repo: str, names: Sequence[str]) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except Exception:  # pragma: no cover - huggingface_hub is a dependency
        return None
    for name in names:
        try:
            hit = try_to_load_from_cache(repo, name)
        except Exception:
            hit = None
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    return None


def _hub_download(repo: str, names: Sequence[str]) -> Path | None:
    from uniedit_cli.models.base import hub_reachable

    if not hub_reachable():
        return None
    from huggingface_hub import hf_hub_download

    for name in names:
        try:
            return Path(hf_hub_download(repo, name))
        except Exception:
            continue
    return None


def _hub_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return "~/.cache/huggingface/hub"


@contextlib.contextmanager
def _quiet_model_logs():
    """open_clip logs 'No pretrained weights loaded' on the root logger for a bare build."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# --- CLIP -----------------------------------------------------------------------------------

class ClipEncoder:
    """OpenAI CLIP ViT-B/32: batched image and text embeddings (float32, unnormalised)."""

    dim = 512
    name = "clip-vit-b-32-openai"

    def __init__(self, model, tokenizer, device, dtype, source: str):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.source = source

    def cache_key(self) -> str:
        return encoder_cache_key(self.name, self.source, self.dtype, self.device)

    def describe(self) -> dict[str, str]:
        return {"model": f"open_clip {CLIP_ARCH} (OpenAI CLIP ViT-B/32)", "weights": self.source,
                "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device)}

    @staticmethod
    def preprocess(img) -> np.ndarray:
        return clip_pixels(img)

    def encode_images(self, arrays: Sequence[np.ndarray]):
        """Embeddings of preprocessed images (``clip_pixels`` outputs) -> (N, 512) float32 CPU."""
        import torch

        if not len(arrays):
            return torch.zeros(0, self.dim)
        with torch.inference_mode():
            x = _to_model_input(arrays, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, self.device, self.dtype)
            return self.model.encode_image(x).float().cpu()

    def tokenize(self, texts: Sequence[str]):
        # open_clip's SimpleTokenizer is OpenAI's BPE (same vocab, same ftfy/whitespace/lower
        # cleaning); captions longer than 77 tokens are truncated where clip.tokenize would raise.
        return self.tokenizer(list(texts))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64):
        """Text embeddings -> (N, 512) float32 CPU.

        The text tower is causal and pools at the end-of-text token, so tokens after it never
        influence the result: each batch runs only up to its longest caption instead of all 77
        positions (same numbers as ``model.encode_text`` up to float rounding, a fraction of the
        work for short captions)."""
        import torch

        if not len(texts):
            return torch.zeros(0, self.dim)
        tokens = self.tokenize(texts)
        ends = tokens.argmax(dim=-1)  # the end-of-text id is the largest id (open_clip 'argmax' pooling)
        order = torch.argsort(ends)
        out = torch.empty(len(texts), self.dim)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start:start + batch_size]
                out[idx] = self._encode_tokens(tokens[idx], int(ends[idx].max()) + 1).float().cpu()
        return out

    def _encode_tokens(self, tokens, length: int):
        import torch

        m = self.model
        tokens = tokens.to(self.device)
        if getattr(m, "text_pool_type", "argmax") != "argmax" or not hasattr(m, "attn_mask") or m.attn_mask is None:
            return m.encode_text(tokens)
        tok = tokens[:, :length]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tok).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tok.argmax(dim=-1)]
        proj = m.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Module) else x @ proj


def _find_clip_weights() -> Path | None:
    hit = _hub_cached_file(CLIP_HUB_REPO, CLIP_HUB_FILES)
    if hit:
        return hit
    legacy = CLIP_LEGACY_FILE.expanduser()
    return legacy if legacy.is_file() else None


def clip_missing_error(option: str = "--clip-weights") -> UsageError:
    return UsageError(
        "CLIP ViT-B/32 (OpenAI) weights are not on this machine and cannot be downloaded.",
        hint=(f"On a machine with network run `hf download {CLIP_HUB_REPO} {CLIP_HUB_FILES[0]}` and copy the hub cache "
              f"({_hub_cache_dir()}), or place OpenAI's ViT-B-32.pt at {CLIP_LEGACY_FILE}, or "
              f"pass a local checkpoint file to {option} (safetensors, state dict or OpenAI's ViT-B-32.pt)."),
    )


def clip_weights_path(weights: str | os.PathLike | None = None, *, option: str = "--clip-weights") -> Path:
    """The CLIP ViT-B/32 checkpoint file ``weights`` names (a file, or a folder holding one; None:
    the hub cache, the legacy cache, a download); a usage error naming ``option`` otherwise."""
    return _resolve_weights_path(weights, _find_clip_weights, CLIP_HUB_REPO, CLIP_HUB_FILES, "CLIP", option,
                                 lambda: clip_missing_error(option))


def load_clip(weights: str | os.PathLike | None = None, *, device="auto", dtype="fp32",
              random_weights: bool = False, seed: int = 0, option: str = "--clip-weights") -> ClipEncoder:
    """OpenAI CLIP ViT-B/32 for the clip-i / clip-t / clip-dir / ... metrics.

    ``weights``: a checkpoint file or a folder holding one; None looks in the hub cache
    (``timm/vit_base_patch32_clip_224.openai``, open_clip's source for the ``openai`` tag), then
    ``~/.cache/clip/ViT-B-32.pt``, then downloads when the hub is reachable; else UsageError.
    ``random_weights=True`` (tests, benchmarks): the real architecture, random weights (seeded).
    ``option``: the command's flag that passes ``weights``, named in error messages.
    """
    import open_clip
    import torch

    dev = resolve_metric_device(device)
    dt = resolve_metric_dtype(dtype)
    path = None
    if not random_weights:  # find the file before building anything: a missing one fails fast
        path = clip_weights_path(weights, option=option)
    key = ("clip", seed, str(dev), str(dt))
    if path is None and key in _RANDOM_MODELS:
        model = _RANDOM_MODELS[key]
        return ClipEncoder(model, open_clip.get_tokenizer(CLIP_ARCH), dev, dt, f"random (seed {seed})")
    if path is None:
        with _quiet_model_logs(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(CLIP_ARCH, pretrained=None, force_quick_gelu=True)
        source = f"random (seed {seed})"
    else:
        # built on the meta device (no 151M-parameter random init), then the file's tensors assigned
        with _quiet_model_logs(), torch.device("meta"):
            model = open_clip.create_model(CLIP_ARCH, pretrained=None, force_quick_gelu=True, device="meta")
        sd = read_state_dict(path, what="CLIP", option=option)
        for key in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(key, None)
        if "logit_scale" in sd and sd["logit_scale"].ndim != model.logit_scale.ndim:
            sd["logit_scale"] = sd["logit_scale"].reshape(model.logit_scale.shape)
        _load_strict(model, sd, path, "CLIP ViT-B/32", option)
        source = str(path)
    model = model.to(device=dev, dtype=dt).eval()
    if path is None:
        _RANDOM_MODELS[key] = model
    tokenizer = open_clip.get_tokenizer(CLIP_ARCH)
    return ClipEncoder(model, tokenizer, dev, dt, source)


# --- DINO -----------------------------------------------------------------------------------

class DinoEncoder:
    """DINO ViT-S/16: batched CLS features (float32, unnormalised)."""

    dim = 384
    name = "dino-vits16"

    def __init__(self, model, device, dtype, source: str):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.source = source

    def cache_key(self) -> str:
        return encoder_cache_key(self.name, self.source, self.dtype, self.device)

    def describe(self) -> dict[str, str]:
        return {"model": "DINO ViT-S/16 (timm vit_small_patch16_224.dino, CLS token)", "weights": self.source,
                "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device)}

    @staticmethod
    def preprocess(img) -> np.ndarray:
        return dino_pixels(img)

    def encode_images(self, arrays: Sequence[np.ndarray]):
        import torch

        if not len(arrays):
            return torch.zeros(0, self.dim)
        with torch.inference_mode():
            x = _to_model_input(arrays, IMAGENET_MEAN, IMAGENET_STD, self.device, self.dtype)
            # timm with num_classes=0 and token pooling returns norm(x)[:, 0]: DINO's forward.
            return self.model(x).float().cpu()


def _find_dino_weights() -> Path | None:
    hit = _hub_cached_file(DINO_HUB_REPO, DINO_HUB_FILES)
    if hit:
        return hit
    try:
        import torch

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / DINO_TORCH_HUB_FILE
    except Exception:  # pragma: no cover
        return None
    return candidate if candidate.is_file() else None


def dino_missing_error() -> UsageError:
    try:
        import torch

        hub_file = str(Path(torch.hub.get_dir()) / "checkpoints" / DINO_TORCH_HUB_FILE)
    except Exception:  # pragma: no cover
        hub_file = f"~/.cache/torch/hub/checkpoints/{DINO_TORCH_HUB_FILE}"
    return UsageError(
        "DINO ViT-S/16 weights for the dino metrics are not on this machine and cannot be downloaded.",
        hint=(f"On a machine with network run `hf download {DINO_HUB_REPO}` and copy the hub cache ({_hub_cache_dir()}), "
              f"or place {DINO_TORCH_HUB_FILE} (dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/) at {hub_file}, "
              f"or pass the file with --dino-weights FILE (safetensors or state dict)."),
    )


def _dino_state_dict(sd: dict[str, Any]) -> dict[str, Any]:
    """DINO training checkpoints prefix the backbone with ``backbone.`` and carry a projection
    head; keep the backbone only."""
    if sd and any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


def load_dino(weights: str | os.PathLike | None = None, *, device="auto", dtype="fp32",
              random_weights: bool = False, seed: int = 0) -> DinoEncoder:
    """DINO ViT-S/16 for the dino / dino-src metrics (see :func:`load_clip` for ``weights``);
    None looks in the hub cache (``timm/vit_small_patch16_224.dino``) and torch hub's cache."""
    import timm
    import torch

    dev = resolve_metric_device(device)
    dt = resolve_metric_dtype(dtype)
    path = None
    if not random_weights:
        path = _resolve_weights_path(weights, _find_dino_weights, DINO_HUB_REPO, DINO_HUB_FILES, "DINO",
                                     "--dino-weights", dino_missing_error)
    key = ("dino", seed, str(dev), str(dt))
    if path is None and key in _RANDOM_MODELS:
        return DinoEncoder(_RANDOM_MODELS[key], dev, dt, f"random (seed {seed})")
    if path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(DINO_ARCH, pretrained=False, num_classes=0)
        source = f"random (seed {seed})"
    else:
        with torch.device("meta"):
            model = timm.create_model(DINO_ARCH, pretrained=False, num_classes=0)
        sd = _dino_state_dict(read_state_dict(path, what="DINO", option="--dino-weights"))
        _load_strict(model, sd, path, "DINO ViT-S/16", "--dino-weights")
        source = str(path)
    model = model.to(device=dev, dtype=dt).eval()
    if path is None:
        _RANDOM_MODELS[key] = model
    return DinoEncoder(model, dev, dt, source)


# --- shared ---------------------------------------------------------------------------------

def _resolve_weights_path(weights, finder, repo: str, names: Sequence[str], what: str, option: str, missing) -> Path:
    if weights is not None:
        p = Path(os.path.expanduser(str(weights)))
        if p.is_dir():
            for name in (*names, "open_clip_model.safetensors", "model.safetensors", "pytorch_model.bin",
                         DINO_TORCH_HUB_FILE, "ViT-B-32.pt"):
                if (p / name).is_file():
                    return p / name
            found = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.pt")) + list(p.glob("*.pth")) +
                           list(p.glob("*.bin")))
            if len(found) == 1:
                return found[0]
            raise UsageError(f"{what} weights folder {str(p)!r} holds no single checkpoint file.",
                             hint=f"Pass the file itself to {option}.")
        if not p.is_file():
            raise UsageError(f"{what} weights {str(p)!r}: no such file.", hint=f"Pass an existing file to {option}.")
        return p
    found = finder()
    if found is not None:
        return found
    downloaded = _hub_download(repo, names)
    if downloaded is not None:
        return downloaded
    raise missing()


def _load_strict(model, sd: dict[str, Any], path: Path, what: str, option: str) -> None:
    import torch

    try:
        result = model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        first = (str(exc).strip().splitlines() or ["shape mismatch"])[-1].strip()
        raise UsageError(f"{str(path)!r} is not a {what} checkpoint ({first}).",
                         hint=f"Pass the right file to {option}.") from None
    missing = [k for k in result.missing_keys if k != "attn_mask"]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise UsageError(f"{str(path)!r} is not a {what} checkpoint: {'; '.join(detail)} parameters.",
                         hint=f"Pass the right file to {option}.")
    # non-persistent buffers are not in a checkpoint: CLIP's causal text mask is rebuilt as
    # open_clip builds it (-inf above the diagonal)
    mask = getattr(model, "attn_mask", None)
    if isinstance(mask, torch.Tensor) and mask.is_meta:
        n = mask.shape[0]
        model.register_buffer("attn_mask", torch.full((n, n), float("-inf")).triu_(1), persistent=False)
    still_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if still_meta:  # pragma: no cover - every parameter is checked above
        raise UsageError(f"{str(path)!r} leaves {what} tensors unset ({', '.join(still_meta[:3])}).")
