"""The diffusers editing adapters (``ip2p``, ``diffusers-edit``) on their tiny models.

Each tiny checkpoint (InstructPix2Pix, FLUX.1 Kontext, Qwen-Image-Edit: random weights,
tokenizers trained locally) is built once per session and loaded exactly as a downloaded one:
``registry.resolve(folder)`` + ``load_model``. Results that several tests check are computed
once per module, so the whole file stays fast on a 2-core CPU.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw

from uniedit_cli import registry
from uniedit_cli.errors import UsageError

# name -> what the folder must load as, and the expected output sizes for the two sources below
# at the test size (worked out by hand from the size rule: long side = size, both sides snapped
# to the pipeline's multiple: 8 for ip2p, vae_scale_factor * 2 = 4 for tiny Kontext, 32 for
# tiny Qwen-Image-Edit).
MODELS = {
    "ip2p-tiny": {
        "family": "ip2p", "adapter": "InstructPix2PixAdapter", "pipeline": "StableDiffusionInstructPix2PixPipeline",
        "size": 32, "square": (32, 32), "wide": (32, 16), "cli_size": (32, 24),
        "knobs": [{"guidance": 2.0}, {"steps": 1}, {"image_guidance": 3.0}],
    },
    "flux-kontext-tiny": {
        "family": "diffusers-edit", "adapter": "DiffusersEditAdapter", "pipeline": "FluxKontextPipeline",
        "size": 32, "square": (32, 32), "wide": (32, 16), "cli_size": (32, 28),
        "knobs": [{"guidance": 9.0}, {"steps": 1}],
    },
    "qwen-image-edit-tiny": {
        "family": "diffusers-edit", "adapter": "DiffusersEditAdapter", "pipeline": "QwenImageEditPipeline",
        "size": 64, "square": (64, 64), "wide": (64, 32), "cli_size": (32, 32),
        # true_cfg_scale 4.0 (default) vs 8.0, and 1.0, which turns true CFG off
        "knobs": [{"guidance": 8.0}, {"guidance": 1.0}, {"steps": 3}],
    },
}
NAMES = list(MODELS)
STEPS = 2
INSTRUCTIONS = ["make the cube red", "remove the blue ball", "make the cube red"]
SEEDS = [11, 12, 13]


def _scene(width: int, height: int) -> Image.Image:
    img = Image.new("RGB", (width, height), (200, 220, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle([width // 8, height // 8, width // 2, height // 2], fill=(220, 30, 30))
    draw.ellipse([width // 2, height // 3, width - 2, height - 2], fill=(30, 30, 220))
    return img


SQUARE = _scene(40, 40)
WIDE = _scene(64, 32)
SOURCES = [SQUARE, SQUARE, WIDE]  # rows 0 and 1 share one pipeline call (same output size)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine OpenMP workers
    spinning against other processes made this module ~2.5x slower (68 s vs 25 s measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loaded(tiny_model):
    """``loaded(name)`` -> (folder, adapter), each loaded once for the module."""
    from uniedit_cli.models import load_model

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            folder = tiny_model(name)
            cache[name] = folder, load_model(registry.resolve(str(folder)), device="cpu")
        return cache[name]

    return get


@pytest.fixture(scope="module")
def batch_out(loaded):
    """``batch_out(name)`` -> the edits of SOURCES as one batch (computed once)."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            _, adapter = loaded(name)
            cache[name] = adapter.edit(SOURCES, INSTRUCTIONS, seeds=SEEDS, steps=STEPS, size=MODELS[name]["size"])
        return cache[name]

    return get


