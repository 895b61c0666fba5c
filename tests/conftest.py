"""Shared fixtures: an isolated UNIEDIT_HOME, tiny models built once per session, the CLI runner.

Tiny models are real checkpoints with random weights and locally trained tokenizers, built
here and saved to disk, then loaded through ``--model <folder>`` exactly as users load a
downloaded checkpoint. Nothing touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach a hub: fail fast instead of hanging on a connection.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models do tiny matmuls: a second intra-op thread only adds contention (and run-to-run
# jitter on a busy 2-core machine). Set before torch is imported anywhere in the session.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run tests marked slow (end-to-end runs; CI passes this)")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--slow"):
        skip_slow = pytest.mark.skip(reason="slow end-to-end test: run with --slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip_slow)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def uniedit_home(tmp_path_factory) -> Path:
    """Builtin tiny models get built here, not in the user's ~/.cache."""
    home = tmp_path_factory.mktemp("uniedit-home")
    old = os.environ.get("UNIEDIT_HOME")
    os.environ["UNIEDIT_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("UNIEDIT_HOME", None)
    else:
        os.environ["UNIEDIT_HOME"] = old


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """``tiny_model("ip2p-tiny")`` -> a folder holding that tiny checkpoint (built once)."""
    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tiny-models")

    def get(name: str) -> Path:
        if name not in built:
            from uniedit_cli.models.tiny import build_tiny

            built[name] = build_tiny(name, root / name)
        return built[name]

    return get


class CliResult:
    def __init__(self, exit_code: int, stdout: str, stderr: str):
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __repr__(self) -> str:
        return f"CliResult(exit_code={self.exit_code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture
def cli():
    """Run ``uniedit ARGS`` in-process; returns exit code, stdout and stderr."""
    from typer.testing import CliRunner

    from uniedit_cli.cli import app, set_invoked_argv

    runner = CliRunner()

    def run(args: list[str]) -> CliResult:
        args = [str(a) for a in args]
        set_invoked_argv(args)
        result = runner.invoke(app, args, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def sample_image(tmp_path) -> Path:
    """A small RGB PNG with some structure (not a flat color)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (48, 40), (200, 220, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle([5, 5, 20, 25], fill=(220, 30, 30))
    draw.ellipse([24, 10, 44, 30], fill=(30, 30, 220))
    path = tmp_path / "sample.png"
    img.save(path)
    return path
