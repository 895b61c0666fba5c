"""Batch rows and options that are wrong before any model runs: bad rows found before the model
loads, a batch where nothing succeeds exits 1, wrongly typed fields fail their row, and option
values the model cannot use are usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from uniedit_cli import runner

FAST = ["--steps", "2", "--size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def ip2p(tiny_model) -> Path:
    return tiny_model("ip2p-tiny")


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: the command must decide before loading."""
    import uniedit_cli.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(uniedit_cli.models, "load_model", refuse)


def _write_batch(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def _bad_images(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (40, 30), (10, 120, 250)).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:50])
    return {"text": tmp_path / "text.png", "cut": tmp_path / "cut.png", "ok": tmp_path / "ok.png"}


def _failed(out: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    return {row["id"]: row["reason"] for row in rows}


def test_a_batch_where_every_row_fails_exits_1_without_loading_the_model(cli, ip2p, tmp_path, no_model_load):
    images = _bad_images(tmp_path)
    batch = _write_batch(tmp_path / "allbad.jsonl", [
        {"id": "missing", "image": "nope.png", "instruction": "x"},
        {"id": "text", "image": str(images["text"]), "instruction": "x"},
        {"id": "cut", "image": "cut.png", "instruction": "x"},
    ])
    out = tmp_path / "allbad"
    result = cli(["edit", "--batch", batch, "--model", ip2p, "--out", out, *FAST])
    assert result.exit_code == 1, result
    assert "0 edited, 3 failed" in result.stderr and "model load 0.0 s" in result.stderr
    assert "Traceback" not in result.output
    failed = _failed(out)
    assert "no such file" in failed["missing"]
    assert "not an image" in failed["text"]
    assert "truncated or corrupt" in failed["cut"]


def test_ask_batch_where_every_row_fails_exits_1(cli, tmp_path, no_model_load):
    batch = _write_batch(tmp_path / "q.jsonl", [{"image": "nope.png", "question": "what?"}])
    result = cli(["ask", "--batch", batch, "--model", "qwen2.5-vl-tiny", "--out", tmp_path / "a", "--device", "cpu"])
    assert result.exit_code == 1, result
    assert "0 answered, 1 failed" in result.stderr


def test_partial_failure_exits_0_and_a_resumed_run_counts_done_rows_as_successes(cli, ip2p, tmp_path):
    images = _bad_images(tmp_path)
    batch = _write_batch(tmp_path / "mixed.jsonl", [
        {"id": "good", "image": str(images["ok"]), "instruction": "make it red"},
        {"id": "bad", "image": "nope.png", "instruction": "x"},
    ])
    out = tmp_path / "mixed"
    result = cli(["edit", "--batch", batch, "--model", ip2p, "--out", out, *FAST])
    assert result.exit_code == 0, result
    assert "1 edited" in result.stderr and "1 failed" in result.stderr
    # the rerun has only the bad row left to run: it fails again, the good one is done already
    result = cli(["edit", "--batch", batch, "--model", ip2p, "--out", out, *FAST])
    assert result.exit_code == 0, result
    assert "0 edited, 1 already done (skipped), 1 failed" in result.stderr
    assert "model load 0.0 s" in result.stderr  # nothing left to run: no load


def test_wrongly_typed_row_fields_fail_their_row_and_integer_seeds_are_used(cli, ip2p, sample_image, tmp_path):
    batch = _write_batch(tmp_path / "types.jsonl", [
        {"id": "str-seed", "image": str(sample_image), "instruction": "x", "seed": "7"},
        {"id": "bool-seed", "image": str(sample_image), "instruction": "x", "seed": True},
        {"id": "num-instruction", "image": str(sample_image), "instruction": 123},
        {"id": "num-image", "image": 5, "instruction": "x"},
        {"id": "null-instruction", "image": str(sample_image), "instruction": None},
        {"id": "int-seed", "image": str(sample_image), "instruction": "x", "seed": 7},
    ])
    out = tmp_path / "types"
    result = cli(["edit", "--batch", batch, "--model", ip2p, "--out", out, *FAST])
    assert result.exit_code == 0, result
    assert sorted(p.name for p in out.glob("*.png")) == ["int-seed.png"]
    assert json.loads((out / "int-seed.json").read_text())["seed"] == 7
    failed = _failed(out)
    assert failed["str-seed"] == "seed must be an integer, got '7' (a string)"
    assert failed["bool-seed"] == "seed must be an integer, got true (a boolean)"
    assert failed["num-instruction"] == "instruction must be a string, got 123 (a number)"
    assert failed["num-image"] == "image must be a string (a path), got 5 (a number)"
    assert failed["null-instruction"] == "instruction must be a string, got null (null)"
    assert "index.html" in {p.name for p in out.iterdir()}


def test_read_batch_names_the_field_and_its_type(tmp_path):
    batch = _write_batch(tmp_path / "p.jsonl", [
        {"prompt": 123}, {"prompt": "  "}, {"caption": ["a"]}, {"prompt": "ok", "seed": 1.5},
        {"prompt": "ok", "id": {"a": 1}}, {"prompt": "ok", "seed": 3, "id": 4},
    ])
    rows = runner.read_batch(batch, required=("prompt",), aliases={"prompt": ("caption",)}, int_fields=("seed",))
    assert [error for _, _, error in rows] == [
        "prompt must be a string, got 123 (a number)",
        "empty prompt",
        'prompt must be a string, got ["a"] (a list)',
        "seed must be an integer, got 1.5 (a number)",
        'id must be a string or an integer, got {"a": 1} (an object)',
        None,
    ]


@pytest.mark.parametrize("args, needle", [
    (["generate", "a cube", "--model", "janus-tiny", "--guidance", "nan"], "--guidance nan: not a finite number"),
    (["generate", "a cube", "--model", "janus-tiny", "--guidance", "inf"], "--guidance inf: not a finite number"),
    (["edit", "IMG", "x", "--model", "ip2p-tiny", "--guidance", "-inf"], "--guidance -inf: not a finite number"),
    (["edit", "IMG", "x", "--model", "ip2p-tiny", "--image-guidance", "nan"], "--image-guidance nan: not a finite number"),
    (["edit", "IMG", "x", "--model", "ip2p-tiny", "--size", "9"], "--size 9: ip2p-tiny needs a multiple of 8"),
    (["edit", "IMG", "x", "--model", "flux-kontext-tiny", "--size", "40"],
     "--size 40: flux-kontext-tiny needs a multiple of 16"),
])
def test_option_values_the_model_cannot_use_are_usage_errors_before_loading(cli, sample_image, tmp_path, no_model_load,
                                                                             args, needle):
    args = [str(sample_image) if a == "IMG" else a for a in args]
    result = cli([*args, "--out", tmp_path / "o.png", "--device", "cpu"])
    assert result.exit_code == 2, result
    assert needle in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "o.png").exists()


