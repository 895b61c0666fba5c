"""The model registry: one table of the names users type, and the resolution of ``--model``.

Torch-free on purpose: ``uniedit models`` and every ``--help`` read this module without
importing torch, transformers or diffusers. Adapter classes are named by dotted path and
imported only when a command needs a model.

``--model`` accepts a registry name (or alias), a hub id (``--family`` when it cannot be
inferred), or a local folder, recognised from ``uniedit.json`` (written by ``uniedit train``
and by the tiny-model builders), a diffusers ``model_index.json``, or a transformers
``config.json`` ``model_type``.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uniedit_cli.errors import CapabilityError, ModelNotFoundError, UsageError

ASK, GENERATE, EDIT, TRAIN, REWRITE = "ask", "generate", "edit", "train", "rewrite"
CAPABILITIES = (ASK, GENERATE, EDIT, TRAIN, REWRITE)

# family -> "module:Class" of its adapter (imported only when used)
FAMILY_ADAPTERS: dict[str, str] = {
    "janus": "uniedit_cli.models.janus:JanusAdapter",
    "ip2p": "uniedit_cli.models.diffusers_edit:InstructPix2PixAdapter",
    "diffusers-edit": "uniedit_cli.models.diffusers_edit:DiffusersEditAdapter",
    "vlm": "uniedit_cli.models.vlm:VLMAdapter",
    "llm": "uniedit_cli.models.vlm:LLMAdapter",
}

# What a family can do when nothing more specific is known (a hub id or a bare folder).
FAMILY_CAPABILITIES: dict[str, tuple[str, ...]] = {
    "janus": (ASK, GENERATE, EDIT, TRAIN),
    "ip2p": (EDIT, TRAIN),
    "diffusers-edit": (EDIT,),
    "vlm": (ASK,),
    "llm": (REWRITE,),
}

# Published inference defaults per family (REFERENCE.md, "diffusers editing pipelines" and
# "Janus-Pro in transformers"); a spec, a folder's uniedit.json and CLI flags override them.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "janus": {"guidance": 5.0, "temperature": 1.0, "max_new_tokens": 128},
    "ip2p": {"steps": 100, "guidance": 7.5, "image_guidance": 1.5, "size": 512},
    "diffusers-edit": {"steps": 28, "guidance": 3.5},
    "vlm": {"max_new_tokens": 128},
    "llm": {"max_new_tokens": 256},
}

# diffusers-edit holds pipelines with different published defaults (REFERENCE.md): a folder or
# hub id outside the table gets its pipeline's own, not the family's first member's.
PIPELINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "FluxKontextPipeline": {"steps": 28, "guidance": 3.5},
    "QwenImageEditPipeline": {"steps": 50, "guidance": 4.0},
    "QwenImageEditPlusPipeline": {"steps": 50, "guidance": 4.0},
}

# The generation knobs each family's adapter honours; a flag outside this set is reported as
# having no effect rather than silently ignored (and is not recorded in sidecars).
FAMILY_KNOBS: dict[str, frozenset[str]] = {
    "janus": frozenset({"guidance", "temperature", "max_new_tokens"}),
    "ip2p": frozenset({"steps", "guidance", "image_guidance", "size"}),
    "diffusers-edit": frozenset({"steps", "guidance", "size"}),
    "vlm": frozenset({"max_new_tokens"}),
    "llm": frozenset({"max_new_tokens", "temperature"}),
}

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    source: str  # a hub id, or "builtin:<name>" for tiny models built locally from config
    capabilities: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def builtin(self) -> bool:
        return self.source.startswith(BUILTIN_PREFIX)


_TINY = "tiny random-weight model built locally from config (no download): for tests and offline runs"

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("janus-pro-1b", "janus", "deepseek-community/Janus-Pro-1B", (ASK, GENERATE, EDIT, TRAIN),
              aliases=("janus-pro",),
              description="Janus-Pro 1B; edit is meaningful once tuned with `uniedit train`"),
    ModelSpec("janus-pro-7b", "janus", "deepseek-community/Janus-Pro-7B", (ASK, GENERATE, EDIT, TRAIN),
              description="Janus-Pro 7B; edit is meaningful once tuned with `uniedit train`"),
    ModelSpec("janus-tiny", "janus", BUILTIN_PREFIX + "janus-tiny", (ASK, GENERATE, EDIT, TRAIN),
              {"max_new_tokens": 8}, description=_TINY),
    ModelSpec("instruct-pix2pix", "ip2p", "timbrooks/instruct-pix2pix", (EDIT, TRAIN),
              description="InstructPix2Pix (Brooks et al. 2023)"),
    ModelSpec("ip2p-tiny", "ip2p", BUILTIN_PREFIX + "ip2p-tiny", (EDIT, TRAIN),
              {"steps": 4, "size": 32}, description=_TINY),
    ModelSpec("flux-kontext", "diffusers-edit", "black-forest-labs/FLUX.1-Kontext-dev", (EDIT,),
              {"steps": 28, "guidance": 3.5}, description="FLUX.1 Kontext [dev]"),
    ModelSpec("flux-kontext-tiny", "diffusers-edit", BUILTIN_PREFIX + "flux-kontext-tiny", (EDIT,),
              {"steps": 2, "size": 32}, description=_TINY),
    ModelSpec("qwen-image-edit", "diffusers-edit", "Qwen/Qwen-Image-Edit", (EDIT,),
              {"steps": 50, "guidance": 4.0}, description="Qwen-Image-Edit (true CFG 4.0)"),
    ModelSpec("qwen-image-edit-tiny", "diffusers-edit", BUILTIN_PREFIX + "qwen-image-edit-tiny", (EDIT,),
              {"steps": 2, "size": 32}, description=_TINY),
    ModelSpec("qwen2.5-vl-7b", "vlm", "Qwen/Qwen2.5-VL-7B-Instruct", (ASK,),
              description="Qwen2.5-VL 7B Instruct: ask, and the judge of `synth` / `eval`"),
    ModelSpec("qwen2.5-vl-tiny", "vlm", BUILTIN_PREFIX + "qwen2.5-vl-tiny", (ASK,),
              {"max_new_tokens": 8}, description=_TINY),
    ModelSpec("qwen2.5-7b-instruct", "llm", "Qwen/Qwen2.5-7B-Instruct", (REWRITE,),
              description="Qwen2.5 7B Instruct: the instruction rewriter of `synth`"),
    ModelSpec("qwen2.5-tiny", "llm", BUILTIN_PREFIX + "qwen2.5-tiny", (REWRITE,),
              {"max_new_tokens": 16}, description=_TINY),
)

_BY_NAME: dict[str, ModelSpec] = {}
for _spec in MODELS:
    for _key in (_spec.name, *_spec.aliases):
        _BY_NAME[_key.lower()] = _spec
_BY_SOURCE: dict[str, ModelSpec] = {s.source.lower(): s for s in MODELS if not s.builtin}


def all_names() -> list[str]:
    return sorted(_BY_NAME)


def get_spec(name: str) -> ModelSpec | None:
    return _BY_NAME.get(name.lower())


@dataclass
class ResolvedModel:
    """What ``--model`` points at, ready for an adapter to load."""

    name: str  # what the user typed
    family: str
    location: str  # a local folder path or a hub id
    local: bool
    capabilities: tuple[str, ...]
    defaults: dict[str, Any]
    spec: ModelSpec | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # uniedit.json when present

    @property
    def display(self) -> str:
        return self.spec.name if self.spec else self.name

    def options(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The generation knobs this family honours: the model's defaults, then ``overrides``."""
        knobs = FAMILY_KNOBS[self.family]
        return {key: value for key, value in {**self.defaults, **(overrides or {})}.items() if key in knobs}

    def require(self, capability: str) -> None:
        if capability in self.capabilities:
            return
        able = [s.name for s in MODELS if capability in s.capabilities and not s.builtin]
        tiny = [s.name for s in MODELS if capability in s.capabilities and s.builtin]
        can = ", ".join(self.capabilities) or "nothing"
        hint = None
        if able or tiny:
            hint = f"Models that can {capability}: {', '.join(able) or 'none to download'}"
            if tiny:
                hint += f" (offline, random weights: {', '.join(tiny)})"
            hint += "."
        raise CapabilityError(f"model {self.display!r} ({self.family}) cannot {capability}; it can: {can}.", hint=hint)

    def adapter_class(self):
        import importlib

        module_name, _, class_name = FAMILY_ADAPTERS[self.family].partition(":")
        return getattr(importlib.import_module(module_name), class_name)


