"""What every adapter shares: loading, device/dtype choice, seeding, offline errors.

Adapters are batch-first. A family implements the methods it can:

- ``ask(images, questions, **opts) -> list[str]``
- ``generate(prompts, seeds, **opts) -> list[PIL.Image]``
- ``edit(images, instructions, seeds, **opts) -> list[PIL.Image]``
- ``rewrite(prompts, **opts) -> list[str]`` (text LLMs)
- ``training_loss(batch) -> Tensor`` and ``save(folder)`` (trainable families)

Generation knobs (steps, guidance, size, ...) are keyword arguments; their defaults come from
the registry (the family's published defaults), a folder's ``uniedit.json`` and CLI flags.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from uniedit_cli.errors import ModelNotFoundError, UniEditError
from uniedit_cli.registry import ResolvedModel


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _local_rank())
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UniEditError(f"--device {device}: CUDA is not available on this machine.", hint="Use --device cpu or auto.")
    if device == "cuda":
        return torch.device("cuda", _local_rank())
    return torch.device(device)


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_dtype(dtype: str, device):
    """bf16 on GPUs that support it, fp32 on CPU, unless the user says otherwise."""
    import torch

    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in table:
        raise UniEditError(f"--dtype {dtype!r}: expected auto, bf16, fp16 or fp32.")
    return table[dtype]


def make_generator(seed: int, device=None):
    """A torch.Generator on the CPU: the same seed gives the same noise on any device."""
    import torch

    return torch.Generator("cpu").manual_seed(int(seed))


@contextlib.contextmanager
def weights_errors(resolved: ResolvedModel):
    """Turn 'weights not found / no network' into one clear message with the hub id and the fix."""
    try:
        yield
    except UniEditError:
        raise
    except (OSError, ValueError) as exc:
        text = str(exc)
        offline_markers = ("offline", "couldn't connect", "Connection", "cannot find the requested files",
                           "does not appear to have", "not the path to a directory", "LocalEntryNotFound",
                           "We couldn't", "Can't load", "is not a local folder", "Max retries", "resolve")
        if resolved.local and not isinstance(exc, OSError):
            raise
        if resolved.local or any(marker.lower() in text.lower() for marker in offline_markers) or type(exc).__name__ in (
            "LocalEntryNotFoundError", "RepositoryNotFoundError", "GatedRepoError", "HFValidationError",
            "OfflineModeIsEnabled"):
            if resolved.local:
                raise ModelNotFoundError(
                    f"could not load model folder {resolved.location!r}: {text.splitlines()[0] if text else type(exc).__name__}.",
                    hint="Check that the folder holds a complete checkpoint (all weight and tokenizer files).",
                ) from None
            raise ModelNotFoundError(
                f"weights for {resolved.display!r} (hub id {resolved.location}) are not on this machine and cannot be downloaded.",
                hint=(f"On a machine with network run `hf download {resolved.location} --local-dir <folder>`, copy the folder "
                      f"here and pass --model <folder> (or point HF_HOME at a cache that holds it)."),
            ) from None
        raise


def ensure_built(resolved: ResolvedModel) -> None:
    """Build a registry tiny model into its folder on first use (deterministic random weights)."""
    if resolved.spec is None or not resolved.spec.builtin:
        return
    from pathlib import Path

    folder = Path(resolved.location)
    if (folder / "uniedit.json").exists():
        return
    from uniedit_cli.models.tiny import build_tiny

    build_tiny(resolved.spec.name, folder)


class Adapter:
    """Base class: holds the resolved model, device and dtype; subclasses load in ``__init__``."""

    family: str = ""

    def __init__(self, resolved: ResolvedModel, device, dtype):
        self.resolved = resolved
        self.device = device
        self.dtype = dtype

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.resolved.display,
            "family": self.resolved.family,
            "location": self.resolved.location,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }


def quiet_libraries() -> None:
    """The CLI draws its own progress; keep the libraries' loading bars and chatter off stderr.

    ``UNIEDIT_VERBOSE=1`` leaves them as they are (useful when debugging a checkpoint).
    """
    if os.environ.get("UNIEDIT_VERBOSE"):
        return
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging_module in (transformers_logging, diffusers_logging):
        logging_module.set_verbosity_error()
        logging_module.disable_progress_bar()
    # deprecation notices are for the developers of this tool, not its users
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


def load_model(resolved: ResolvedModel, *, device: str = "auto", dtype: str = "auto") -> Adapter:
    """Build (tiny models) and load the adapter for ``resolved``."""
    quiet_libraries()
    ensure_built(resolved)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    cls = resolved.adapter_class()
    with weights_errors(resolved):
        return cls(resolved, torch_device, torch_dtype)