def test_size_error_names_the_sizes_to_use(cli, sample_image, tmp_path, no_model_load):
    result = cli(["edit", sample_image, "x", "--model", "ip2p-tiny", "--size", "9", "--out", tmp_path / "o.png"])
    assert "Pass --size 8 or --size 16." in result.stderr


def test_a_size_the_model_can_make_is_recorded_as_made(cli, ip2p, sample_image, tmp_path):
    out = tmp_path / "o.png"
    result = cli(["edit", sample_image, "x", "--model", ip2p, "--out", out, "--steps", "1", "--size", "16", "--device", "cpu"])
    assert result.exit_code == 0, result
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert Image.open(out).size == (16, 16) and sidecar["size"] == [16, 16] and sidecar["parameters"]["size"] == 16


def test_generate_batch_help_names_the_file_names_it_writes(cli):
    text = " ".join(cli(["generate", "--help"]).stdout.split())
    assert "<id>.png" in text and "<id>-<k>.png" in text and "-n N above 1" in text


@pytest.mark.slow
def test_two_processes_where_every_row_fails_exit_1(ip2p, tmp_path):
    """Both ranks see the gathered counts and exit 1; the launcher passes that on."""
    batch = _write_batch(tmp_path / "allbad.jsonl", [
        {"id": f"r{i}", "image": f"nope-{i}.png", "instruction": "x"} for i in range(3)])
    env = {**{k: v for k, v in os.environ.items() if k != "UNIEDIT_LAUNCHED"}, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "uniedit_cli", "edit", "--batch", str(batch), "--model", str(ip2p),
            "--out", str(tmp_path / "out"), "--num-processes", "2", *FAST]
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert "0 edited, 3 failed" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "out" / ".parts" / "rank-1.jsonl").exists(), "the second rank had rows"
