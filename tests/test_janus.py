"""Janus-Pro adapter on the tiny random-weight ``janus-tiny`` checkpoint (built once, offline)."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from uniedit_cli.errors import UsageError  # noqa: E402
from uniedit_cli.models import load_model  # noqa: E402
from uniedit_cli.registry import resolve  # noqa: E402

PROMPTS = ["a red cube left of a blue ball", "two green cylinders"]


@pytest.fixture(scope="module")
def janus_folder(tiny_model):
    return tiny_model("janus-tiny")


@pytest.fixture(scope="module")
def janus(janus_folder):
    return load_model(resolve(str(janus_folder)), device="cpu")


@pytest.fixture(scope="module")
def source_images():
    from PIL import Image, ImageDraw

    red = Image.new("RGB", (48, 40), (200, 220, 255))
    ImageDraw.Draw(red).rectangle([5, 5, 20, 25], fill=(220, 30, 30))
    blue = Image.new("RGB", (30, 30), (20, 20, 20))
    ImageDraw.Draw(blue).ellipse([4, 4, 26, 26], fill=(30, 30, 220))
    return [red, blue]


def pixels(img):
    return np.asarray(img)


# ------------------------------------------------------------------ the tiny checkpoint

def test_tiny_folder_is_a_small_offline_checkpoint(janus_folder):
    from transformers import JanusForConditionalGeneration, JanusProcessor

    names = {p.name for p in janus_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "generation_config.json",
            "uniedit.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert sum(p.stat().st_size for p in janus_folder.iterdir()) < 8 * 2**20
    assert json.loads((janus_folder / "config.json").read_text())["model_type"] == "janus"
    meta = json.loads((janus_folder / "uniedit.json").read_text())
    assert meta["family"] == "janus" and meta["base_model"] == "janus-tiny"
    assert meta["defaults"]["max_new_tokens"] == 8

    model = JanusForConditionalGeneration.from_pretrained(janus_folder)
    processor = JanusProcessor.from_pretrained(janus_folder)
    tok = processor.tokenizer
    assert tok.convert_tokens_to_ids(tok.image_token) == model.config.image_token_id
    assert processor.num_image_tokens == model.config.vision_config.num_image_tokens == 64
    # REFERENCE.md: a Janus config that can generate images ties these sizes to the text width.
    hidden = model.config.text_config.hidden_size
    assert model.config.vq_config.projection_dim == model.config.vq_config.image_token_embed_dim == hidden
    gen = model.generation_config
    assert gen.pad_token_id == tok.pad_token_id and gen.bos_token_id == tok.bos_token_id
    assert gen.generation_kwargs["boi_token_id"] == tok.convert_tokens_to_ids(tok.boi_token)
    assert gen.guidance_scale == 5.0


def test_build_is_deterministic(janus_folder, tmp_path):
    from safetensors.torch import load_file

    from uniedit_cli.models.janus import build_tiny

    build_tiny(tmp_path / "again", seed=0)
    first = load_file(janus_folder / "model.safetensors")
    second = load_file(tmp_path / "again" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (janus_folder / "tokenizer.json").read_bytes() == (tmp_path / "again" / "tokenizer.json").read_bytes()


# ------------------------------------------------------------------ ask

def test_ask_answers_a_batch(janus, source_images):
    answers = janus.ask(source_images, ["What color is the cube?", "How many spheres are there?"], max_new_tokens=4)
    assert isinstance(answers, list) and len(answers) == 2
    assert all(isinstance(a, str) for a in answers)
    # Greedy: asking again gives the same answers.
    assert janus.ask(source_images, ["What color is the cube?", "How many spheres are there?"], max_new_tokens=4) == answers


# ------------------------------------------------------------------ generate

def test_generate_returns_rgb_images_of_the_model_size(janus):
    images = janus.generate(PROMPTS, seeds=[0, 1])
    assert len(images) == 2
    assert janus.image_size == 32
    for img in images:
        assert img.mode == "RGB" and img.size == (32, 32)
        assert pixels(img).std() > 0  # not a flat color


def test_same_seed_same_image_different_seed_different(janus):
    a = janus.generate([PROMPTS[0]], seeds=[7])[0]
    b = janus.generate([PROMPTS[0]], seeds=[7])[0]
    c = janus.generate([PROMPTS[0]], seeds=[8])[0]
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_a_rows_image_does_not_depend_on_its_batch(janus):
    # The prompts have different lengths, so the batched row is left padded: positions and
    # the per-row generator must make that invisible.
    alone = janus.generate([PROMPTS[1]], seeds=[3])[0]
    batched = janus.generate([PROMPTS[0], PROMPTS[1]], seeds=[11, 3])[1]
    assert np.array_equal(pixels(alone), pixels(batched))


def test_sampler_matches_transformers_generate_when_greedy(janus):
    """Our CFG loop against transformers' image-mode generate() (same prompt, greedy, scale 5)."""
    messages = [{"role": "user", "content": [{"type": "text", "text": PROMPTS[0]}]}]
    text = janus.processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = janus.processor(text=text, generation_mode="image", return_tensors="pt")
    cond = janus.build_condition([PROMPTS[0]])
    uncond = janus.build_condition([PROMPTS[0]], drop_text=[True], drop_image=[True])
    assert torch.equal(cond.input_ids.cpu(), inputs["input_ids"])
    with torch.inference_mode():
        reference = janus.model.generate(**inputs, generation_mode="image", do_sample=False, guidance_scale=5.0)
        ours = janus._sample_image_tokens(cond, uncond, seeds=[0], guidance=5.0, temperature=0.0)
    assert torch.equal(reference.cpu(), ours)


