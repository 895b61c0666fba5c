"""`uniedit synth` end to end: the scene world, the editor / judge / rewriter / CLIP paths with
tiny models, resume after kill -9, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

SMALL = ["--num-rows", "40", "--chunk-size", "16", "--size", "64"]


def _rows(out: Path, split: str = "train") -> list[dict]:
    rows = []
    for path in sorted((out / split).glob("data-*.parquet")):
        rows += pq.read_table(path).to_pylist()
    return rows


def test_default_world_run_writes_a_loadable_dataset_with_exact_targets(cli, tmp_path):
    out = tmp_path / "data"
    result = cli(["synth", *SMALL, "--holdout", "0.2", "--out", out])
    assert result.exit_code == 0, result
    manifest = json.loads((out / "uniedit-data.json").read_text())
    assert manifest["rows"] == sum(manifest["rows_per_split"].values()) == 40
    assert set(manifest["counts_per_style"]) <= {"conditional", "synthesis", "referring", "nested", "text-answer"}
    assert manifest["config"]["vqa"] == "shapes" and manifest["config"]["editor"] == "world"
    assert manifest["has_targets"] is True
    assert (out / "preview.html").read_text().count("<img") >= 10

    import datasets

    ds = datasets.load_dataset("parquet", data_dir=str(out))
    assert set(ds) == {"train", "test"} and len(ds["train"]) + len(ds["test"]) == 40
    assert ds["train"].column_names[:3] == ["input_image", "edit_prompt", "edited_image"]
    train_images = set(ds["train"]["image_id"])
    assert not train_images & set(ds["test"]["image_id"]), "held out by image"

    # the target is exactly the world's render of the edited scene
    from uniedit_cli import world
    from uniedit_cli.synth.sources.shapes import ShapesSource

    records = {r.source_id: r for r in ShapesSource(num_images=40, seed=0, size=64, questions_per_image=4)}
    row = ds["train"][0]
    record = records[row["source_id"]]
    assert np.array_equal(np.asarray(row["input_image"]), np.asarray(world.render_source(record, 64)))
    differs = not np.array_equal(np.asarray(row["input_image"]), np.asarray(row["edited_image"]))
    assert differs or row["style"] == "conditional"
    for r in ds["train"]:
        assert r["expected_after_edit"]["question"] and r["expected_after_edit"]["answer"]
        assert (r["condition_holds"] is None) == (r["style"] != "conditional")


def test_a_killed_run_resumes_to_the_same_rows(tmp_path):
    args = ["synth", "--num-rows", "160", "--chunk-size", "10", "--size", "64"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "uniedit_cli", *args, "--out", str(reference)], env=env, check=True,
                   capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "uniedit_cli", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "train").glob("data-*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    done = len(list((out / "train").glob("data-*.parquet")))
    assert 0 < done < 16, f"the kill should land mid-run ({done} shards)"
    result = subprocess.run([sys.executable, "-m", "uniedit_cli", *args, "--out", str(out)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "already done" in result.stderr
    for split in ("train", "test"):
        a, b = _rows(reference, split), _rows(out, split)
        assert [r["id"] for r in a] == [r["id"] for r in b]
        assert len({r["id"] for r in b}) == len(b), "no duplicates"
        assert all(x["edited_image"] == y["edited_image"] and x["edit_prompt"] == y["edit_prompt"] for x, y in zip(a, b))
    assert not list(out.rglob("*.tmp"))
    assert json.loads((out / "uniedit-data.json").read_text())["rows"] == 160


def test_rerun_with_other_arguments_is_refused(cli, tmp_path):
    out = tmp_path / "data"
    assert cli(["synth", *SMALL, "--out", out]).exit_code == 0
    result = cli(["synth", *SMALL, "--out", out, "--seed", "3"])
    assert result.exit_code == 2 and "seed" in result.stderr
    again = cli(["synth", *SMALL, "--out", out])
    assert again.exit_code == 0 and "3 already done" in again.stderr


def test_judge_rewriter_and_clip_paths_with_tiny_models(cli, tmp_path):
    out = tmp_path / "judged"
    result = cli(["synth", *SMALL, "--out", out, "--judge", "qwen2.5-vl-tiny", "--rewriter", "qwen2.5-tiny",
                  "--clip", "random", "--keep-judge-mismatch", "--device", "cpu"])
    assert result.exit_code == 0, result
    rows = _rows(out)
    assert rows and all(r["judge_answer"] is not None and r["judge_ok"] is not None for r in rows)
    assert all(r["clip_img"] is not None and r["clip_dir"] is not None for r in rows)
    manifest = json.loads((out / "uniedit-data.json").read_text())
    assert manifest["judge"]["asked"] == 40 and manifest["judge"]["exact_ground_truth"] is True
    # a random-weight rewriter's output is garbled or leaks: every row falls back to its template
    assert sum(manifest["rewriter"]["template_fallbacks"].values()) == 40

    strict = tmp_path / "strict"
    result = cli(["synth", *SMALL, "--out", strict, "--judge", "qwen2.5-vl-tiny", "--device", "cpu"])
    assert result.exit_code == 0, result
    manifest = json.loads((strict / "uniedit-data.json").read_text())
    mismatches = manifest["rejections_per_reason"].get("judge_mismatch", 0)
    assert manifest["rows"] + mismatches == 40 and mismatches > 0
    rejected = pq.read_table(next((strict / "rejected").glob("data-*.parquet"))).to_pylist()
    assert rejected[0]["reject_reason"] == "judge_mismatch" and rejected[0]["edited_image"] is not None


def _jsonl_source(tmp_path: Path) -> Path:
    folder = tmp_path / "vqa"
    folder.mkdir()
    rows = []
    for i, (color, shape) in enumerate([("red", "ball"), ("blue", "cube"), ("green", "ball"), ("yellow", "box")]):
        img = Image.new("RGB", (48, 40), (230, 230, 230))
        ImageDraw.Draw(img).ellipse([8, 8, 30, 30], fill={"red": (220, 30, 30), "blue": (30, 30, 220),
                                                         "green": (30, 200, 30), "yellow": (230, 220, 30)}[color])
        img.save(folder / f"{i}.png")
        rows.append({"id": f"q{i}", "image": f"{i}.png", "question": f"What color is the {shape}?", "answer": color})
        rows.append({"id": f"c{i}", "image": f"{i}.png", "question": f"How many {shape}s are there?", "answer": "1"})
    rows.append({"id": "bad", "image": "missing.png", "question": "What color is it?", "answer": "red"})
    path = folder / "vqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    return path


def test_editor_path_and_instruction_only_rows_from_a_jsonl_source(cli, tmp_path, tiny_model):
    source = _jsonl_source(tmp_path)
    out = tmp_path / "edited"
    result = cli(["synth", "--vqa", "jsonl", "--vqa-path", source, "--editor", str(tiny_model("ip2p-tiny")),
                  "--out", out, "--holdout", "0", "--device", "cpu"])
    assert result.exit_code == 0, result
    rows = _rows(out)
    assert rows and all(r["edited_image"] is not None and r["editor"] for r in rows)
    manifest = json.loads((out / "uniedit-data.json").read_text())
    reasons = manifest["rejections_per_reason"]
    assert reasons.get("malformed_json") == 1 and reasons.get("missing_image") == 1
    plan_rejections = (out / "rejected" / "plan.jsonl").read_text()
    assert "malformed_json" in plan_rejections

    bare = tmp_path / "bare"
    result = cli(["synth", "--vqa", "jsonl", "--vqa-path", source, "--editor", "none", "--out", bare, "--holdout", "0"])
    assert result.exit_code == 0, result
    rows = _rows(bare)
    assert rows and all(r["edited_image"] is None and r["editor"] == "none" for r in rows)
    # the manifest says so, for train to refuse the folder by name rather than by its empty rows
    assert json.loads((bare / "uniedit-data.json").read_text())["has_targets"] is False


def test_bad_input_is_a_clear_error_before_any_work(cli, tmp_path):
    def err(args, *needles):
        result = cli(["synth", *args, "--out", tmp_path / "o"])
        assert result.exit_code == 2, result
        assert "Traceback" not in result.output
        for needle in needles:
            assert needle in result.stderr, result.stderr

    err(["--vqa", "gqa", "--vqa-path", tmp_path / "nope", "--editor", "none"], "does not exist")
    err(["--vqa", "gqa", "--vqa-path", tmp_path], "--editor")
    err(["--vqa", "nosuch"], "nosuch")
    err(["--judge", "instruct-pix2pix"], "--judge", "cannot ask")
    err(["--editor", "qwen2.5-vl-tiny", "--vqa", "jsonl", "--vqa-path", tmp_path / "x.jsonl"], "cannot edit")
    err(["--styles", "poetic"], "unknown style")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_two_ranks_write_the_same_dataset_as_one(tmp_path):
    args = ["synth", *SMALL, "--judge", "qwen2.5-vl-tiny", "--keep-judge-mismatch", "--device", "cpu"]
    env = {**{k: v for k, v in os.environ.items() if k != "UNIEDIT_LAUNCHED"}, "OMP_NUM_THREADS": "1"}
    for name, extra in (("one", []), ("two", ["--num-processes", "2"])):
        result = subprocess.run([sys.executable, "-m", "uniedit_cli", *args, *extra, "--out", str(tmp_path / name)],
                                env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["id"] for r in one] == [r["id"] for r in two]
    assert [r["judge_answer"] for r in one] == [r["judge_answer"] for r in two]
    assert json.loads((tmp_path / "two" / "uniedit-data.json").read_text())["rows"] == 40


def test_only_the_writing_rank_records_the_run_arguments(tmp_path):
    """Rank 0 sweeps stale temporaries right after the check; a second rank writing the same
    file then lost its temporary mid-rename (FileNotFoundError in a CI run)."""
    from uniedit_cli.synth.pipeline import SynthConfig
    from uniedit_cli.synth.pipeline import _check_resumable

    config = SynthConfig(out=str(tmp_path)).resolved()
    _check_resumable(tmp_path, config, 10, write=False)
    assert not (tmp_path / ".synth-run.json").exists()
    _check_resumable(tmp_path, config, 10)
    assert (tmp_path / ".synth-run.json").exists()
    _check_resumable(tmp_path, config, 10, write=False)  # the other ranks read it and agree


def test_model_classifier_path_and_reply_parsing(cli, tmp_path):
    from uniedit_cli.synth.classify import parse_category

    assert parse_category("Color") == "color" and parse_category(" yes/no.") == "yes_no"
    assert parse_category("Multiple-choice") == "multi_choice" and parse_category("banana bread") is None
    out = tmp_path / "classified"
    result = cli(["synth", *SMALL, "--out", out, "--classifier", "qwen2.5-tiny", "--device", "cpu"])
    assert result.exit_code == 0, result
    manifest = json.loads((out / "uniedit-data.json").read_text())
    assert manifest["classifier"]["model"] == "qwen2.5-tiny"
    # a random-weight LLM rarely names a category: those records fall back to the rules, counted
    assert manifest["classifier"]["classified"] >= manifest["records_read"]
    assert 0 < manifest["classifier"]["rule_fallbacks"] <= manifest["classifier"]["classified"]
    assert manifest["rows"] == 40
    assert cli(["synth", *SMALL, "--out", tmp_path / "x", "--classifier", "instruct-pix2pix"]).exit_code == 2


def _no_planning(monkeypatch):
    """Checks must come before the plan: planning anything is a test failure."""
    from uniedit_cli.synth import pipeline

    def plan(*args, **kwargs):
        raise AssertionError("planning started before the arguments were checked")

    monkeypatch.setattr(pipeline, "plan", plan)


def test_an_out_that_cannot_be_written_is_refused_before_any_work(cli, tmp_path, monkeypatch):
    _no_planning(monkeypatch)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    result = cli(["synth", "--num-rows", "5", "--out", a_file])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"--out {str(a_file)!r} is a file, not a folder" in result.stderr
    assert a_file.read_text() == "x"

    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    result = cli(["synth", "--num-rows", "5", "--out", tmp_path / "ro"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot be written (Read-only file system)" in result.stderr


def test_clip_takes_what_its_help_says_and_is_checked_up_front(cli, tmp_path, monkeypatch):
    from uniedit_cli.eval.metrics import encoders

    help_text = " ".join(cli(["synth", "--help"]).stdout.split())
    assert "vit-b-32" in help_text and "random" in help_text and "open_clip model" not in help_text
    _no_planning(monkeypatch)
    out = tmp_path / "o"

    result = cli(["synth", "--num-rows", "5", "--clip", "ViT-L-14", "--out", out])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--clip 'ViT-L-14'" in result.stderr and "vit-b-32" in result.stderr and "random" in result.stderr
    assert "--clip-weights" not in result.stderr

    # the OpenAI weights neither cached nor downloadable: the fix names --clip, not eval's --clip-weights
    monkeypatch.setattr(encoders, "_find_clip_weights", lambda: None)
    monkeypatch.setattr(encoders, "_hub_download", lambda repo, names: None)
    result = cli(["synth", "--num-rows", "5", "--clip", "ViT-B-32", "--out", out])
    assert result.exit_code == 2 and "not on this machine" in result.stderr
    assert "pass a local checkpoint file to --clip" in result.stderr and "--clip-weights" not in result.stderr

    empty = tmp_path / "weights"
    empty.mkdir()
    result = cli(["synth", "--num-rows", "5", "--clip", empty, "--out", out])
    assert result.exit_code == 2 and "no single checkpoint" in result.stderr and "to --clip." in result.stderr
    assert not out.exists()

    # a file that is no CLIP checkpoint fails when the scorer loads it, still naming --clip
    from uniedit_cli.errors import UsageError
    from uniedit_cli.synth.verify import ClipScorer

    import torch
    from safetensors.torch import save_file

    bad = tmp_path / "other.safetensors"
    save_file({"foo": torch.zeros(2)}, str(bad))
    with pytest.raises(UsageError) as err:
        ClipScorer(str(bad), device="cpu")
    assert "is not a CLIP ViT-B/32 checkpoint" in str(err.value)
    assert "Pass the right file to --clip." in str(err.value) and "--clip-weights" not in str(err.value)


def test_options_without_effect_are_noted_and_out_of_range_ones_refused(cli, tmp_path):
    result = cli(["synth", "--num-rows", "5", "--min-quality", "9", "--out", tmp_path / "a"])
    assert result.exit_code == 2 and "--min-quality" in result.output and not (tmp_path / "a").exists()
    result = cli(["synth", "--num-rows", "5", "--min-clip-dir", "1.5", "--out", tmp_path / "a"])
    assert result.exit_code == 2 and "--min-clip-dir" in result.output

    result = cli(["synth", "--num-rows", "5", "--size", "64", "--min-quality", "3", "--min-clip-dir", "0.9",
                  "--min-clip-img", "0", "--out", tmp_path / "b"])
    assert result.exit_code == 0, result
    assert "note: --min-quality has no effect without --judge" in result.stderr
    assert "note: --min-clip-dir and --min-clip-img have no effect without --clip" in result.stderr
    assert json.loads((tmp_path / "b" / "uniedit-data.json").read_text())["rows"] == 5

    from uniedit_cli.synth.pipeline import SynthConfig, ignored_options

    assert ignored_options(SynthConfig(judge="j", clip="random", min_quality=3, min_clip_dir=0.2)) == []
    assert ignored_options(SynthConfig(require_judge_ok=False)) == [
        "--keep-judge-mismatch has no effect without --judge (nothing is re-asked); ignored."]
    assert ignored_options(SynthConfig(vqa="jsonl", editor="none", judge="j", min_clip_dir=0.0)) == [
        "--judge, --min-clip-dir have no effect with --editor none (no target images to check); ignored."]


def test_every_source_refuses_an_unknown_vqa_option_the_same_way(cli, tmp_path, monkeypatch):
    _no_planning(monkeypatch)
    source = _jsonl_source(tmp_path)
    result = cli(["synth", "--num-rows", "5", "--vqa-option", "foo=bar", "--out", tmp_path / "o"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--vqa shapes has no option 'foo'" in result.stderr and "takes no --vqa-option" in result.stderr
    result = cli(["synth", "--vqa", "jsonl", "--vqa-path", source, "--editor", "none", "--vqa-option", "foo=bar",
                  "--out", tmp_path / "o"])
    assert result.exit_code == 2
    assert "--vqa jsonl has no option 'foo'" in result.stderr and "Options of jsonl: limit, image_root" in result.stderr
    assert not (tmp_path / "o").exists()


def test_an_unknown_source_is_reported_before_what_a_source_needs(cli, tmp_path):
    result = cli(["synth", "--vqa", "foo", "--out", tmp_path / "o"])
    assert result.exit_code == 2
    assert "unknown VQA source 'foo'" in result.stderr and "--editor" not in result.stderr
    assert "Known sources: shapes, gqa, vqav2, clevr, jsonl" in result.stderr


def test_each_split_names_as_many_shards_as_it_holds(cli, tmp_path):
    """A chunk with no held-out row writes no test shard: test/ used to say -of-00005 with 4
    files there. Every split's names now count its own files."""
    out = tmp_path / "data"
    args = ["synth", "--num-rows", "40", "--chunk-size", "8", "--size", "64", "--holdout", "0.3", "--out", out]
    assert cli(args).exit_code == 0
    manifest = json.loads((out / "uniedit-data.json").read_text())
    by_split = {split: sorted(p.name for p in (out / split).glob("data-*.parquet")) for split in ("train", "test")}
    assert len(by_split["test"]) < len(by_split["train"]) == 5, "the seed gives a chunk with no test row"
    for split, names in by_split.items():
        assert names == [f"data-{j:05d}-of-{len(names):05d}.parquet" for j in range(len(names))], split
    assert manifest["shards"] == [f"{split}/{name}" for split in ("train", "test") for name in by_split[split]]
    assert sum(len(_rows(out, split)) for split in ("train", "test")) == manifest["rows"] == 40
    again = cli(args)  # a finished run resumes to the same files
    assert again.exit_code == 0 and "5 already done" in again.stderr
    assert {split: sorted(p.name for p in (out / split).glob("data-*.parquet")) for split in by_split} == by_split


def test_renumbering_killed_half_way_finishes_on_the_rerun(tmp_path):
    from uniedit_cli.synth import writer

    for k in (1, 3, 4):
        (tmp_path / writer.shard_name(k, 6)).write_text(str(k))
    first = writer.renumber_shards(tmp_path, 6)
    assert [p.name for p in first] == [writer.shard_name(j, 3) for j in range(3)]
    assert [p.read_text() for p in first] == ["1", "3", "4"]
    # as if killed after one rename: one renamed file, two still named by chunk
    for k in (1, 3, 4):
        (tmp_path / writer.shard_name(k, 6)).write_text(str(k))
    for p in first:
        p.unlink()
    (tmp_path / writer.shard_name(1, 6)).rename(tmp_path / writer.shard_name(0, 3))
    again = writer.renumber_shards(tmp_path, 6)
    assert [p.read_text() for p in again] == ["1", "3", "4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [writer.shard_name(j, 3) for j in range(3)]
    assert writer.renumber_shards(tmp_path / "absent", 6) == []