# --- local folders --------------------------------------------------------------------------

DIFFUSERS_PIPELINE_FAMILIES = {
    "StableDiffusionInstructPix2PixPipeline": "ip2p",
    "StableDiffusionXLInstructPix2PixPipeline": "ip2p",
    "FluxKontextPipeline": "diffusers-edit",
    "QwenImageEditPipeline": "diffusers-edit",
    "QwenImageEditPlusPipeline": "diffusers-edit",
}
CONFIG_MODEL_TYPE_FAMILIES = {
    "janus": "janus",
    "qwen2_5_vl": "vlm",
    "qwen2_vl": "vlm",
    "qwen3_vl": "vlm",
    "llava": "vlm",
    "llava_onevision": "vlm",
    "idefics3": "vlm",
    "gemma3": "vlm",
    "qwen2": "llm",
    "qwen3": "llm",
    "llama": "llm",
    "mistral": "llm",
    "gemma2": "llm",
}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{str(path)!r} is not valid JSON ({exc}).", hint="Repair or remove the file.") from None
    if not isinstance(data, dict):
        raise UsageError(f"{str(path)!r} does not hold a JSON object.")
    return data


def inspect_folder(folder: Path, family: str | None = None) -> tuple[str, dict]:
    """Return ``(family, uniedit.json metadata)`` for a local model folder."""
    meta: dict = {}
    if (folder / "uniedit.json").exists():
        meta = _read_json(folder / "uniedit.json")
        fam = family or meta.get("family")
        if fam:
            return _check_family(fam, str(folder)), meta
    if family:
        return _check_family(family, str(folder)), meta
    if (folder / "model_index.json").exists():
        cls = _read_json(folder / "model_index.json").get("_class_name", "")
        if cls in DIFFUSERS_PIPELINE_FAMILIES:
            return DIFFUSERS_PIPELINE_FAMILIES[cls], meta
        raise UsageError(
            f"model folder {str(folder)!r} holds a diffusers pipeline {cls!r} that uniedit has no adapter for.",
            hint=f"Supported pipelines: {', '.join(sorted(DIFFUSERS_PIPELINE_FAMILIES))}.",
        )
    if (folder / "config.json").exists():
        model_type = _read_json(folder / "config.json").get("model_type", "")
        if model_type in CONFIG_MODEL_TYPE_FAMILIES:
            return CONFIG_MODEL_TYPE_FAMILIES[model_type], meta
        raise UsageError(
            f"model folder {str(folder)!r} has config.json model_type {model_type!r}, which uniedit cannot map to a family.",
            hint=f"Pass --family ({', '.join(FAMILY_ADAPTERS)}).",
        )
    raise UsageError(
        f"{str(folder)!r} is a folder but not a model: it has no uniedit.json, model_index.json or config.json.",
        hint="Point --model at the folder that holds the checkpoint files.",
    )


