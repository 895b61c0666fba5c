"""CLI behaviour that needs no model: help, version, the registry table, and bad input."""

from __future__ import annotations

import json

import pytest

from uniedit_cli import __version__


def test_version_and_help(cli):
    result = cli(["--version"])
    assert result.exit_code == 0 and __version__ in result.stdout
    result = cli(["--help"])
    assert result.exit_code == 0
    for command in ("models", "edit", "generate", "ask", "synth", "train", "eval"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["models", "edit", "generate", "ask", "synth", "train", "eval"])
def test_every_command_help_shows_examples(cli, command):
    result = cli([command, "--help"])
    assert result.exit_code == 0
    assert "Examples" in result.stdout and f"uniedit {command}" in result.stdout


def test_models_table_and_json(cli):
    result = cli(["models"])
    assert result.exit_code == 0
    for name in ("janus-pro-1b", "instruct-pix2pix", "flux-kontext", "qwen2.5-vl-7b", "janus-tiny"):
        assert name in result.stdout
    rows = json.loads(cli(["models", "--json", "--can", "ask"]).stdout)
    assert rows and all("ask" in row["capabilities"] for row in rows)
    assert {"name", "family", "source", "capabilities", "weights"} <= set(rows[0])
    assert {row["weights"] for row in rows} <= {"cached", "local", "builds locally", "not downloaded"}


def _assert_clean_error(result, code: int, *needles: str):
    assert result.exit_code == code, result
    assert "Traceback" not in result.output
    assert "error:" in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_unknown_model_exits_2_with_close_names(cli, sample_image):
    _assert_clean_error(cli(["edit", sample_image, "x", "--model", "instruct-pix2pixx"]), 2, "instruct-pix2pix")


def test_missing_capability_exits_2(cli, sample_image):
    _assert_clean_error(cli(["ask", sample_image, "what?", "--model", "instruct-pix2pix"]), 2, "cannot ask", "qwen2.5-vl-7b")
    _assert_clean_error(cli(["generate", "a cat", "--model", "qwen2.5-vl-7b"]), 2, "cannot generate")


def test_bad_inputs_exit_2_before_any_model_loads(cli, tmp_path):
    # a hub model that is not on this machine: these errors must come before any loading
    model = ["--model", "instruct-pix2pix"]
    _assert_clean_error(cli(["edit", tmp_path / "missing.png", "x", *model]), 2, "no such file")
    (tmp_path / "note.png").write_text("hello")
    _assert_clean_error(cli(["edit", tmp_path / "note.png", "x", *model]), 2, "not an image")
    from PIL import Image

    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:60])
    _assert_clean_error(cli(["edit", tmp_path / "cut.png", "x", *model]), 2, "truncated or corrupt")
    _assert_clean_error(cli(["edit", tmp_path / "ok.png", "   ", *model]), 2, "instruction is empty")
    _assert_clean_error(cli(["edit", *model]), 2, "missing IMAGE")
    _assert_clean_error(cli(["edit", tmp_path / "ok.png", "x", *model, "--out", tmp_path / "o.jpg"]), 2, ".png")
    _assert_clean_error(cli(["generate", " ", "--model", "janus-pro-1b"]), 2, "prompt is empty")
    _assert_clean_error(cli(["edit", *model, "--batch", tmp_path / "nope.jsonl"]), 2, "no such file")
    (tmp_path / "empty.jsonl").write_text("\n")
    _assert_clean_error(cli(["edit", *model, "--batch", tmp_path / "empty.jsonl"]), 2, "no rows")


def test_decompression_bomb_is_a_clean_error(cli, tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (200, 200)).save(tmp_path / "big.png")
    monkeypatch.setenv("UNIEDIT_MAX_IMAGE_PIXELS", "1000")
    _assert_clean_error(cli(["edit", tmp_path / "big.png", "x", "--model", "instruct-pix2pix"]), 2, "too large")


def test_missing_weights_offline_names_hub_id_and_folder_flag(cli, sample_image, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    result = cli(["edit", sample_image, "make it red", "--model", "instruct-pix2pix", "--out", tmp_path / "o.png"])
    _assert_clean_error(result, 2, "timbrooks/instruct-pix2pix", "--model <folder>")


def test_flags_a_family_does_not_use_are_reported_not_recorded(cli, tmp_path):
    out = tmp_path / "gen"
    result = cli(["generate", "a red cube", "--model", "janus-tiny", "--steps", "3", "--out", out, "--device", "cpu"])
    assert result.exit_code == 0, result
    assert "--steps has no effect on janus" in result.stderr
    sidecar = json.loads(next(out.glob("*.json")).read_text())
    assert "steps" not in sidecar["parameters"] and sidecar["parameters"]["guidance"] == 5.0