@pytest.fixture(scope="module")
def alone_out(loaded):
    """``alone_out(name)`` -> row 1 of the batch, edited on its own with the same seed."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            _, adapter = loaded(name)
            cache[name] = adapter.edit([SOURCES[1]], [INSTRUCTIONS[1]], seeds=[SEEDS[1]], steps=STEPS,
                                       size=MODELS[name]["size"])[0]
        return cache[name]

    return get


# --- the size rule (no model) ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("source", "size", "multiple", "expected"),
    [
        ((512, 512), 512, 8, (512, 512)),
        ((1024, 768), 512, 8, (512, 384)),
        ((768, 1024), 512, 8, (384, 512)),
        ((48, 40), 32, 8, (32, 24)),  # 26.7 rounds to 24
        ((1000, 10), 512, 8, (512, 8)),  # never below one multiple
        ((1920, 1080), 1024, 16, (1024, 576)),
        ((100, 100), 500, 16, (496, 496)),  # the long side rounds down to a multiple
    ],
)
def test_output_size_rule(source, size, multiple, expected):
    from uniedit_cli.models.diffusers_edit import output_size

    assert output_size(*source, size, multiple) == expected


def test_output_size_too_small_is_a_usage_error():
    from uniedit_cli.models.diffusers_edit import output_size

    with pytest.raises(UsageError, match="too small"):
        output_size(64, 64, 8, 16)


# --- loading --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_tiny_folder_loads_through_registry(name, loaded):
    folder, adapter = loaded(name)
    spec = MODELS[name]
    resolved = registry.resolve(str(folder))
    assert resolved.family == spec["family"] and resolved.local
    assert registry.EDIT in resolved.capabilities
    assert type(adapter).__name__ == spec["adapter"]
    assert type(adapter.pipe).__name__ == spec["pipeline"]
    assert adapter.describe()["pipeline"] == spec["pipeline"]
    assert json.loads((folder / "uniedit.json").read_text())["family"] == spec["family"]


@pytest.mark.parametrize("name", NAMES)
def test_folder_recognised_from_model_index_alone(name, tiny_model, tmp_path):
    from uniedit_cli.models import load_model

    copy = tmp_path / name
    shutil.copytree(tiny_model(name), copy)
    (copy / "uniedit.json").unlink()
    resolved = registry.resolve(str(copy))
    assert resolved.family == MODELS[name]["family"]
    assert resolved.metadata == {}
    adapter = load_model(resolved, device="cpu")
    assert type(adapter.pipe).__name__ == MODELS[name]["pipeline"]


# --- editing --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_batch_edit_returns_rgb_images_of_the_rule_size(name, batch_out):
    out = batch_out(name)
    spec = MODELS[name]
    assert [img.size for img in out] == [spec["square"], spec["square"], spec["wide"]]
    assert all(img.mode == "RGB" for img in out)
    # rows are different edits, not one image repeated
    assert not np.array_equal(_pixels(out[0]), _pixels(out[1]))


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_pixels(name, loaded, alone_out):
    _, adapter = loaded(name)
    again = adapter.edit([SOURCES[1]], [INSTRUCTIONS[1]], seeds=[SEEDS[1]], steps=STEPS, size=MODELS[name]["size"])[0]
    assert np.array_equal(_pixels(again), _pixels(alone_out(name)))


@pytest.mark.parametrize("name", NAMES)
def test_a_row_alone_equals_the_row_in_its_batch(name, batch_out, alone_out):
    # Each row draws its noise from its own generator, so its result does not depend on its
    # batch. Bit-exactness is not promised: batched float32 kernels may sum in another order
    # (seen: a few values off by one level in 1e3 for the tiny UNet), so allow 2 of 255.
    diff = np.abs(_pixels(alone_out(name)) - _pixels(batch_out(name)[1]))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())


@pytest.mark.parametrize("name", NAMES)
def test_seed_and_knobs_reach_the_pipeline(name, loaded, alone_out):
    _, adapter = loaded(name)
    base = _pixels(alone_out(name))
    row = dict(steps=STEPS, size=MODELS[name]["size"])
    other_seed = adapter.edit([SOURCES[1]], [INSTRUCTIONS[1]], seeds=[SEEDS[1] + 100], **row)[0]
    assert not np.array_equal(_pixels(other_seed), base), "the seed did not change the output"
    for knob in MODELS[name]["knobs"]:
        changed = adapter.edit([SOURCES[1]], [INSTRUCTIONS[1]], seeds=[SEEDS[1]], **{**row, **knob})[0]
        assert not np.array_equal(_pixels(changed), base), f"{knob} did not change the output"


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_batch_is_a_usage_error(name, loaded):
    _, adapter = loaded(name)
    with pytest.raises(UsageError, match="match one to one"):
        adapter.edit([SQUARE, SQUARE], ["make it red"], seeds=[1, 2], steps=1, size=MODELS[name]["size"])
    with pytest.raises(UsageError, match="empty"):
        adapter.edit([SQUARE], ["  "], seeds=[1], steps=1, size=MODELS[name]["size"])


def test_image_guidance_is_refused_by_kontext(loaded):
    _, adapter = loaded("flux-kontext-tiny")
    with pytest.raises(UsageError, match="image-guidance"):
        adapter.edit([SQUARE], ["make it red"], seeds=[1], steps=1, size=32, image_guidance=1.5)


def test_qwen_refuses_one_step(loaded):
    # one step would give NaN pixels (the scheduler's terminal stretch divides by zero)
    _, adapter = loaded("qwen-image-edit-tiny")
    with pytest.raises(UsageError, match="at least 2 steps"):
        adapter.edit([SQUARE], ["make it red"], seeds=[1], steps=1, size=64)


def test_qwen_image_edit_plus_runs_rows_one_by_one(tiny_model, tmp_path):
    # Qwen-Image-Edit-2509+ ship QwenImageEditPlusPipeline, which takes one prompt per call:
    # the same tiny components under that class name exercise the adapter's per-row path.
    from uniedit_cli.models import load_model

    copy = tmp_path / "plus"
    shutil.copytree(tiny_model("qwen-image-edit-tiny"), copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["_class_name"] = "QwenImageEditPlusPipeline"
    (copy / "model_index.json").write_text(json.dumps(index))
    adapter = load_model(registry.resolve(str(copy)), device="cpu")
    assert type(adapter.pipe).__name__ == "QwenImageEditPlusPipeline"
    out = adapter.edit([WIDE, SQUARE], ["make the cube red", "remove the blue ball"], seeds=[1, 2], steps=2, size=64)
    assert [(img.mode, img.size) for img in out] == [("RGB", (64, 32)), ("RGB", (64, 64))]
    alone = adapter.edit([SQUARE], ["remove the blue ball"], seeds=[2], steps=2, size=64)[0]
    assert np.array_equal(_pixels(alone), _pixels(out[1]))


def test_sdxl_instruct_pix2pix_folder_runs_through_the_ip2p_adapter(tmp_path):
    # The registry maps StableDiffusionXLInstructPix2PixPipeline folders to ip2p; that pipeline
    # denoises at height/width (default 1024), so the adapter must pass the rule's size.
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInstructPix2PixPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from uniedit_cli.models import load_model
    from uniedit_cli.models.diffusers_edit import build_clip_tokenizer

    tok = build_clip_tokenizer(None)
    config = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, projection_dim=32,
                            num_hidden_layers=2, num_attention_heads=4, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    pipe = StableDiffusionXLInstructPix2PixPipeline(
        vae=AutoencoderKL(block_out_channels=(32, 64), latent_channels=4, sample_size=32,
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
        text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tok, tokenizer_2=tok,
        # SDXL conditioning: two text encoders (32 + 32 = 64 wide) and 6 size/crop ids x 8 + pooled 32 = 80
        unet=UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=8, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
            cross_attention_dim=64),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    )
    pipe.save_pretrained(str(tmp_path / "sdxl"), safe_serialization=True)
    resolved = registry.resolve(str(tmp_path / "sdxl"))
    assert resolved.family == "ip2p"
    adapter = load_model(resolved, device="cpu")
    assert type(adapter.pipe).__name__ == "StableDiffusionXLInstructPix2PixPipeline"
    out = adapter.edit([WIDE, SQUARE], ["make the cube red", "remove the blue ball"], seeds=[1, 2], steps=2, size=32)
    assert [(img.mode, img.size) for img in out] == [("RGB", (32, 16)), ("RGB", (32, 32))]


def test_non_rgb_sources_are_converted(loaded):
    _, adapter = loaded("ip2p-tiny")
    rgba = SQUARE.convert("RGBA")
    gray = SQUARE.convert("L")
    out = adapter.edit([rgba, gray], ["make it red"] * 2, seeds=[1, 2], steps=1, size=32)
    assert [(img.mode, img.size) for img in out] == [("RGB", (32, 32))] * 2


def test_ip2p_save_round_trips(loaded, tmp_path):
    # the training issue saves tuned weights with save(); the folder must load and edit the same
    from uniedit_cli.models import load_model

    _, adapter = loaded("ip2p-tiny")
    adapter.save(tmp_path / "saved")
    assert not list((tmp_path / "saved").rglob("*.bin")), "weights must be safetensors only"
    again = load_model(registry.resolve(str(tmp_path / "saved")), device="cpu")
    kwargs = dict(seeds=[3], steps=1, size=32)
    assert np.array_equal(_pixels(again.edit([SQUARE], ["make it red"], **kwargs)[0]),
                          _pixels(adapter.edit([SQUARE], ["make it red"], **kwargs)[0]))


def test_tiny_builder_is_deterministic(tmp_path):
    from uniedit_cli.models.diffusers_edit import build_tiny_flux_kontext

    build_tiny_flux_kontext(tmp_path / "a", seed=0)
    build_tiny_flux_kontext(tmp_path / "b", seed=0)
    weights = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    assert weights
    for rel in weights:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


# --- the CLI --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_cli_edit_writes_png_and_sidecar(name, cli, tiny_model, sample_image, tmp_path):
    folder = tiny_model(name)
    out = tmp_path / "o.png"
    result = cli(["edit", str(sample_image), "make it red", "--model", str(folder), "--out", str(out),
                  "--seed", "1", "--steps", "2", "--size", "32"])
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.size == MODELS[name]["cli_size"]
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["seed"] == 1
    assert sidecar["family"] == MODELS[name]["family"]
    assert sidecar["pipeline"] == MODELS[name]["pipeline"]
    assert sidecar["parameters"]["steps"] == 2 and sidecar["parameters"]["size"] == 32
    assert sidecar["instruction"] == "make it red"
    assert sidecar["size"] == list(MODELS[name]["cli_size"])