def test_guidance_changes_the_image(janus):
    guided = janus.generate([PROMPTS[0]], seeds=[5], guidance=5.0)[0]
    unguided = janus.generate([PROMPTS[0]], seeds=[5], guidance=1.0)[0]
    assert not np.array_equal(pixels(guided), pixels(unguided))


def test_mismatched_lengths_are_a_usage_error(janus, source_images):
    with pytest.raises(UsageError, match="one entry per row"):
        janus.generate(PROMPTS, seeds=[0])
    with pytest.raises(UsageError, match="one entry per row"):
        janus.edit(source_images, ["make it blue"], seeds=[0])
    assert janus.generate([], seeds=[]) == []


# ------------------------------------------------------------------ edit and its conditioning

def test_edit_returns_images_conditioned_on_the_source(janus, source_images):
    instructions = ["Turn the red cube into a cylinder.", "remove the ball"]
    edited = janus.edit(source_images, instructions, seeds=[0, 1])
    assert [img.size for img in edited] == [(32, 32), (32, 32)] and all(img.mode == "RGB" for img in edited)
    again = janus.edit(source_images, instructions, seeds=[0, 1])
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(edited, again))
    alone = janus.edit([source_images[1]], [instructions[1]], seeds=[1])[0]
    assert np.array_equal(pixels(alone), pixels(edited[1]))
    # Same instruction and seed, another source image: the image really conditions the sample.
    swapped = janus.edit([source_images[1]], [instructions[0]], seeds=[0])[0]
    assert not np.array_equal(pixels(swapped), pixels(edited[0]))


def test_build_condition_drops_text_and_image(janus, source_images):
    texts = ["make the cube red"] * 4
    cond = janus.build_condition(texts, source_images * 2, drop_text=[False, True, False, True],
                                 drop_image=[False, False, True, True])
    ids, mask = cond.input_ids.cpu(), cond.attention_mask.cpu()
    assert cond.inputs_embeds.shape[:2] == ids.shape
    assert (ids[:, -1] == janus.boi_token_id).all() and (mask[:, -1] == 1).all()
    n_img = janus.processor.num_image_tokens
    image_counts = (ids == janus.image_token_id).sum(-1).tolist()
    assert image_counts == [n_img, n_img, 0, 0]
    full, no_text = ids[0][mask[0] == 1], ids[1][mask[1] == 1]
    assert len(full) == len(no_text)  # dropping keeps the length: pads, as in Janus' CFG prompt
    assert (no_text == janus.pad_token_id).sum() > (full == janus.pad_token_id).sum()
    # Both dropped: Janus' unconditional prompt, BOS + pads + <begin_of_image>.
    both = ids[3][mask[3] == 1]
    assert both[0] == janus.bos_token_id and both[-1] == janus.boi_token_id
    assert (both[1:-1] == janus.pad_token_id).all()
    # The source image's features replace the placeholder embeddings.
    placeholder = janus.model.get_input_embeddings()(torch.tensor([janus.image_token_id]))[0]
    row0 = cond.inputs_embeds[0][ids[0] == janus.image_token_id]
    assert not torch.allclose(row0[0], placeholder)