def _check_family(family: str, what: str) -> str:
    if family not in FAMILY_ADAPTERS:
        close = difflib.get_close_matches(family, list(FAMILY_ADAPTERS), n=3)
        raise UsageError(
            f"unknown family {family!r} for {what!r}.",
            hint=f"Known families: {', '.join(FAMILY_ADAPTERS)}." + (f" Did you mean {', '.join(close)}?" if close else ""),
        )
    return family


def _infer_family_from_hub_id(hub_id: str) -> str | None:
    low = hub_id.lower()
    if "janus" in low:
        return "janus"
    if "pix2pix" in low:
        return "ip2p"
    if "kontext" in low or "image-edit" in low:
        return "diffusers-edit"
    if "-vl" in low or "vl-" in low:
        return "vlm"
    return None


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text and text.count(os.sep) > 1 or text.endswith("/")


def tiny_home() -> Path:
    """Where builtin tiny models are built on first use."""
    root = os.environ.get("UNIEDIT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "uniedit")
    return Path(root) / "tiny"


def resolve(model: str, family: str | None = None) -> ResolvedModel:
    """Resolve ``--model`` to a family and a location, or raise a clear usage error."""
    if not model or not model.strip():
        raise UsageError("--model is empty.", hint="Pass a registry name (see `uniedit models`), a hub id or a folder.")
    model = model.strip()
    expanded = Path(os.path.expanduser(model))
    if expanded.is_dir():
        fam, meta = inspect_folder(expanded, family)
        spec = get_spec(meta["base_model"]) if meta.get("base_model") and get_spec(str(meta["base_model"])) else None
        pipeline = _read_json(expanded / "model_index.json").get("_class_name", "") if (expanded / "model_index.json").exists() else ""
        defaults = {**FAMILY_DEFAULTS[fam], **PIPELINE_DEFAULTS.get(pipeline, {}), **(spec.defaults if spec else {}),
                    **meta.get("defaults", {})}
        caps = tuple(meta.get("capabilities") or FAMILY_CAPABILITIES[fam])
        return ResolvedModel(model, fam, str(expanded), True, caps, defaults, spec, meta)
    spec = get_spec(model)
    if spec is not None:
        fam = _check_family(family, model) if family else spec.family
        defaults = {**FAMILY_DEFAULTS[fam], **spec.defaults}
        if spec.builtin:
            location = str(tiny_home() / spec.name)
            return ResolvedModel(model, fam, location, True, spec.capabilities, defaults, spec)
        return ResolvedModel(model, fam, spec.source, False, spec.capabilities, defaults, spec)
    if _looks_like_path(model) or expanded.exists():
        what = "is a file, not a model folder" if expanded.exists() else "no such folder"
        raise ModelNotFoundError(f"--model {model!r}: {what}.", hint="Pass a registry name, a hub id, or a folder holding a checkpoint.")
    if model.count("/") == 1 and all(model.split("/")):
        known = _BY_SOURCE.get(model.lower())
        fam = family or (known.family if known else _infer_family_from_hub_id(model))
        if fam is None:
            raise UsageError(
                f"cannot tell which family hub model {model!r} belongs to.",
                hint=f"Pass --family ({', '.join(FAMILY_ADAPTERS)}).",
            )
        fam = _check_family(fam, model)
        pipeline = "QwenImageEditPipeline" if "qwen-image-edit" in model.lower() else ""
        defaults = {**FAMILY_DEFAULTS[fam], **PIPELINE_DEFAULTS.get(pipeline, {}), **(known.defaults if known else {})}
        caps = known.capabilities if known else FAMILY_CAPABILITIES[fam]
        return ResolvedModel(model, fam, model, False, caps, defaults, known)
    close = difflib.get_close_matches(model.lower(), all_names(), n=3, cutoff=0.5)
    raise ModelNotFoundError(
        f"unknown model {model!r}." + (f" Closest names: {', '.join(close)}." if close else ""),
        hint="`uniedit models` lists the registry; a hub id (org/name) or a local folder also works.",
    )


def weights_status(spec: ModelSpec) -> str:
    """'local', 'cached', 'builds locally' (tiny models, built on first use) or 'not downloaded'."""
    if spec.builtin:
        return "local" if (tiny_home() / spec.name / "uniedit.json").exists() else "builds locally"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return "unknown"
    for filename in ("model_index.json", "config.json"):
        found = try_to_load_from_cache(spec.source, filename)
        if isinstance(found, str):
            return "cached"
    return "not downloaded"
