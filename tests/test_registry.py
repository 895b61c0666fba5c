"""The registry resolves names, aliases, hub ids and folders; unknown input is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from uniedit_cli import registry
from uniedit_cli.errors import CapabilityError, ModelNotFoundError, UsageError


def test_names_and_aliases():
    assert registry.resolve("janus-pro").spec.name == "janus-pro-1b"
    resolved = registry.resolve("instruct-pix2pix")
    assert (resolved.family, resolved.location, resolved.local) == ("ip2p", "timbrooks/instruct-pix2pix", False)
    assert resolved.defaults["steps"] == 100 and resolved.defaults["image_guidance"] == 1.5
    assert registry.resolve("qwen-image-edit").defaults["guidance"] == 4.0


def test_every_spec_has_an_adapter_and_known_capabilities():
    for spec in registry.MODELS:
        assert spec.family in registry.FAMILY_ADAPTERS
        assert set(spec.capabilities) <= set(registry.CAPABILITIES)


def test_unknown_name_lists_close_names():
    with pytest.raises(ModelNotFoundError) as info:
        registry.resolve("janus-pr0-1b")
    assert "janus-pro-1b" in str(info.value)
    assert info.value.exit_code == 2


def test_hub_ids_infer_family_or_ask_for_it():
    assert registry.resolve("deepseek-community/Janus-Pro-7B").family == "janus"
    assert registry.resolve("someone/my-instruct-pix2pix-ft").family == "ip2p"
    assert registry.resolve("someone/model", family="vlm").family == "vlm"
    with pytest.raises(UsageError, match="--family"):
        registry.resolve("someone/model")
    with pytest.raises(UsageError, match="unknown family"):
        registry.resolve("someone/model", family="unet")


def test_missing_capability_names_models_that_can():
    with pytest.raises(CapabilityError) as info:
        registry.resolve("instruct-pix2pix").require("ask")
    assert "qwen2.5-vl-7b" in str(info.value)


def test_missing_capability_also_names_the_offline_tiny_models():
    with pytest.raises(CapabilityError) as info:
        registry.resolve("qwen2.5-vl-7b").require("edit")
    assert info.value.hint == (
        "Models that can edit: janus-pro-1b, janus-pro-7b, instruct-pix2pix, flux-kontext, qwen-image-edit "
        "(offline, random weights: janus-tiny, ip2p-tiny, flux-kontext-tiny, qwen-image-edit-tiny)."
    )
    with pytest.raises(CapabilityError) as info:
        registry.resolve("janus-tiny").require("rewrite")
    assert info.value.hint == "Models that can rewrite: qwen2.5-7b-instruct (offline, random weights: qwen2.5-tiny)."


def test_local_folders_are_recognised(tmp_path):
    diffusers = tmp_path / "pipe"
    diffusers.mkdir()
    (diffusers / "model_index.json").write_text(json.dumps({"_class_name": "FluxKontextPipeline"}))
    assert registry.resolve(str(diffusers)).family == "diffusers-edit"
    assert registry.resolve(str(diffusers)).defaults["guidance"] == 3.5
    (diffusers / "model_index.json").write_text(json.dumps({"_class_name": "QwenImageEditPipeline"}))
    assert registry.resolve(str(diffusers)).defaults == {"steps": 50, "guidance": 4.0}
    assert registry.resolve("Qwen/Qwen-Image-Edit-2509").defaults == {"steps": 50, "guidance": 4.0}
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert registry.resolve(str(hf)).family == "vlm"
    trained = tmp_path / "run" / "final"
    trained.mkdir(parents=True)
    (trained / "config.json").write_text(json.dumps({"model_type": "janus"}))
    (trained / "uniedit.json").write_text(json.dumps({"family": "janus", "base_model": "janus-pro-1b",
                                                       "defaults": {"guidance": 4.0}}))
    resolved = registry.resolve(str(trained))
    assert resolved.local and resolved.family == "janus" and resolved.defaults["guidance"] == 4.0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="not a model"):
        registry.resolve(str(empty))
    (hf / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UsageError, match="--family"):
        registry.resolve(str(hf))
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        registry.resolve(str(tmp_path / "nope" / "model"))


def test_registry_is_torch_free():
    code = ("import sys, uniedit_cli.registry, uniedit_cli.cli; "
            "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'accelerate') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