def test_training_loss_is_finite_and_backprops_with_vq_frozen(janus, source_images):
    from PIL import Image

    targets = [Image.new("RGB", (40, 40), (30, 200, 30)), Image.new("RGB", (64, 48), (250, 250, 0))]
    batch = {"input_images": source_images, "edit_prompts": ["make it green", "make it yellow"],
             "edited_images": targets, "drop_text_prob": 0.5, "drop_image_prob": 0.5, "rng": random.Random(0)}
    janus.model.zero_grad(set_to_none=True)
    try:
        janus.model.train()
        loss = janus.training_loss(batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        loss.backward()
    finally:
        janus.model.eval()
    head = janus.model.model.generation_head.vision_head.weight.grad
    assert head is not None and head.abs().sum() > 0
    assert janus.model.model.language_model.layers[0].self_attn.q_proj.weight.grad is not None
    assert all(p.grad is None for p in janus.model.model.vqmodel.parameters())
    janus.model.zero_grad(set_to_none=True)
    # Targets enter the frozen VQ encoder at the generation size, in [-1, 1].
    target = janus.target_pixels(targets)
    assert target.shape == (2, 3, 32, 32) and target.min() >= -1 and target.max() <= 1


# ------------------------------------------------------------------ save and load

def test_save_round_trip(janus, tmp_path):
    out = janus.save(tmp_path / "saved")
    meta = json.loads((out / "uniedit.json").read_text())
    assert meta["family"] == "janus" and meta["base_model"] == "janus-tiny"
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    reloaded = load_model(resolve(str(out)), device="cpu")
    assert reloaded.resolved.family == "janus" and reloaded.resolved.defaults["max_new_tokens"] == 8
    a = janus.generate([PROMPTS[0]], seeds=[2])[0]
    b = reloaded.generate([PROMPTS[0]], seeds=[2])[0]
    assert np.array_equal(pixels(a), pixels(b))


def test_folder_without_uniedit_json_is_recognised_from_config(janus_folder, tmp_path):
    copy = tmp_path / "plain-janus"
    shutil.copytree(janus_folder, copy)
    (copy / "uniedit.json").unlink()
    resolved = resolve(str(copy))
    assert resolved.family == "janus" and resolved.defaults["guidance"] == 5.0
    adapter = load_model(resolved, device="cpu")
    assert adapter.family == "janus"
    assert adapter.generate(["a cube"], seeds=[0])[0].size == (32, 32)


def test_registry_name_builds_on_first_use(uniedit_home):
    adapter = load_model(resolve("janus-tiny"), device="cpu")
    assert (uniedit_home / "tiny" / "janus-tiny" / "uniedit.json").exists()
    assert len(adapter.ask([None], ["hello"], max_new_tokens=2)) == 1


def test_a_few_steps_fit_one_edit_pair(janus_folder, source_images):
    """The objective trains: a fresh copy of the tiny model overfits one pair in a few steps."""
    from PIL import Image

    adapter = load_model(resolve(str(janus_folder)), device="cpu")
    adapter.model.train()
    batch = {"input_images": source_images[:1], "edit_prompts": ["make it green"],
             "edited_images": [Image.new("RGB", (32, 32), (30, 200, 30))]}
    trainable = [p for p in adapter.objective.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in adapter.model.model.vqmodel.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(8):
        loss = adapter.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


# ------------------------------------------------------------------ through the CLI

def _png(path):
    from PIL import Image

    with Image.open(path) as img:
        return img.mode, img.size, np.asarray(img).copy()


def test_cli_generate_writes_images_independent_of_batch_size(cli, janus_folder, tmp_path):
    common = ["generate", "a red cube", "--model", str(janus_folder), "-n", "2", "--seed", "0", "--device", "cpu"]
    result = cli([*common, "--out", tmp_path / "gen", "--batch-size", "2"])
    assert result.exit_code == 0, result
    pngs = sorted((tmp_path / "gen").glob("*.png"))
    assert len(pngs) == 2
    for png in pngs:
        mode, size, _ = _png(png)
        assert (mode, size) == ("RGB", (32, 32))
        meta = json.loads(png.with_suffix(".json").read_text())
        assert meta["family"] == "janus" and meta["parameters"]["guidance"] == 5.0
    assert cli([*common, "--out", tmp_path / "one-by-one", "--batch-size", "1"]).exit_code == 0
    for png in pngs:
        assert np.array_equal(_png(png)[2], _png(tmp_path / "one-by-one" / png.name)[2]), png.name
    assert not np.array_equal(_png(pngs[0])[2], _png(pngs[1])[2])  # seeds 0 and 1


def test_cli_edit_and_ask(cli, janus_folder, sample_image, tmp_path):
    out = tmp_path / "edited.png"
    result = cli(["edit", sample_image, "turn the red block blue", "--model", janus_folder, "--out", out, "--seed", "3"])
    assert result.exit_code == 0, result
    assert _png(out)[:2] == ("RGB", (32, 32))
    assert json.loads(out.with_suffix(".json").read_text())["seed"] == 3
    result = cli(["ask", sample_image, "What color is the block?", "--model", janus_folder, "--max-new-tokens", "3"])
    assert result.exit_code == 0, result
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_cli_two_processes_generate_the_same_images(janus_folder, tmp_path):
    """Through `accelerate launch` with 2 CPU ranks, each prompt's image is the one-process image."""
    import os
    import subprocess
    import sys

    batch = tmp_path / "prompts.jsonl"
    batch.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p, "seed": i}) + "\n"
                             for i, p in enumerate(PROMPTS + ["a cone", "three spheres on a table"])))
    base = [sys.executable, "-m", "uniedit_cli", "generate", "--batch", str(batch), "--model", str(janus_folder),
            "--batch-size", "2", "--device", "cpu"]
    # One intra-op thread in both runs, as in test_batch: reductions split over other thread
    # counts round differently.
    env = {**{k: v for k, v in os.environ.items() if k != "UNIEDIT_LAUNCHED"}, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(base + ["--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(base + ["--out", str(tmp_path / "two"), "--num-processes", "2"], env=env,
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two" / ".parts" / "rank-1.jsonl").exists(), "the second rank did work"
    for i in range(4):
        assert np.array_equal(_png(tmp_path / "one" / f"p{i}.png")[2], _png(tmp_path / "two" / f"p{i}.png")[2]), i
