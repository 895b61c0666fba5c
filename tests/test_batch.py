"""Batch mode and the launcher, end to end through the CLI on a tiny InstructPix2Pix.

The tiny model is a real diffusers checkpoint (random weights, a tokenizer trained on the
fly) saved to disk and loaded through ``--model <folder>`` like any downloaded one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FAST = ["--steps", "2", "--size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def ip2p(tiny_model) -> Path:
    return tiny_model("ip2p-tiny")


def _images(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = {}
    rgba = np.zeros((40, 30, 4), dtype=np.uint8)
    rgba[..., 1] = 200
    rgba[:20, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.new("L", (36, 36), 120).save(folder / "gray.png")
    Image.fromarray(np.full((20, 28), 40000, dtype=np.uint16)).save(folder / "g16.png")
    Image.new("RGB", (50, 30), (10, 120, 250)).save(folder / "wide.png")
    (folder / "text.png").write_text("not an image")
    data = (folder / "wide.png").read_bytes()
    (folder / "cut.png").write_bytes(data[:50])
    for name in ("rgba", "gray", "g16", "wide", "text", "cut"):
        paths[name] = folder / f"{name}.png"
    return paths


def _write_batch(path: Path, rows: list) -> Path:
    with open(path, "w") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def test_single_edit_writes_png_and_complete_sidecar_and_seed_reproduces(cli, ip2p, sample_image, tmp_path):
    out = tmp_path / "a.png"
    result = cli(["edit", sample_image, "make the ball red", "--model", ip2p, "--out", out, "--seed", "7", *FAST])
    assert result.exit_code == 0, result
    img = Image.open(out)
    assert img.mode == "RGB" and img.size == (32, 24)  # long side 32, aspect kept, multiples of 8
    sidecar = json.loads(out.with_suffix(".json").read_text())
    for key in ("model", "family", "device", "dtype", "seed", "parameters", "timings", "instruction", "image", "size"):
        assert key in sidecar, key
    assert sidecar["seed"] == 7 and sidecar["family"] == "ip2p" and sidecar["parameters"]["steps"] == 2
    assert sidecar["size"] == [32, 24]
    again = tmp_path / "b.png"
    assert cli(["edit", sample_image, "make the ball red", "--model", ip2p, "--out", again, "--seed", "7", *FAST]).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    other = tmp_path / "c.png"
    assert cli(["edit", sample_image, "make the ball red", "--model", ip2p, "--out", other, "--seed", "8", *FAST]).exit_code == 0
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(other)))


def test_odd_input_modes_are_converted(cli, ip2p, tmp_path):
    images = _images(tmp_path)
    for name in ("rgba", "gray", "g16"):
        out = tmp_path / f"{name}-out.png"
        result = cli(["edit", images[name], "make it blue", "--model", ip2p, "--out", out, *FAST])
        assert result.exit_code == 0, result
        assert Image.open(out).mode == "RGB"


def test_batch_skips_bad_rows_and_resumes(cli, ip2p, tmp_path):
    images = _images(tmp_path)
    batch = _write_batch(tmp_path / "edits.jsonl", [
        {"id": "ok-1", "image": "imgs/wide.png", "instruction": "make it red"},
        {"id": "missing", "image": "imgs/nope.png", "instruction": "make it red"},
        "this is not json",
        {"id": "not-image", "image": str(images["text"]), "instruction": "x"},
        {"id": "truncated", "image": "imgs/cut.png", "instruction": "x"},
        {"id": "empty", "image": "imgs/wide.png", "instruction": "  "},
        {"id": "no-instruction", "image": "imgs/wide.png"},
        {"id": "ok-2", "image": "imgs/gray.png", "edit_prompt": "make it green"},
        {"id": "ok-1", "image": "imgs/wide.png", "instruction": "duplicate id"},
    ])
    out = tmp_path / "out"
    result = cli(["edit", "--batch", batch, "--model", ip2p, "--out", out, "--batch-size", "2", *FAST])
    assert result.exit_code == 0, result
    assert sorted(p.name for p in out.glob("*.png")) == ["ok-1.png", "ok-2.png"]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in results] == ["ok-1", "ok-2"]
    failed = {json.loads(line)["id"]: json.loads(line)["reason"] for line in (out / "failed.jsonl").read_text().splitlines()}
    assert set(failed) == {"missing", "000003", "not-image", "truncated", "empty", "no-instruction", "ok-1@line9"}
    reasons = " | ".join(failed.values())
    for needle in ("no such file", "malformed JSON", "not an image", "truncated", "empty instruction", "missing field", "duplicate id"):
        assert needle in reasons, needle
    assert "7 failed" in result.stderr
    index = (out / "index.html").read_text()
    assert "ok-1.png" in index and "imgs/wide.png" in index and "failed: " in index
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}

    # resume: finished rows are skipped, nothing is rewritten
    result = cli(["edit", "--batch", batch, "--model", ip2p, "--out", out, *FAST])
    assert result.exit_code == 0 and "2 already done" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == first

    # a deleted output is redone on the next run
    (out / "ok-2.png").unlink()
    result = cli(["edit", "--batch", batch, "--model", ip2p, "--out", out, *FAST])
    assert result.exit_code == 0 and (out / "ok-2.png").exists()
    assert "1 already done" in result.stderr


def test_a_killed_batch_resumes_without_loss_or_duplicates(ip2p, tmp_path):
    """kill -9 in the middle of a batch, rerun, and every row is there exactly once."""
    images = _images(tmp_path)
    rows = [{"id": f"r{i}", "image": str(images["wide"]), "instruction": f"edit number {i}"} for i in range(6)]
    batch = _write_batch(tmp_path / "edits.jsonl", rows)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "uniedit_cli", "edit", "--batch", str(batch), "--model", str(ip2p), "--out", str(out),
            "--batch-size", "1", *FAST]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / ".parts" / "rank-0.jsonl"
    import time

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done_before = len(list(out.glob("*.png")))
    assert 0 < done_before < 6, "the kill should land mid-batch"
    subprocess.run(argv, env=env, check=True, capture_output=True)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in results] == [f"r{i}" for i in range(6)]
    assert len(list(out.glob("*.png"))) == 6
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_two_cpu_processes_equal_one_process(ip2p, tmp_path):
    """A real 2-rank gloo run through `accelerate launch` gives the same files as one process."""
    images = _images(tmp_path)
    rows = [{"id": f"r{i}", "image": str(images["wide" if i % 2 else "gray"]), "instruction": f"make it color {i}"}
            for i in range(5)]
    rows.append({"id": "bad", "image": "imgs/nope.png", "instruction": "x"})
    batch = _write_batch(tmp_path / "edits.jsonl", rows)
    base = [sys.executable, "-m", "uniedit_cli", "edit", "--batch", str(batch), "--model", str(ip2p), "--batch-size", "1", *FAST]
    # one intra-op thread in both runs (the launcher gives each of 2 ranks half of 2 cores): CPU
    # reductions split over a different number of threads round differently
    env = {**{k: v for k, v in os.environ.items() if k != "UNIEDIT_LAUNCHED"}, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(base + ["--out", str(tmp_path / "one")], env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(base + ["--out", str(tmp_path / "two"), "--num-processes", "2"], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two" / ".parts" / "rank-1.jsonl").exists(), "the second rank did work"
    for i in range(5):
        a = np.asarray(Image.open(tmp_path / "one" / f"r{i}.png"))
        b = np.asarray(Image.open(tmp_path / "two" / f"r{i}.png"))
        assert np.array_equal(a, b), f"r{i} differs between 1 and 2 processes"
    ids = lambda folder: [json.loads(line)["id"] for line in (tmp_path / folder / "results.jsonl").read_text().splitlines()]
    assert ids("one") == ids("two") == [f"r{i}" for i in range(5)]
    assert "5 edited" in two.stderr and "1 failed" in two.stderr


def test_a_batch_folder_resumes_only_the_run_that_made_it(cli, ip2p, tmp_path):
    images = _images(tmp_path)
    batch = _write_batch(tmp_path / "edits.jsonl", [{"id": "a", "image": str(images["wide"]), "instruction": "x"}])
    out = tmp_path / "out"
    assert cli(["edit", "--batch", batch, "--model", ip2p, "--out", out, *FAST]).exit_code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "edit" and run["options"]["steps"] == 2
    result = cli(["edit", "--batch", batch, "--model", ip2p, "--out", out, *FAST, "--guidance", "3"])
    assert result.exit_code == 2 and "options" in result.stderr and "new --out" in result.stderr
    assert cli(["edit", "--batch", batch, "--model", ip2p, "--out", out, *FAST]).exit_code == 0


def test_an_out_that_cannot_be_written_is_refused_before_the_model_loads(cli, ip2p, sample_image, tmp_path):
    batch = _write_batch(tmp_path / "edits.jsonl", [{"id": "a", "image": str(sample_image), "instruction": "x"}])
    result = cli(["edit", "--batch", batch, "--model", ip2p, "--out", "/proc/uniedit-cannot-write", *FAST])
    assert result.exit_code == 2 and "--out '/proc/uniedit-cannot-write' cannot be written" in result.stderr
    (tmp_path / "file").write_text("x")
    result = cli(["edit", str(sample_image), "x", "--model", ip2p, "--out", tmp_path / "file" / "o.png", *FAST])
    assert result.exit_code == 2 and "is a file, not a folder" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
