"""The MagicBrush suite: both data layouts, single- and multi-turn samples, scoring with
per-sample failures, metric conventions. Data is synthetic, laid out as the hub parquet split
(osunlp/MagicBrush) and as the official test zip (edit_sessions.json + images/ + captions)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from uniedit_cli.errors import UsageError
from uniedit_cli.eval.suites import suite_class
from uniedit_cli.eval.suites.magicbrush import MagicBrushSuite


def _img(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 60, size=(size[1], size[0], 3)).astype(np.uint8) + 100
    img = Image.fromarray(arr)
    d = ImageDraw.Draw(img)
    d.rectangle([seed % 20, 4, 20 + seed % 20, 24], fill=(200, 20 + 10 * seed % 200, 20))
    return img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# sessions: img_id -> number of turns; turn t's source is turn t-1's target (as in MagicBrush)
SESSIONS = {"100": 1, "200": 3}


def _session_images(sid: str, turns: int):
    base = int(sid)
    return [_img(base + t) for t in range(turns + 1)]  # [input, output1, ..., output_n]


def _write_parquet(path: Path, sessions: dict[str, int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for sid, n in sessions.items():
        imgs = _session_images(sid, n)
        for t in range(1, n + 1):
            rows.append({"img_id": sid, "turn_index": t,
                         "source_img": {"bytes": _png(imgs[t - 1]), "path": None},
                         "mask_img": {"bytes": _png(Image.new("RGB", (64, 48), "white")), "path": None},
                         "instruction": f"edit {sid} turn {t}",
                         "target_img": {"bytes": _png(imgs[t]), "path": None}})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("img_id", pa.string()), ("turn_index", pa.int32()), ("source_img", image_type),
                        ("mask_img", image_type), ("instruction", pa.string()), ("target_img", image_type)])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


@pytest.fixture
def hub_dir(tmp_path) -> Path:
    root = tmp_path / "magicbrush-hub"
    _write_parquet(root / "data" / "dev-00000-of-00001.parquet", SESSIONS)
    _write_parquet(root / "data" / "train-00000-of-00001.parquet", {"900": 2})
    return root


@pytest.fixture
def zip_dir(tmp_path) -> Path:
    """The official test layout."""
    root = tmp_path / "test"
    sessions, local, global_ = {}, {}, {}
    for sid, n in SESSIONS.items():
        folder = root / "images" / sid
        folder.mkdir(parents=True)
        imgs = _session_images(sid, n)
        imgs[0].save(folder / f"{sid}-input.png")
        global_[sid] = {f"{sid}-input.png": f"a photo number {sid}"}
        local[sid] = {}
        turns = []
        for t in range(1, n + 1):
            imgs[t].save(folder / f"{sid}-output{t}.png")
            Image.new("RGB", (64, 48), "white").save(folder / f"{sid}-mask{t}.png")
            src = f"{sid}-input.png" if t == 1 else f"{sid}-output{t - 1}.png"
            turns.append({"input": src, "mask": f"{sid}-mask{t}.png", "output": f"{sid}-output{t}.png",
                          "instruction": f"edit {sid} turn {t}"})
            local[sid][f"{sid}-output{t}.png"] = f"a red box, version {t}"
            global_[sid][f"{sid}-output{t}.png"] = f"a photo number {sid} with a red box, version {t}"
        sessions[sid] = turns
    (root / "edit_sessions.json").write_text(json.dumps(sessions))
    (root / "local_descriptions.json").write_text(json.dumps(local))
    (root / "global_descriptions.json").write_text(json.dumps(global_))
    return root


@pytest.fixture(scope="module")
def scorer():
    from uniedit_cli.eval.metrics import ImageScorer

    return ImageScorer(random_weights=True, device="cpu", batch_size=4, workers=2)


def test_registry_and_class_attributes():
    cls = suite_class("magicbrush")
    assert cls is MagicBrushSuite
    assert (cls.name, cls.task, cls.output_kind) == ("magicbrush", "edit", "image")
    assert cls.default_metrics == ("l1", "l2", "clip-i", "dino", "clip-t")
    assert set(cls.metric_conventions) == set(cls.all_metrics)
    assert cls.metric_conventions["clip-dir"] == "emu-edit" and cls.metric_conventions["l1"] == "magicbrush-official"


def test_hub_layout_single_turn(hub_dir, tmp_path):
    cache = tmp_path / "cache"
    suite = MagicBrushSuite(hub_dir, cache_dir=cache)
    samples = suite.samples()
    assert [s.id for s in samples] == ["100-1", "200-1", "200-2", "200-3"]
    by_id = {s.id: s for s in samples}
    s2 = by_id["200-2"]
    # single-turn: edited from the ground-truth previous image, which is written once
    assert s2.inputs["image"] == by_id["200-1"].reference["target"]
    assert s2.inputs["instruction"] == "edit 200 turn 2"
    assert Path(s2.inputs["image"]).name == "200-output1.png"
    assert Path(by_id["200-1"].inputs["image"]).name == "200-input.png"
    assert s2.meta == {"session": "200", "turn": 2, "turns": 3, "final": False, "mode": "single", "previous": None,
                       "target_name": "200-output2.png"}
    for s in samples:
        for key in ("target", "source", "mask"):
            assert Path(s.reference[key]).is_file()
        assert Path(s.reference["target"]).is_relative_to(cache)
    # the written target is byte-identical to the parquet's
    assert np.array_equal(np.asarray(Image.open(by_id["200-3"].reference["target"])), np.asarray(_img(203)))
    assert sorted(p.name for p in (cache / "images" / "200").iterdir()) == [
        "200-input.png", "200-mask1.png", "200-mask2.png", "200-mask3.png",
        "200-output1.png", "200-output2.png", "200-output3.png"]
    assert (cache / "manifest.json").is_file()
    # no captions in the hub split: clip-t is not a default there
    assert suite.default_metrics == ("l1", "l2", "clip-i", "dino")

    # a second run reads the manifest, not the parquet images
    again = MagicBrushSuite(hub_dir, cache_dir=cache)
    again._iter_rows = lambda: (_ for _ in ()).throw(AssertionError("re-read the parquet"))
    assert [s.id for s in again.samples()] == [s.id for s in samples]
    # a deleted cached image is extracted again
    Path(by_id["200-3"].reference["target"]).unlink()
    third = MagicBrushSuite(hub_dir, cache_dir=cache)
    assert Path(third.samples()[-1].reference["target"]).is_file()


def test_hub_layout_split_and_default_cache(hub_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("UNIEDIT_HOME", str(tmp_path / "home"))
    suite = MagicBrushSuite(hub_dir / "data", split="train")
    assert [s.id for s in suite.samples()] == ["900-1", "900-2"]
    assert suite.resolved_cache_dir().is_relative_to(tmp_path / "home" / "cache" / "magicbrush")
    with pytest.raises(UsageError, match="no 'test' shards"):
        MagicBrushSuite(hub_dir, split="test").samples()


def test_multi_turn_samples_and_chaining(hub_dir, tmp_path):
    suite = MagicBrushSuite(hub_dir, cache_dir=tmp_path / "c", mode="multi")
    samples = suite.samples()
    by_id = {s.id: s for s in samples}
    assert by_id["200-1"].inputs["image"] is not None and by_id["200-1"].meta["previous"] is None
    assert by_id["200-2"].inputs["image"] is None and by_id["200-2"].meta["previous"] == "200-1"
    assert by_id["200-3"].meta["previous"] == "200-2" and by_id["200-3"].meta["final"]
    assert by_id["100-1"].meta["final"]
    waves = MagicBrushSuite.turn_waves(samples)
    assert [[s.id for s in w] for w in waves] == [["100-1", "200-1"], ["200-2"], ["200-3"]]
    out = tmp_path / "gen-200-1.png"
    _img(7).save(out)
    assert MagicBrushSuite.chained_inputs(by_id["200-2"], {}) is None  # previous output missing
    inputs = MagicBrushSuite.chained_inputs(by_id["200-2"], {"200-1": str(out)})
    assert inputs == {"image": str(out), "instruction": "edit 200 turn 2"}
    assert MagicBrushSuite.chained_inputs(by_id["200-1"], {}) == by_id["200-1"].inputs
    with pytest.raises(UsageError, match="mode"):
        MagicBrushSuite(hub_dir, mode="sideways")


def test_score_pixels_with_missing_and_corrupt_outputs(hub_dir, tmp_path):
    suite = MagicBrushSuite(hub_dir, cache_dir=tmp_path / "c")
    samples = suite.samples()
    by_id = {s.id: s for s in samples}
    good = tmp_path / "out-200-1.png"
    _img(55, size=(80, 60)).save(good)  # another size: resized to the target's
    corrupt = tmp_path / "out-200-3.png"
    corrupt.write_bytes(b"not an image")
    outputs = {"100-1": by_id["100-1"].reference["target"],  # perfect edit: L1 = L2 = 0
               "200-1": str(good), "200-3": {"image": str(corrupt)}}  # 200-2 missing
    result = suite.score(samples, outputs, ["l1", "l2"], device="cpu")
    ps = result.per_sample
    assert ps["100-1"] == {"l1": 0.0, "l2": 0.0}
    assert ps["200-2"] == {"error": "no output image"}
    assert ps["200-3"]["error"].startswith("unreadable output image")
    target = np.asarray(Image.open(by_id["200-1"].reference["target"]).convert("RGB"), dtype=np.float64) / 255
    gen = np.asarray(Image.open(good).convert("RGB").resize((64, 48)), dtype=np.float64) / 255
    assert ps["200-1"]["l1"] == pytest.approx(np.abs(gen - target).mean(), abs=1e-12)
    assert result.n == 2
    assert result.metrics["l1"] == pytest.approx(ps["200-1"]["l1"] / 2)
    assert result.metrics["l2"] == pytest.approx(ps["200-1"]["l2"] / 2)
    assert result.breakdown["magicbrush-official"] == result.metrics
    assert result.breakdown["counts"]["failed"] == 2.0 and result.breakdown["counts"]["samples"] == 4.0
    assert result.breakdown["turn-1"]["l1"] == pytest.approx(result.metrics["l1"])
    assert "emu-edit" not in result.breakdown
    # captions are required for clip-t, and the hub split has none
    with pytest.raises(UsageError, match="local_descriptions.json"):
        suite.score(samples, outputs, ["l1", "clip-t"], device="cpu")
    with pytest.raises(UsageError, match="unknown image metric"):
        suite.score(samples, outputs, ["psnr"], device="cpu")


def test_zip_layout_all_metrics(zip_dir, scorer, tmp_path):
    suite = MagicBrushSuite(zip_dir / "images", scorer=scorer)  # the images folder works too
    assert suite.layout == "zip" and suite.default_metrics == MagicBrushSuite.default_metrics
    samples = suite.samples()
    by_id = {s.id: s for s in samples}
    assert [s.id for s in samples] == ["100-1", "200-1", "200-2", "200-3"]
    s2 = by_id["200-2"]
    assert Path(s2.inputs["image"]) == zip_dir / "images" / "200" / "200-output1.png"
    assert s2.reference["caption"] == "a red box, version 2"
    assert s2.reference["target_global_caption"] == "a photo number 200 with a red box, version 2"
    assert s2.reference["source_global_caption"] == "a photo number 200 with a red box, version 1"
    # outputs: 200-2's output is its own source (an edit that changed nothing)
    outputs = {"100-1": zip_dir / "images" / "100" / "100-output1.png", "200-2": s2.inputs["image"]}
    result = suite.score(samples, {k: str(v) for k, v in outputs.items()}, list(suite.all_metrics), device="cpu")
    unchanged = result.per_sample["200-2"]
    assert unchanged["l1-src"] == 0.0
    assert unchanged["clip-im"] == pytest.approx(1.0, abs=1e-6)
    assert unchanged["dino-src"] == pytest.approx(1.0, abs=1e-6)
    perfect = result.per_sample["100-1"]
    assert perfect["l1"] == 0.0 and perfect["clip-i"] == pytest.approx(1.0, abs=1e-6)
    assert set(perfect) == set(suite.all_metrics)
    assert result.n == 2 and result.per_sample["200-1"] == {"error": "no output image"}
    assert set(result.breakdown["magicbrush-official"]) == {"l1", "l2", "clip-i", "dino", "clip-t"}
    assert set(result.breakdown["emu-edit"]) == {"clip-dir", "clip-out", "clip-im", "l1-src", "dino-src"}
    assert result.metrics["clip-t"] == pytest.approx((perfect["clip-t"] + unchanged["clip-t"]) / 2)
    assert "clip" in suite.config()["metric_models"]


def test_zip_layout_multi_turn_scores_final_turns(zip_dir, scorer):
    suite = MagicBrushSuite(zip_dir, mode="multi", scorer=scorer)
    samples = suite.samples()
    by_id = {s.id: s for s in samples}
    final = zip_dir / "images" / "200" / "200-output3.png"
    outputs = {"200-1": str(final), "200-3": str(final)}
    result = suite.score(samples, outputs, ["l1", "l1-src"], device="cpu")
    assert result.per_sample["200-3"]["l1"] == 0.0
    # Emu Edit "against the source" in multi-turn: the session's original input
    orig = np.asarray(Image.open(zip_dir / "images" / "200" / "200-input.png"), dtype=np.float64) / 255
    out = np.asarray(Image.open(final), dtype=np.float64) / 255
    assert result.per_sample["200-3"]["l1-src"] == pytest.approx(np.abs(out - orig).mean(), abs=1e-12)
    assert "not_scored" in result.per_sample["200-1"] and "not_scored" in result.per_sample["200-2"]
    assert result.per_sample["100-1"] == {"error": "no output image"}
    assert result.n == 1 and "turn-1" not in result.breakdown
    assert by_id["200-3"].reference["session_source"].endswith("200-input.png")


def test_missing_or_wrong_data_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as err:
        MagicBrushSuite(None).samples()
    assert "osunlp/MagicBrush" in str(err.value)
    with pytest.raises(UsageError, match="no such file"):
        MagicBrushSuite(tmp_path / "absent").samples()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither edit_sessions.json"):
        MagicBrushSuite(tmp_path / "empty").samples()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "edit_sessions.json").write_text("{not json")
    with pytest.raises(UsageError, match="not readable JSON"):
        MagicBrushSuite(broken).samples()
    no_images = tmp_path / "no-images"
    no_images.mkdir()
    (no_images / "edit_sessions.json").write_text(json.dumps(
        {"5": [{"input": "5-input.png", "output": "5-output1.png", "instruction": "x"}]}))
    with pytest.raises(UsageError, match="is missing"):
        MagicBrushSuite(no_images).samples()


def test_string_options_from_the_command_line(hub_dir, tmp_path):
    # what `uniedit eval --suite-option KEY=VALUE` accepts (validated against option_help)
    assert {"mode", "split", "local_captions", "global_captions", "embedding_cache", "metric_dtype",
            "metric_batch_size", "workers"} == set(MagicBrushSuite.option_help)
    suite = MagicBrushSuite(hub_dir, cache_dir=tmp_path / "c", workers="2", metric_batch_size="3",
                            embedding_cache="off", random_weights="0")
    sc = suite.scorer("cpu")
    assert (sc.workers, sc.batch_size, sc.cache_dir, sc.random_weights) == (2, 3, None, False)
    with pytest.raises(UsageError, match="whole number"):
        MagicBrushSuite(hub_dir, workers="many").scorer("cpu")
