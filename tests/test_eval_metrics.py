"""Eval metrics against independent computations.

Text metrics: hand-worked cases from the official rules (VQA evaluation script vqaEval.py,
MME eval_tool calculation.py). Image metrics: numpy L1/L2 (and torch's float32 losses, as
MagicBrush's image_eval.py computes them); CLIP and DINO built with their real architectures
and random weights, checked against straightforward one-image computations (open_clip's own
preprocess + encode_image / encode_text; a hand-written ViT forward from DINO's state dict).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from uniedit_cli.errors import UsageError
from uniedit_cli.eval.metrics import (
    MME_COGNITION,
    MME_PERCEPTION,
    gqa_exact_match,
    gqa_normalize,
    mme_parse_answer,
    mme_scores,
    vqa_accuracy,
    vqa_normalize_answer,
    vqa_process_digit_article,
    vqa_process_punctuation,
)

# --- VQAv2 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("yes.", "yes"),  # a period not followed by a digit goes
    ("3.5", "3.5"),  # a decimal point stays
    ("hello, world", "hello world"),  # punctuation next to a space is deleted
    ("black/white", "black white"),  # ... otherwise replaced by a space
    ("1,000", "1000"),  # a digit,digit group: every listed mark is deleted
    ("t-shirt", "t shirt"),
    ("don't", "don't"),  # the apostrophe is not in the script's list
    ("what?!", "what  "),  # '?' then '!' each become a space (no space next to them)
])
def test_vqa_punctuation(text, expected):
    assert vqa_process_punctuation(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Two dogs", "2 dogs"),
    ("the cat", "cat"),
    ("A Dog", "dog"),
    ("an apple and the pear", "apple and pear"),
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),  # only zero..ten (and none) are mapped
    ("dont", "don't"),
    ("isnt it", "isn't it"),
    ("Im", "im"),  # the script's "Im" key can never match after lowercasing
])
def test_vqa_digit_article(text, expected):
    assert vqa_process_digit_article(text) == expected


def test_vqa_normalize_answer():
    assert vqa_normalize_answer("  The Two\tcats.\n") == "2 cats"
    assert vqa_normalize_answer("Yes.") == "yes"


def test_vqa_accuracy_hand_worked():
    # all ten humans said "yes": every human has 9 matches among the others -> 1
    assert vqa_accuracy("Yes.", ["yes"] * 10) == 1.0
    # 3 x "2", 7 x "3", prediction "two" -> "2":
    # a "2" human sees 2 matches (2/3), a "3" human sees 3 (1): (3*2/3 + 7*1) / 10 = 0.9
    assert vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    # one human agrees: that human sees 0 others, the 9 others see 1 (1/3): 9/3/10 = 0.3
    assert vqa_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)
    # two agree: 2 * 1/3 + 8 * 2/3 = 18/3 -> 0.6
    assert vqa_accuracy("red", ["red"] * 2 + ["blue"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("green", ["red"] * 2 + ["blue"] * 8) == 0.0
    assert vqa_accuracy(None, ["red"] * 10) == 0.0
    # human answers that disagree are normalised too
    assert vqa_accuracy("T-Shirt", ["t-shirt"] * 4 + ["shirt"] * 6) == 1.0
    # annotation dicts as in the VQA json
    assert vqa_accuracy("no", [{"answer": "no", "answer_id": i} for i in range(10)]) == 1.0
    with pytest.raises(ValueError):
        vqa_accuracy("x", [])


@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 10))
def test_vqa_accuracy_closed_form(k):
    """k humans gave the predicted answer: min(1, (k-1)/3) for each of them, min(1, k/3) for the
    10-k others, averaged."""
    answers = ["cat"] * k + ["dog"] * (10 - k)
    expected = (k * min(1.0, max(k - 1, 0) / 3) + (10 - k) * min(1.0, k / 3)) / 10
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


# --- GQA ------------------------------------------------------------------------------------


def test_gqa_exact_match():
    assert gqa_exact_match("Yes.", "yes") == 1.0
    assert gqa_exact_match("  Left ", "left") == 1.0
    assert gqa_exact_match("the table", "table") == 0.0  # articles are not dropped
    assert gqa_exact_match("t-shirt", "tshirt") == 1.0
    assert gqa_exact_match(None, "yes") == 0.0
    assert gqa_normalize("A  Red,  car!") == "a red car"


# --- MME ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, label", [
    ("Yes", "yes"), ("no", "no"), ("Yes, there is a dog.", "yes"), ("No.", "no"),
    ("\nYes", "yes"), ("Not sure", "no"),  # "not " contains "no": the script's rule
    ("I think yes", "other"), ("maybe", "other"), (None, "other"),
])
def test_mme_parse(reply, label):
    assert mme_parse_answer(reply) == label


def test_mme_scores_hand_made_table():
    rows = [
        # existence: image a both right, image b one right -> acc 3/4, acc+ 1/2 -> 75 + 50
        {"category": "existence", "image": "a.jpg", "answer": "Yes", "prediction": "Yes"},
        {"category": "existence", "image": "a.jpg", "answer": "No", "prediction": "No, there is not"},
        {"category": "existence", "image": "b.jpg", "answer": "Yes", "prediction": "yes"},
        {"category": "existence", "image": "b.jpg", "answer": "No", "prediction": "yes"},
        # OCR (spelled lowercase): "I think yes" parses to other -> acc 1/2, acc+ 0 -> 50
        {"category": "ocr", "image": "c.jpg", "answer": "Yes", "prediction": "I think yes"},
        {"category": "ocr", "image": "c.jpg", "answer": "No", "prediction": "no"},
        # code_reasoning: both right -> 200; a missing prediction counts wrong elsewhere
        {"category": "code_reasoning", "image": "d.png", "answer": "Yes", "prediction": "yes"},
        {"category": "code_reasoning", "image": "d.png", "answer": "No", "prediction": "no"},
        {"category": "text_translation", "image": "e.png", "answer": "Yes", "prediction": None},
        {"category": "text_translation", "image": "e.png", "answer": "No", "prediction": "No"},
    ]
    out = mme_scores(rows)
    cats = out["categories"]
    assert cats["existence"]["acc"] == pytest.approx(0.75)
    assert cats["existence"]["acc_plus"] == pytest.approx(0.5)
    assert cats["existence"]["score"] == pytest.approx(125.0)
    assert cats["OCR"]["score"] == pytest.approx(50.0) and cats["OCR"]["other"] == 1
    assert cats["code_reasoning"]["score"] == pytest.approx(200.0)
    assert cats["text_translation"]["score"] == pytest.approx(50.0)
    assert out["perception"] == pytest.approx(175.0)
    assert out["cognition"] == pytest.approx(250.0)
    assert out["total"] == pytest.approx(425.0)
    assert "count" in out["missing_categories"] and "existence" not in out["missing_categories"]
    assert len(MME_PERCEPTION) == 10 and len(MME_COGNITION) == 4  # maxima 2000 and 800
    with pytest.raises(ValueError):
        mme_scores([{"category": "count", "image": "x", "answer": "maybe", "prediction": "yes"}])


# --- image metrics: pixels --------------------------------------------------------------------


def _scene(size, seed, shift=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    noise = rng.integers(0, 40, size=(size[1], size[0], 3))
    img = Image.fromarray(((base + noise) % 256).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.rectangle([5 + shift, 5, size[0] // 2 + shift, size[1] // 2], fill=(220, 30, 30))
    d.ellipse([size[0] // 3, size[1] // 3, size[0] - 5, size[1] - 5 - shift], fill=(30, 30, 220))
    return img


def test_pixel_distances_match_numpy_and_torch():
    import torch
    from torchvision import transforms

    from uniedit_cli.eval.metrics import pixel_distances

    gen, gt = _scene((300, 200), 0, shift=7), _scene((256, 256), 1)
    l1, l2 = pixel_distances(gen, gt)
    # independent numpy computation of image_eval.py's definition
    g = np.asarray(gen.resize(gt.size), dtype=np.float64) / 255.0
    t = np.asarray(gt, dtype=np.float64) / 255.0
    assert l1 == pytest.approx(np.abs(g - t).mean(), abs=1e-12)
    assert l2 == pytest.approx(((g - t) ** 2).mean(), abs=1e-12)
    # the official float32 computation (ToTensor + nn.L1Loss / nn.MSELoss)
    tg, tt = transforms.ToTensor()(gen.resize(gt.size)), transforms.ToTensor()(gt)
    assert abs(l1 - torch.nn.L1Loss()(tg, tt).item()) < 1e-6
    assert abs(l2 - torch.nn.MSELoss()(tg, tt).item()) < 1e-6
    assert pixel_distances(gt, gt) == (0.0, 0.0)


# --- image metrics: CLIP and DINO with random weights -----------------------------------------


@pytest.fixture(scope="module")
def scorer():
    from uniedit_cli.eval.metrics import ImageScorer

    return ImageScorer(random_weights=True, device="cpu", batch_size=4, workers=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric-images")
    paths = {}
    for name, size, seed, shift in [("out0", (320, 240), 0, 0), ("tgt0", (256, 256), 1, 4), ("src0", (256, 256), 2, 9),
                                    ("out1", (200, 300), 3, 2), ("tgt1", (256, 256), 4, 0)]:
        p = root / f"{name}.png"
        _scene(size, seed, shift).save(p)
        paths[name] = p
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    paths["corrupt"] = corrupt
    return paths


def _cos(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_clip_preprocess_is_openai_transform(images):
    from torchvision import transforms

    from uniedit_cli.eval.metrics import clip_pixels, dino_pixels

    img = Image.open(images["out0"]).convert("RGB")
    clip_official = transforms.Compose([transforms.Resize(224, interpolation=transforms.InterpolationMode.BICUBIC),
                                        transforms.CenterCrop(224)])
    assert np.array_equal(clip_pixels(img), np.asarray(clip_official(img)))
    dino_official = transforms.Compose([transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
                                        transforms.CenterCrop(224)])
    assert np.array_equal(dino_pixels(img), np.asarray(dino_official(img)))


def test_clip_embeddings_match_open_clip(scorer, images):
    import open_clip
    import torch

    clip = scorer.clip
    preprocess = open_clip.image_transform(224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                           std=open_clip.OPENAI_DATASET_STD, interpolation="bicubic",
                                           resize_mode="shortest")
    imgs = [Image.open(images[k]).convert("RGB") for k in ("out0", "tgt0", "out1")]
    ours = clip.encode_images([clip.preprocess(im) for im in imgs]).numpy()
    with torch.no_grad():
        ref = np.stack([clip.model.encode_image(preprocess(im).unsqueeze(0))[0].numpy() for im in imgs])
    assert np.abs(ours - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    assert abs(_cos(ours[0], ours[1]) - _cos(ref[0], ref[1])) < 1e-6

    captions = ["a red square next to a blue ball", "a photo", "an extremely long caption " * 30]
    ours_t = clip.encode_texts(captions).numpy()
    with torch.no_grad():
        ref_t = clip.model.encode_text(clip.tokenizer(captions)).numpy()  # all 77 positions
    for a, b in zip(ours_t, ref_t):
        assert _cos(a, b) > 1 - 1e-6
        assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(b).max())


def _dino_reference(sd, x, heads=6, eps=1e-6):
    """DINO ViT-S/16's forward written out from its state dict: CLS token after the last norm."""
    import torch.nn.functional as F

    b = x.shape[0]
    dim = sd["cls_token"].shape[-1]
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    x = torch_cat([sd["cls_token"].expand(b, -1, -1), x]) + sd["pos_embed"]
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        p = f"blocks.{i}."
        h = F.layer_norm(x, (dim,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = (h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]).reshape(b, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(-1)
        h = (attn @ v).transpose(1, 2).reshape(b, -1, dim)
        x = x + h @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = F.layer_norm(x, (dim,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
        i += 1
    assert i == 12
    return F.layer_norm(x, (dim,), sd["norm.weight"], sd["norm.bias"], eps)[:, 0]


def torch_cat(xs):
    import torch

    return torch.cat(xs, dim=1)


def test_dino_features_match_hand_written_vit(scorer, images):
    import torch
    from torchvision import transforms

    dino = scorer.dino
    official = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(224),
        transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    imgs = [Image.open(images[k]).convert("RGB") for k in ("out0", "tgt0")]
    ours = dino.encode_images([dino.preprocess(im) for im in imgs]).numpy()
    sd = {k: v.float() for k, v in dino.model.state_dict().items()}
    with torch.no_grad():
        ref = torch.cat([_dino_reference(sd, official(im).unsqueeze(0)) for im in imgs]).numpy()
    assert np.abs(ours - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    assert abs(_cos(ours[0], ours[1]) - _cos(ref[0], ref[1])) < 1e-6


def test_score_edits_all_metrics(scorer, images):
    import torch

    from uniedit_cli.eval.metrics import EditPair, pixel_distances, score_edits

    pairs = [
        EditPair("a", images["out0"], target=images["tgt0"], source=images["src0"], caption="a red square",
                 output_caption="a red square and a ball", source_caption="a ball"),
        EditPair("b", images["out1"], target=images["tgt1"], source=images["tgt0"], caption="a blue ball",
                 output_caption="a blue ball", source_caption="a blue ball"),
        EditPair("c", images["out1"], target=images["tgt1"], source=images["src0"]),  # no captions
        EditPair("missing", None, target=images["tgt0"]),
        EditPair("gone", images["out0"].parent / "nope.png", target=images["tgt0"]),
        EditPair("corrupt", images["corrupt"], target=images["tgt0"], source=images["src0"], caption="x",
                 output_caption="y", source_caption="z"),
        EditPair("bad-ref", images["out0"], target=images["corrupt"]),
    ]
    metrics = ["l1", "l2", "clip-i", "dino", "clip-t", "clip-dir", "clip-out", "clip-im", "l1-src", "dino-src"]
    res = score_edits(pairs, metrics, scorer)
    assert set(res) == {p.id for p in pairs}
    assert res["missing"] == {"error": "no output image"}
    assert "not found" in res["gone"]["error"]
    assert res["corrupt"]["error"].startswith("unreadable output image")
    assert res["bad-ref"]["error"].startswith("unreadable target image")
    assert set(res["c"]["skipped"]) == {"clip-t", "clip-dir", "clip-out"}
    assert "clip-i" in res["c"] and "clip-t" not in res["c"]

    # independent values for pair "a"
    clip, dino = scorer.clip, scorer.dino
    load = {k: Image.open(images[k]).convert("RGB") for k in ("out0", "tgt0", "src0")}
    ce = {k: clip.encode_images([clip.preprocess(v)])[0].numpy() for k, v in load.items()}
    de = {k: dino.encode_images([dino.preprocess(v)])[0].numpy() for k, v in load.items()}
    with torch.no_grad():
        te = {t: clip.model.encode_text(clip.tokenizer([t]))[0].numpy()
              for t in ("a red square", "a red square and a ball", "a ball")}
    a = res["a"]
    l1, l2 = pixel_distances(load["out0"], load["tgt0"])
    assert a["l1"] == l1 and a["l2"] == l2
    assert a["l1-src"] == pixel_distances(load["out0"], load["src0"])[0]
    assert abs(a["clip-i"] - _cos(ce["out0"], ce["tgt0"])) < 1e-6
    assert abs(a["clip-im"] - _cos(ce["out0"], ce["src0"])) < 1e-6
    assert abs(a["dino"] - _cos(de["out0"], de["tgt0"])) < 1e-6
    assert abs(a["dino-src"] - _cos(de["out0"], de["src0"])) < 1e-6
    assert abs(a["clip-t"] - _cos(ce["out0"], te["a red square"])) < 1e-6
    assert abs(a["clip-out"] - _cos(ce["out0"], te["a red square and a ball"])) < 1e-6

    def unit(v):
        return v / np.linalg.norm(v)

    direction = _cos(unit(ce["out0"]) - unit(ce["src0"]), unit(te["a red square and a ball"]) - unit(te["a ball"]))
    assert abs(a["clip-dir"] - direction) < 1e-5
    # identical captions give no text direction: reported, not a NaN
    assert "clip-dir" in res["b"]["skipped"] and "clip-dir" not in res["b"]


def test_pixel_metrics_need_no_model(images):
    from uniedit_cli.eval.metrics import EditPair, ImageScorer, score_edits

    sc = ImageScorer(device="cpu")
    res = score_edits([EditPair("x", images["out0"], target=images["tgt0"])], ["l1", "L2"], sc)
    assert set(res["x"]) == {"l1", "l2"}
    assert sc._clip is None and sc._dino is None
    with pytest.raises(UsageError, match="unknown image metric"):
        score_edits([], ["psnr"], sc)


def test_bf16_encoders_close_to_fp32(scorer, images):
    import torch

    from uniedit_cli.eval.metrics import ClipEncoder, DinoEncoder

    fp = scorer.clip
    bf = ClipEncoder(copy.deepcopy(fp.model).to(torch.bfloat16), fp.tokenizer, fp.device, torch.bfloat16, "test")
    imgs = [fp.preprocess(Image.open(images[k]).convert("RGB")) for k in ("out0", "tgt0")]
    a, b = fp.encode_images(imgs), bf.encode_images(imgs)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert abs(_cos(a[0], a[1]) - _cos(b[0], b[1])) < 0.05
    t32, t16 = fp.encode_texts(["a red square"]), bf.encode_texts(["a red square"])
    assert _cos(t32[0], t16[0]) > 0.98
    d = scorer.dino
    dbf = DinoEncoder(copy.deepcopy(d.model).to(torch.bfloat16), d.device, torch.bfloat16, "test")
    dimgs = [d.preprocess(Image.open(images[k]).convert("RGB")) for k in ("out0", "tgt0")]
    x, y = d.encode_images(dimgs), dbf.encode_images(dimgs)
    assert abs(_cos(x[0], x[1]) - _cos(y[0], y[1])) < 0.05


# --- weights: loading, safety, missing-file errors ------------------------------------------


def test_dino_loads_hub_layout_state_dicts(scorer, images, tmp_path):
    import torch
    from safetensors.torch import save_file

    from uniedit_cli.eval.metrics import load_dino

    ref_model = scorer.dino
    arr = [ref_model.preprocess(Image.open(images["out0"]).convert("RGB"))]
    expected = ref_model.encode_images(arr)
    sd = {k: v.clone() for k, v in ref_model.model.state_dict().items()}
    # torch hub's dino_deitsmall16_pretrain.pth: a plain state dict
    torch.save(sd, tmp_path / "dino_deitsmall16_pretrain.pth")
    # a DINO training checkpoint: {"teacher": {"backbone.*", "head.*"}}
    wrapped = {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()}, "head.mlp.0.weight": torch.zeros(2, 2)},
               "epoch": 100}
    torch.save(wrapped, tmp_path / "checkpoint.pth")
    save_file(sd, str(tmp_path / "model.safetensors"))
    for name in ("dino_deitsmall16_pretrain.pth", "checkpoint.pth", "model.safetensors"):
        enc = load_dino(tmp_path / name, device="cpu", seed=123)  # other random init, then the file
        assert torch.allclose(enc.encode_images(arr), expected, atol=1e-5), name
        assert enc.source.endswith(name)


def test_clip_loads_safetensors(scorer, images, tmp_path):
    import torch
    from safetensors.torch import save_file

    from uniedit_cli.eval.metrics import load_clip

    sd = {k: v.clone().contiguous() for k, v in scorer.clip.model.state_dict().items()}
    save_file(sd, str(tmp_path / "open_clip_model.safetensors"))
    enc = load_clip(tmp_path, device="cpu", seed=7)  # a folder holding the file works too
    arr = [enc.preprocess(Image.open(images["tgt0"]).convert("RGB"))]
    assert torch.allclose(enc.encode_images(arr), scorer.clip.encode_images(arr), atol=1e-5)
    assert torch.allclose(enc.encode_texts(["a cat"]), scorer.clip.encode_texts(["a cat"]), atol=1e-5)


class _Evil:
    def __reduce__(self):
        return (os.mkdir, (os.environ["UNIEDIT_EVIL_MARKER"],))


def test_checkpoints_are_never_unpickled(tmp_path, monkeypatch):
    import torch

    from uniedit_cli.eval.metrics import read_state_dict

    marker = tmp_path / "pwned"
    monkeypatch.setenv("UNIEDIT_EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Evil()}, path)
    with pytest.raises(UsageError, match="cannot be loaded safely"):
        read_state_dict(path, what="DINO", option="--dino-weights")
    assert not marker.exists()
    with pytest.raises(UsageError, match="no such file"):
        read_state_dict(tmp_path / "absent.pth", what="DINO", option="--dino-weights")
    # a TorchScript archive (the layout of OpenAI's ViT-B-32.pt): its tensors are read
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), str(scripted))
    sd = read_state_dict(scripted, what="CLIP", option="--clip-weights")
    assert set(sd) == {"weight", "bias"} and sd["weight"].shape == (3, 2)


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    import torch

    from uniedit_cli.eval.metrics import load_dino

    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(UsageError, match="is not a DINO ViT-S/16 checkpoint"):
        load_dino(tmp_path / "other.pth", device="cpu")


def test_missing_weights_offline_name_the_fix(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    from uniedit_cli.eval.metrics import load_clip, load_dino

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UsageError) as err:
        load_clip(device="cpu")
    text = str(err.value)
    assert "--clip-weights" in text and "timm/vit_base_patch32_clip_224.openai" in text
    with pytest.raises(UsageError) as err:
        load_dino(device="cpu")
    text = str(err.value)
    assert "--dino-weights" in text and "dino_deitsmall16_pretrain.pth" in text and str(tmp_path / "torch") in text
    with pytest.raises(UsageError, match="no such file"):
        load_clip(tmp_path / "nope.safetensors", device="cpu")


def test_reference_embeddings_persist_between_runs(scorer, images, tmp_path):
    from uniedit_cli.eval.metrics import EditPair, ImageScorer, score_edits

    pairs = [EditPair("a", images["out0"], target=images["tgt0"], source=images["src0"], caption="a red square",
                      output_caption="a red square and a ball", source_caption="a ball"),
             EditPair("b", images["out1"], target=images["tgt1"], source=images["src0"], caption="a blue ball",
                      output_caption="a blue ball on grass", source_caption="a ball")]
    metrics = ["clip-i", "dino", "clip-t", "clip-dir", "dino-src"]
    first = score_edits(pairs, metrics, ImageScorer(random_weights=True, device="cpu", cache_dir=tmp_path / "emb"))
    assert len(list((tmp_path / "emb").glob("*.safetensors"))) == 2  # one store per encoder

    again = ImageScorer(random_weights=True, device="cpu", cache_dir=tmp_path / "emb")
    encoded = {"clip": 0, "dino": 0, "texts": 0}
    clip, dino = again.clip, again.dino
    real_clip, real_dino, real_texts = clip.encode_images, dino.encode_images, clip.encode_texts

    def count(kind, fn):
        def wrapped(items, *a, **k):
            encoded[kind] += len(items)
            return fn(items, *a, **k)
        return wrapped

    clip.encode_images, dino.encode_images = count("clip", real_clip), count("dino", real_dino)
    clip.encode_texts = count("texts", real_texts)
    try:
        second = score_edits(pairs, metrics, again)
    finally:
        del clip.encode_images, dino.encode_images, clip.encode_texts
    assert encoded == {"clip": 2, "dino": 2, "texts": 0}  # only the two outputs
    for pid in ("a", "b"):
        for m in metrics:
            assert abs(first[pid][m] - second[pid][m]) < 1e-6  # batch composition only
    # another model (here: another seed) never reads these embeddings
    other = ImageScorer(random_weights=True, device="cpu", seed=1, cache_dir=tmp_path / "emb")
    assert other.store(scorer.dino).path != other.store(other.dino).path
