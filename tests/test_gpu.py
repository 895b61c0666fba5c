"""bf16 on CUDA for every tiny family (skipped without a GPU; CI has none).

What only a GPU shows: the bf16 paths, SDPA attention, and that outputs come back as normal
8-bit RGB images / strings after the dtype round trip.
"""

from __future__ import annotations

import pytest
from PIL import Image

from uniedit_cli import registry
from uniedit_cli.models import load_model

pytestmark = pytest.mark.gpu


@pytest.fixture
def scene():
    return Image.new("RGB", (64, 48), (40, 90, 200))


@pytest.mark.parametrize("name", ["ip2p-tiny", "flux-kontext-tiny", "qwen-image-edit-tiny", "janus-tiny"])
def test_edit_in_bf16_on_cuda(tiny_model, scene, name):
    resolved = registry.resolve(str(tiny_model(name)))
    adapter = load_model(resolved, device="cuda", dtype="bf16")
    out = adapter.edit([scene, scene], ["make it red", "make it green"], seeds=[0, 1], **resolved.defaults)
    assert len(out) == 2 and all(img.mode == "RGB" for img in out)


def test_generate_and_ask_in_bf16_on_cuda(tiny_model, scene):
    janus = registry.resolve(str(tiny_model("janus-tiny")))
    adapter = load_model(janus, device="cuda", dtype="bf16")
    assert all(img.mode == "RGB" for img in adapter.generate(["a red cube"], seeds=[0], **janus.defaults))
    assert isinstance(adapter.ask([scene], ["what is this?"], max_new_tokens=4)[0], str)
    vlm = registry.resolve(str(tiny_model("qwen2.5-vl-tiny")))
    answers = load_model(vlm, device="cuda", dtype="bf16").ask([scene, scene], ["what?", "color?"], max_new_tokens=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
