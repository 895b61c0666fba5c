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


def hub_cached(repo_id: str) -> bool:
    """Whether the hub cache holds a snapshot of ``repo_id`` (no network access)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return any(isinstance(try_to_load_from_cache(repo_id, name), str) for name in ("model_index.json", "config.json"))
    except Exception:  # an invalid repo id, an unreadable cache: not cached
        return False


def hub_reachable() -> bool:
    """False when offline mode is on or the hub's host name does not even resolve (no network):
    then a missing model is reported at once instead of after the hub client's retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def missing_weights_error(resolved: ResolvedModel) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"weights for {resolved.display!r} (hub id {resolved.location}) are not on this machine and could not be downloaded.",
        hint=(f"On a machine with network run `hf download {resolved.location} --local-dir <folder>`, copy the folder "
              f"here and pass --model <folder> (or point HF_HOME at a cache that holds it)."),
    )


def preflight(resolved: ResolvedModel) -> None:
    """Cheap checks before torch is imported or processes are launched: a hub model that is
    neither cached nor downloadable fails now, with the fix, not after seconds of imports."""
    if not resolved.local and not hub_cached(resolved.location) and not hub_reachable():
        raise missing_weights_error(resolved)


@contextlib.contextmanager
def weights_errors(resolved: ResolvedModel):
    """Turn 'weights not here and no network' into one message with the hub id and the fix."""
    try:
        yield
    except UniEditError:
        raise
    except (OSError, ValueError) as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        if resolved.local:
            if isinstance(exc, OSError):
                raise ModelNotFoundError(
                    f"could not load model folder {resolved.location!r}: {first_line}",
                    hint="Check that the folder holds a complete checkpoint (all weight and tokenizer files).",
                ) from None
            raise
        if isinstance(exc, OSError) or not hub_cached(resolved.location):
            raise missing_weights_error(resolved) from None
        raise


def ensure_built(resolved: ResolvedModel) -> None:
    """Build a registry tiny model into its folder on first use (deterministic random weights)."""
    if resolved.spec is None or not resolved.spec.builtin:
        return
    from pathlib import Path

    folder = Path(resolved.location)
    if (folder / "uniedit.json").exists():
        return
    from rich.console import Console

    from uniedit_cli.models.tiny import build_tiny

    Console(stderr=True).print(f"[dim]building {resolved.spec.name} (random weights, no download) in {folder}[/]")
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

    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    for logging_module in (transformers_logging, diffusers_logging):
        logging_module.set_verbosity_error()
        logging_module.disable_progress_bar()
    # deprecation notices are for the developers of this tool, not its users
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


def load_model(resolved: ResolvedModel, *, device: str = "auto", dtype: str = "auto") -> Adapter:
    """Build (tiny models) and load the adapter for ``resolved``."""
    preflight(resolved)
    quiet_libraries()
    ensure_built(resolved)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    cls = resolved.adapter_class()
    with weights_errors(resolved):
        return cls(resolved, torch_device, torch_dtype)
