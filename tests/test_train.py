"""`uniedit train`: options, data, errors before training, and tiny models trained end to end.

The data is drawn here (a coloured square or disc on grey, the target in another colour) and
written with `datasets` as parquet in the layouts the trainer recognises. The models are the
tiny random-weight checkpoints of the registry (`janus-tiny`, `ip2p-tiny`), loaded by folder.
The slow tests run the CLI as users do: in this process, in subprocesses killed with SIGKILL
and resumed, and under `accelerate launch` with two CPU (gloo) ranks.
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (240, 220, 40)}
LAYOUT_COLUMNS = {
    "uniedit": ("input_image", "edit_prompt", "edited_image"),
    "magicbrush": ("source_img", "instruction", "target_img"),
    "instructpix2pix": ("original_image", "edit_prompt", "edited_image"),
    "custom": ("before", "text", "after"),
}
# one intra-op thread everywhere: CPU reductions split over other thread counts round differently
ENV_ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def scene(color: str, shape: str, size: int = 48) -> Image.Image:
    img = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    box = [size // 4, size // 4, 3 * size // 4, 3 * size // 4]
    (draw.rectangle if shape == "cube" else draw.ellipse)(box, fill=COLORS[color])
    return img


def edit_rows(n: int, size: int = 48) -> list[tuple[Image.Image, str, Image.Image]]:
    names = list(COLORS)
    rows = []
    for i in range(n):
        before, after = names[i % 4], names[(i + 1 + i // 4) % 4]
        shape = "cube" if i % 2 else "sphere"
        rows.append((scene(before, shape, size), f"If the {shape} is {before}, turn it {after}", scene(after, shape, size)))
    return rows


def write_parquet(path: Path, n: int, *, layout: str = "uniedit", corrupt: tuple[int, ...] = (), size: int = 48,
                  empty_prompt: tuple[int, ...] = ()) -> Path:
    """n rows in ``layout``'s column names; ``corrupt`` rows get undecodable target image bytes."""
    import io

    import datasets

    image_col, text_col, target_col = LAYOUT_COLUMNS[layout]
    columns: dict[str, list] = {image_col: [], text_col: [], target_col: [], "id": []}
    for i, (source, prompt, target) in enumerate(edit_rows(n, size)):
        buffer = io.BytesIO()
        target.save(buffer, format="PNG")
        data = buffer.getvalue()
        if i in corrupt:
            data = data[:40]  # a truncated PNG
        columns[image_col].append(source)
        columns[text_col].append("" if i in empty_prompt else prompt)
        columns[target_col].append({"bytes": data, "path": None})
        columns["id"].append(f"row{i}")
    features = datasets.Features({image_col: datasets.Image(), text_col: datasets.Value("string"),
                                  target_col: datasets.Image(), "id": datasets.Value("string")})
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))
    return path


def synth_folder(folder: Path, n: int = 20, **kwargs) -> Path:
    """The layout `uniedit synth` writes: train/ and test/ parquet shards, rejected/, uniedit-data.json."""
    write_parquet(folder / "train" / "data-00000-of-00001.parquet", n, **kwargs)
    write_parquet(folder / "test" / "data-00000-of-00001.parquet", 3)
    write_parquet(folder / "rejected" / "data-00000-of-00001.parquet", 2)
    (folder / "uniedit-data.json").write_text(json.dumps({"rows": n}))
    return folder


@pytest.fixture(scope="module")
def data20(tmp_path_factory) -> Path:
    """Training data for the end-to-end runs: a real `uniedit synth` output (the built-in scene
    world, no models), or, where this checkout has no synth command, the same layout drawn here."""
    from typer.testing import CliRunner

    from uniedit_cli.cli import app, set_invoked_argv

    out = tmp_path_factory.mktemp("edit-data") / "synth"
    if "synth" not in {command.name for command in app.registered_commands}:
        return synth_folder(out, 20)
    args = ["synth", "--num-rows", "32", "--out", str(out), "--seed", "0"]
    set_invoked_argv(args)
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "uniedit-data.json").exists() and list((out / "train").glob("*.parquet"))
    return out


@pytest.fixture(scope="module")
def janus(tiny_model) -> Path:
    return tiny_model("janus-tiny")


@pytest.fixture(scope="module")
def ip2p(tiny_model) -> Path:
    return tiny_model("ip2p-tiny")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[float]:
    return [m["loss"] for m in metrics(run_dir) if "loss" in m]


QUICK = ["--device", "cpu", "--val-size", "2", "--save-every", "0", "--val-every", "0", "--log-every", "1"]


# --- configs ---------------------------------------------------------------------------------

def test_every_shipped_train_config_loads_and_shows_its_command():
    from uniedit_cli import registry
    from uniedit_cli.train.config import load_config, resolve

    configs = sorted((REPO / "examples" / "train").glob("*.yaml"))
    assert {p.name for p in configs} >= {"janus-pro-7b-uniedit.yaml", "janus-pro-1b-uniedit.yaml",
                                         "instruct-pix2pix-uniedit.yaml", "janus-tiny.yaml"}
    for path in configs:
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        assert any("uniedit train --config examples/train/" + path.name in line for line in header), path.name
        config = load_config(path)
        family = registry.resolve(config.model, config.family).family
        resolve(config, family)
        assert config.data.path and config.optim.lr > 0, path.name
        accelerate = config.launch.accelerate_config
        if accelerate:
            assert (REPO / accelerate).is_file(), f"{path.name} names a missing accelerate config"


def test_every_shipped_accelerate_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = {p.name: p for p in (REPO / "examples" / "accelerate").glob("*.yaml")}
    assert {"ddp.yaml", "fsdp.yaml", "deepspeed-zero2.yaml", "deepspeed-zero3.yaml"} <= set(configs)
    kinds = {}
    for name, path in configs.items():
        assert any("uniedit " in line for line in path.read_text().splitlines() if line.startswith("#")), name
        kinds[name] = str(load_config_from_file(str(path)).distributed_type)
    assert "FSDP" in kinds["fsdp.yaml"] and "DEEPSPEED" in kinds["deepspeed-zero3.yaml"]


def test_yaml_then_flags_and_the_saved_config_round_trips(tmp_path):
    from uniedit_cli.train.config import dump_yaml, load_config, resolve

    path = tmp_path / "c.yaml"
    # YAML 1.1 reads 2e-5 as a string: numbers are parsed
    path.write_text("model: janus-tiny\ndata:\n  path: somewhere\noptim:\n  lr: 2e-5\n  batch_size: 2\n"
                    "tune:\n  freeze: [vision, language]\n")
    config = resolve(load_config(path, {"batch_size": 8, "max_steps": 3}), "janus")
    assert config.optim.lr == 2e-5 and config.optim.batch_size == 8 and config.optim.max_steps == 3
    assert config.tune.freeze == ["language", "vision"]
    saved = tmp_path / "saved.yaml"
    saved.write_text(dump_yaml(config, command=["train", "--config", str(path)], derived={"world_size": 1}))
    assert load_config(saved).to_dict() == config.to_dict()
    # the family default fills what neither gave: Uni-Edit's 2e-5 with the ViT frozen
    default = resolve(load_config(None, {"model": "janus-tiny", "path": "x"}), "janus")
    assert default.optim.lr == 2e-5 and default.tune.freeze == ["vision"]
    assert resolve(load_config(None, {"model": "ip2p-tiny", "path": "x"}), "ip2p").tune.freeze == ["text"]


@pytest.mark.parametrize("text, needle", [
    ("optim:\n  learning_rate: 1\n", "optim.lr"),  # unknown key, with the close one
    ("optim:\n  lr: fast\n", "must be a number"),
    ("data:\n  crop: diagonal\n", "center, random, resize"),
    ("optim:\n  batch_size: 0\n", "at least 1"),
    ("- a list\n", "mapping"),
])
def test_bad_yaml_values_are_usage_errors(tmp_path, text, needle):
    from uniedit_cli.errors import UsageError
    from uniedit_cli.train.config import load_config

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_config(path)
    assert needle in str(info.value)


def test_freeze_names_are_checked_per_family():
    from uniedit_cli.errors import UsageError
    from uniedit_cli.train.config import load_config, resolve

    with pytest.raises(UsageError, match="vision, language, generation"):
        resolve(load_config(None, {"model": "janus-tiny", "path": "x", "freeze": ["unet"]}), "janus")
    with pytest.raises(UsageError, match="nothing to train"):
        resolve(load_config(None, {"model": "ip2p-tiny", "path": "x", "freeze": ["unet,text"]}), "ip2p")


def test_help_lists_the_options_without_importing_torch():
    code = ("import sys; from uniedit_cli.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['train', '--help']); print(r.output); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    for flag in ("--resume", "--lora", "--freeze", "--precision", "--grad-accum", "--gradient-checkpointing", "--ema",
                 "--schedule", "--warmup-steps", "--max-steps", "--epochs", "--save-every", "--checkpoint-limit",
                 "--report-to", "--val-every", "--image-column", "--instruction-column", "--target-column",
                 "--resolution", "--crop", "--num-processes", "--accelerate-config", "--config"):
        assert flag in out.stdout, flag
    assert out.stdout.strip().endswith("NO-TORCH")


# --- data ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["uniedit", "magicbrush", "instructpix2pix"])
def test_known_layouts_are_recognised(tmp_path, layout):
    from uniedit_cli.train.config import DataOptions
    from uniedit_cli.train.data import load_edit_data

    write_parquet(tmp_path / "d" / "train-00000.parquet", 6, layout=layout)
    data = load_edit_data(DataOptions(path=str(tmp_path / "d"), val_size=2), seed=0)
    assert data.columns.layout == layout and data.columns.as_list() == list(LAYOUT_COLUMNS[layout])
    assert len(data.train) == 4 and len(data.val) == 2 and "held out" in data.val_from


def test_a_dev_split_is_the_validation_set_and_flags_map_columns(tmp_path):
    from uniedit_cli.train.config import DataOptions
    from uniedit_cli.train.data import load_edit_data

    # a hub snapshot's layout: data/train-*.parquet and data/dev-*.parquet (MagicBrush ships train and dev)
    write_parquet(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet", 6, layout="custom")
    write_parquet(tmp_path / "hub" / "data" / "dev-00000-of-00001.parquet", 3, layout="custom")
    options = DataOptions(path=str(tmp_path / "hub"), image_column="before", instruction_column="text",
                          target_column="after", val_size=2)
    data = load_edit_data(options, seed=0)
    assert data.columns.layout == "custom" and len(data.train) == 6 and len(data.val) == 2
    assert data.val_from == "split 'dev'"


def test_a_synth_folder_trains_on_train_and_leaves_test_and_rejected_alone(tmp_path):
    from uniedit_cli.train.config import DataOptions
    from uniedit_cli.train.data import load_edit_data

    folder = synth_folder(tmp_path / "synth", 12)
    data = load_edit_data(DataOptions(path=str(folder), val_size=2), seed=0)
    # test/ is uniedit-bench (for `uniedit eval`), rejected/ holds dropped rows: neither is used
    assert len(data.train) == 10 and len(data.val) == 2 and data.val_from == "held out from 'train'"
    again = load_edit_data(DataOptions(path=str(folder), val_size=2), seed=0)
    assert again.val["edit_prompt"] == data.val["edit_prompt"], "the held-out rows depend only on the seed"


def test_jsonl_with_image_paths_and_a_saved_dataset(tmp_path):
    import datasets

    from uniedit_cli.errors import UsageError
    from uniedit_cli.train.config import DataOptions
    from uniedit_cli.train.data import EditRows, load_edit_data

    folder = tmp_path / "files"
    folder.mkdir()
    lines = []
    for i, (source, prompt, target) in enumerate(edit_rows(4)):
        source.save(folder / f"s{i}.png")
        target.save(folder / f"t{i}.png")
        lines.append(json.dumps({"input_image": f"s{i}.png", "edit_prompt": prompt, "edited_image": f"t{i}.png"}))
    lines.insert(2, '{"input_image": "s9.png", "edit_prompt": "cut off')  # a torn line among good ones
    (folder / "edits.jsonl").write_text("\n".join(lines) + "\n")
    data = load_edit_data(DataOptions(path=str(folder / "edits.jsonl"), val_size=0), seed=0)
    assert len(data.train) == 4
    assert data.notes == ["skipped 1 unreadable line(s) of edits.jsonl (line 3: malformed JSON "
                          "(Unterminated string starting at column 42))"]
    rows = EditRows(data.train, data.columns, base_dir=data.base_dir, resolution=32, crop="center",
                    random_flip=False, seed=0)
    row = rows[1]
    assert row["source"].size == (32, 32) and row["instruction"].startswith("If the cube")

    (folder / "empty.jsonl").write_text("\n")
    with pytest.raises(UsageError, match="has no rows: nothing to train on"):
        load_edit_data(DataOptions(path=str(folder / "empty.jsonl"), val_size=0), seed=0)

    saved = tmp_path / "saved"
    datasets.Dataset.from_parquet(str(write_parquet(tmp_path / "p.parquet", 5))).save_to_disk(str(saved))
    assert len(load_edit_data(DataOptions(path=str(saved), val_size=1), seed=0).train) == 4


def test_undecodable_images_and_empty_instructions_are_skipped_and_counted(tmp_path):
    from uniedit_cli.train.config import DataOptions
    from uniedit_cli.train.data import EditRows, load_edit_data, skipped_rows

    write_parquet(tmp_path / "d.parquet", 6, corrupt=(2,), empty_prompt=(4,))
    data = load_edit_data(DataOptions(path=str(tmp_path / "d.parquet"), val_size=0), seed=0)
    log = tmp_path / "skipped.jsonl"
    rows = EditRows(data.train, data.columns, base_dir=data.base_dir, resolution=32, crop="random",
                    random_flip=True, seed=0, skip_log=log)
    served = [rows[i] for i in range(len(rows))]
    assert all(r["source"].size == (32, 32) and r["instruction"] for r in served)
    # a bad row is replaced by the next good one, under its own index and seed
    assert served[2]["instruction"] == served[3]["instruction"] and served[2]["row_seed"] != served[3]["row_seed"]
    assert set(skipped_rows(log)) == {2, 4}
    assert "decode" in skipped_rows(log)[2] and "empty instruction" in skipped_rows(log)[4]


def test_crops_and_flips_are_a_function_of_seed_epoch_and_row(tmp_path):
    import numpy as np

    from uniedit_cli.train.config import DataOptions
    from uniedit_cli.train.data import EditRows, load_edit_data

    write_parquet(tmp_path / "d.parquet", 4, size=64)
    data = load_edit_data(DataOptions(path=str(tmp_path / "d.parquet"), val_size=0), seed=0)

    def served(epoch: int, index: int):
        rows = EditRows(data.train, data.columns, base_dir=None, resolution=40, crop="random", random_flip=True, seed=3)
        rows.set_epoch(epoch)
        row = rows[index]
        return np.asarray(row["source"]), np.asarray(row["target"]), row["row_seed"]

    a, b = served(0, 1), served(0, 1)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    assert served(1, 1)[2] != a[2]


def test_row_random_gives_each_row_its_own_stream():
    from uniedit_cli.train.objectives import RowRandom

    alone = RowRandom([11])
    first = [alone.random(), alone.random()]
    together = RowRandom([7, 11, 9])
    draws = [together.random() for _ in range(6)]
    assert draws[1] == first[0] and draws[4] == first[1]  # row 1's draws, whatever shares its batch


# --- errors before training --------------------------------------------------------------------

def test_missing_column_names_the_column_and_the_flag(cli, janus, tmp_path):
    write_parquet(tmp_path / "d" / "train.parquet", 6, layout="custom")
    result = cli(["train", "--model", janus, "--data", tmp_path / "d", "--out", tmp_path / "run", *QUICK])
    assert result.exit_code == 2, result
    assert "no source-image column 'input_image'" in result.stderr and "--image-column" in result.stderr
    result = cli(["train", "--model", janus, "--data", tmp_path / "d", "--out", tmp_path / "run", "--image-column",
                  "before", "--target-column", "after", *QUICK])
    assert result.exit_code == 2 and "--instruction-column" in result.stderr, result
    assert "Traceback" not in result.output


def test_empty_and_too_small_datasets_are_errors(cli, ip2p, tmp_path):
    import datasets

    empty = tmp_path / "empty.parquet"
    datasets.Dataset.from_dict({"input_image": [], "edit_prompt": [], "edited_image": []},
                               features=datasets.Features({"input_image": datasets.Image(),
                                                           "edit_prompt": datasets.Value("string"),
                                                           "edited_image": datasets.Image()})).to_parquet(str(empty))
    result = cli(["train", "--model", ip2p, "--data", empty, "--out", tmp_path / "r1", *QUICK])
    assert result.exit_code == 2 and "no rows" in result.stderr, result
    write_parquet(tmp_path / "three.parquet", 3)
    result = cli(["train", "--model", ip2p, "--data", tmp_path / "three.parquet", "--out", tmp_path / "r2", *QUICK,
                  "--batch-size", "4"])
    assert result.exit_code == 2 and "fewer than one optimizer step" in result.stderr, result
    assert not (tmp_path / "r2" / "final").exists()


def test_a_resolution_the_model_cannot_take_is_an_error(cli, janus, ip2p, data20, tmp_path):
    result = cli(["train", "--model", ip2p, "--data", data20, "--out", tmp_path / "a", *QUICK, "--resolution", "33"])
    assert result.exit_code == 2 and "multiple of 2" in result.stderr, result
    result = cli(["train", "--model", janus, "--data", data20, "--out", tmp_path / "b", *QUICK, "--resolution", "64"])
    assert result.exit_code == 2 and "32x32" in result.stderr, result


def test_a_fresh_run_never_overwrites_a_finished_one_and_a_longer_one_resumes(cli, ip2p, data20, tmp_path):
    out = tmp_path / "run"
    common = ["train", "--model", ip2p, "--data", data20, "--out", out, *QUICK, "--save-every", "500"]
    assert cli([*common, "--max-steps", "2"]).exit_code == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # the last step is saved too
    again = cli([*common, "--max-steps", "2"])
    assert again.exit_code == 2 and "--resume latest" in again.stderr, again
    finished = cli([*common, "--max-steps", "2", "--resume", "latest"])
    assert finished.exit_code == 0 and "already finished" in finished.stderr, finished
    assert "raise --max-steps to train further" in finished.stderr
    changed = cli([*common, "--max-steps", "3", "--resume", "latest", "--lr", "0.5"])
    assert changed.exit_code == 2 and "optim.lr" in changed.stderr, changed
    longer = cli([*common, "--max-steps", "3", "--resume", "latest"])
    assert longer.exit_code == 0 and "resuming from" in longer.stderr and "checkpoint-2" in longer.stderr, longer
    assert [m["step"] for m in metrics(out) if "loss" in m] == [1, 2, 3]  # step 3 only was trained again
    assert json.loads((out / "final" / "uniedit.json").read_text())["training"]["steps"] == 3


def test_a_run_without_checkpoints_says_how_to_train_its_weights_further(cli, ip2p, data20, tmp_path):
    out = tmp_path / "run"
    common = ["train", "--model", ip2p, "--data", data20, "--out", out, *QUICK, "--save-every", "0"]
    assert cli([*common, "--max-steps", "2"]).exit_code == 0
    finished = cli([*common, "--max-steps", "2", "--resume", "latest"])
    assert finished.exit_code == 0 and "already finished" in finished.stderr, finished
    assert f"--model {out / 'final'}" in finished.stderr and "raise --max-steps" not in finished.stderr
    longer = cli([*common, "--max-steps", "3", "--resume", "latest"])
    assert longer.exit_code == 2 and "no checkpoint-N to continue from" in longer.stderr, longer
    assert "Pass --resume latest" not in longer.stderr
    assert "Traceback" not in longer.stderr


def test_a_warmup_longer_than_the_run_and_an_unwritable_out_are_named(cli, ip2p, data20, tmp_path):
    result = cli(["train", "--model", ip2p, "--data", data20, "--out", tmp_path / "w", *QUICK, "--max-steps", "1",
                  "--warmup-steps", "10"])
    assert result.exit_code == 0 and "--warmup-steps 10 is not shorter than the run (1 step)" in result.stderr, result
    (tmp_path / "file").write_text("x")
    result = cli(["train", "--model", ip2p, "--data", data20, "--out", tmp_path / "file", *QUICK])
    assert result.exit_code == 2 and "--out" in result.stderr and "is a file, not a folder" in result.stderr, result


def test_epochs_set_the_step_count_and_a_missing_tracker_is_named(cli, ip2p, data20, tmp_path):
    import importlib.util

    from uniedit_cli.train.config import DataOptions
    from uniedit_cli.train.data import load_edit_data

    rows = len(load_edit_data(DataOptions(path=str(data20), val_size=2), seed=0).train)
    out = tmp_path / "epochs"
    result = cli(["train", "--model", ip2p, "--data", data20, "--out", out, *QUICK, "--epochs", "1", "--batch-size", "4"])
    assert result.exit_code == 0, result
    assert json.loads((out / "final" / "uniedit.json").read_text())["training"]["steps"] == rows // 4
    if importlib.util.find_spec("tensorboard") is None:
        result = cli(["train", "--model", ip2p, "--data", data20, "--out", tmp_path / "tb", *QUICK, "--report-to",
                      "tensorboard"])
        assert result.exit_code == 2 and "pip install tensorboard" in result.stderr, result


def test_out_of_memory_ends_with_advice(cli, ip2p, data20, tmp_path, monkeypatch):
    import torch

    from uniedit_cli.train import objectives

    def boom(self, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(objectives.InstructPix2PixTrainee, "training_loss", boom)
    result = cli(["train", "--model", ip2p, "--data", data20, "--out", tmp_path / "oom", *QUICK, "--max-steps", "2"])
    assert result.exit_code == 1, result
    for advice in ("--batch-size", "--gradient-checkpointing", "--lora", "fsdp.yaml"):
        assert advice in result.stderr
    assert "Traceback" not in result.output


def test_lora_ema_and_checkpointing_write_a_merged_final(cli, janus, data20, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    result = cli(["train", "--model", janus, "--data", data20, "--out", out, *QUICK, "--max-steps", "3", "--lora",
                  "--lora-rank", "4", "--ema", "--gradient-checkpointing", "--save-every", "2"])
    assert result.exit_code == 0, result
    weights = load_file(str(out / "final" / "model.safetensors"))
    assert not any("lora" in name for name in weights), "final/ holds merged weights in the family's own layout"
    adapter = load_file(str(out / "final" / "lora" / "adapter_model.safetensors"))
    assert adapter and all("lora_" in name for name in adapter)
    assert (out / "final" / "lora" / "adapter_config.json").exists()
    checkpoint = out / "checkpoint-2"
    assert {"trainable.safetensors", "ema.safetensors", "trainer_state.json"} <= {p.name for p in checkpoint.iterdir()}
    trained = load_file(str(checkpoint / "trainable.safetensors"))
    assert trained and all("lora_" in name for name in trained), "a LoRA checkpoint holds only the adapters"
    meta = json.loads((out / "final" / "uniedit.json").read_text())
    assert meta["training"]["lora"]["rank"] == 4 and meta["training"]["ema"] is True


# --- end to end ---------------------------------------------------------------------------------

def _check_run_folder(out: Path, *, family_files: tuple[str, ...]) -> dict:
    assert (out / "config.yaml").read_text().startswith("# Resolved configuration")
    final = out / "final"
    for name in family_files:
        assert (final / name).exists(), name
    assert not list(final.rglob("*.bin")) and not list(final.rglob("*.pt")), "safetensors only"
    meta = json.loads((final / "uniedit.json").read_text())
    assert meta["training"]["steps"] == 20
    grids = sorted((out / "validation").glob("step-*.png"))
    assert [g.name for g in grids] == ["step-000010.png", "step-000020.png"]
    with Image.open(grids[-1]) as grid:
        assert grid.width > 4 * 128  # four columns: source, instruction, target, output
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-15", "checkpoint-20"], "save every 5 steps and at the last, keep the last 2"
    return meta


@pytest.mark.slow
def test_janus_tiny_trains_and_its_final_folder_edits(cli, janus, data20, sample_image, tmp_path):
    out = tmp_path / "janus-run"
    result = cli(["train", "--model", janus, "--data", data20, "--out", out, "--device", "cpu", "--max-steps", "20",
                  "--lr", "5e-3", "--batch-size", "4", "--val-size", "2", "--save-every", "5", "--checkpoint-limit", "2",
                  "--val-every", "10", "--log-every", "1", "--seed", "1"])
    assert result.exit_code == 0, result
    trace = losses(out)
    assert len(trace) == 20 and sum(trace[-5:]) / 5 < sum(trace[:5]) / 5 - 0.05, trace
    meta = _check_run_folder(out, family_files=("model.safetensors", "config.json", "tokenizer.json"))
    assert meta["family"] == "janus" and meta["base_model"] == "janus-tiny"
    edited = tmp_path / "edited.png"
    result = cli(["edit", sample_image, "turn the red block blue", "--model", out / "final", "--out", edited])
    assert result.exit_code == 0, result
    assert Image.open(edited).size == (32, 32)


@pytest.mark.slow
def test_ip2p_tiny_trains_and_its_final_folder_edits(cli, ip2p, data20, sample_image, tmp_path):
    out = tmp_path / "ip2p-run"
    result = cli(["train", "--model", ip2p, "--data", data20, "--out", out, "--device", "cpu", "--max-steps", "20",
                  "--lr", "1e-3", "--batch-size", "4", "--val-size", "2", "--save-every", "5", "--checkpoint-limit", "2",
                  "--val-every", "10", "--log-every", "1", "--ema"])
    assert result.exit_code == 0, result
    trace = losses(out)
    assert sum(trace[-5:]) / 5 < 0.7 * sum(trace[:5]) / 5, trace
    meta = _check_run_folder(out, family_files=("model_index.json", "unet/diffusion_pytorch_model.safetensors",
                                                "vae/diffusion_pytorch_model.safetensors", "tokenizer"))
    assert meta["family"] == "ip2p" and meta["defaults"] == {"steps": 4, "size": 32}
    edited = tmp_path / "edited.png"
    result = cli(["edit", sample_image, "make the ball red", "--model", out / "final", "--out", edited])
    assert result.exit_code == 0, result
    assert json.loads(edited.with_suffix(".json").read_text())["family"] == "ip2p"


def _train_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "uniedit_cli", "train", "--model", str(model), "--data", str(data), "--out", str(out),
            "--device", "cpu", "--lr", "1e-3", "--val-size", "2", "--val-every", "0", "--log-every", "1", *extra]


def _env() -> dict:
    return {**{k: v for k, v in os.environ.items() if k != "UNIEDIT_LAUNCHED"}, **ENV_ONE_THREAD}


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resuming_drops_the_log_lines_of_steps_after_the_checkpoint(tmp_path):
    from uniedit_cli.train.loop import _drop_metrics_after

    path = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "loss": 1.0}, {"step": 2, "val_loss": 0.9}, {"step": 2, "loss": 0.8}, {"step": 3, "loss": 0.7}]
    path.write_text("".join(json.dumps(m) + "\n" for m in lines) + '{"step": 4, "lo')  # torn by a kill
    assert _drop_metrics_after(path, 2) == 2
    assert metrics(tmp_path) == lines[:3]
    assert _drop_metrics_after(path, 2) == 0 and _drop_metrics_after(tmp_path / "none.jsonl", 0) == 0


@pytest.mark.slow
def test_kill_9_then_resume_latest_equals_an_uninterrupted_run(ip2p, data20, tmp_path):
    import torch

    steps = ["--max-steps", "24", "--batch-size", "4", "--save-every", "4", "--checkpoint-limit", "2", "--ema"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = subprocess.Popen(_train_argv(ip2p, data20, whole, *steps), env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_train_argv(ip2p, data20, killed, *steps), env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoint-8").exists():
        assert victim.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "final").exists(), "the kill must land before the end"
    _, err = reference.communicate()
    assert reference.returncode == 0, err
    resumed = subprocess.run(_train_argv(ip2p, data20, killed, *steps, "--resume", "latest"), env=_env(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    a = _tensors(whole / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    b = _tensors(killed / "final" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    # the steps trained again after checkpoint-8 are logged once, as in the uninterrupted run
    logged = [(m["step"], "loss" in m) for m in metrics(killed)]
    assert logged == [(m["step"], "loss" in m) for m in metrics(whole)]
    assert losses(killed) == pytest.approx(losses(whole), abs=1e-6)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(janus, data20, tmp_path):
    common = ["--max-steps", "8", "--save-every", "0", "--drop-image-prob", "0.3", "--drop-text-prob", "0.3",
              "--lr", "5e-3"]
    one = subprocess.run(_train_argv(janus, data20, tmp_path / "one", *common, "--batch-size", "4"), env=_env(),
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(_train_argv(janus, data20, tmp_path / "two", *common, "--batch-size", "2", "--num-processes",
                                     "2"), env=_env(), capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    derived = (tmp_path / "two" / "config.yaml").read_text()
    assert "world_size: 2" in derived and "global_batch: 4" in derived
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    wa = _tensors(tmp_path / "one" / "final" / "model.safetensors")
    wb = _tensors(tmp_path / "two" / "final" / "model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-3


FSDP_CONFIG = Path(__file__).resolve().parents[1] / "examples" / "accelerate" / "fsdp.yaml"


@pytest.mark.slow
def test_fsdp2_on_two_cpu_ranks_shards_and_matches_one_process(janus, data20, tmp_path):
    """accelerate leaves CPU ranks MULTI_CPU; the loop switches them to FSDP2 (fully_shard over
    gloo): the run is sharded, trains like one process with the same global batch, and final/ is
    gathered from the full state dict and loads."""
    from uniedit_cli import registry
    from uniedit_cli.models.base import load_model

    common = ["--max-steps", "3", "--precision", "fp32", "--val-every", "2"]  # validation at step 2, then a step
    one = subprocess.run(_train_argv(janus, data20, tmp_path / "one", *common, "--batch-size", "4"), env=_env(),
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    run = subprocess.run(_train_argv(janus, data20, tmp_path / "fsdp", *common, "--batch-size", "2",
                                     "--num-processes", "2", "--accelerate-config", str(FSDP_CONFIG)),
                         env=_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "GPUs only" not in run.stdout + run.stderr
    derived = (tmp_path / "fsdp" / "config.yaml").read_text()
    assert "world_size: 2" in derived and "distributed_type: DistributedType.FSDP" in derived
    a, b = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    # the validation edits ran on the gathered weights (the same pictures as one process draws),
    # and step 3 after them trained as without sharding (checked by the losses above)
    import numpy as np

    grids = [np.asarray(Image.open(tmp_path / name / "validation" / "step-000002.png").convert("RGB"))[40:]
             for name in ("one", "fsdp")]  # below the title, which prints the validation loss
    assert grids[0].shape == grids[1].shape and np.abs(grids[0].astype(int) - grids[1]).mean() < 1.0
    wa = _tensors(tmp_path / "one" / "final" / "model.safetensors")
    wb = _tensors(tmp_path / "fsdp" / "final" / "model.safetensors")
    w0 = _tensors(janus / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    assert max(float((wb[k] - w0[k]).abs().max()) for k in wb if k in w0) > 1e-4  # it trained
    adapter = load_model(registry.resolve(str(tmp_path / "fsdp" / "final"), None), device="cpu", dtype="fp32")
    source = sorted((data20).rglob("*.png"))[0]
    (edited,) = adapter.edit([Image.open(source).convert("RGB")], ["make it red"], seeds=[0])
    assert edited.size[0] > 0


@pytest.mark.slow
def test_fsdp2_lora_on_cpu_ranks_checkpoints_and_resumes(janus, data20, tmp_path):
    argv = _train_argv(janus, data20, tmp_path / "run", "--max-steps", "3", "--precision", "fp32", "--batch-size", "2",
                       "--lora", "--save-every", "2", "--num-processes", "2", "--accelerate-config", str(FSDP_CONFIG))
    first = subprocess.run(argv, env=_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    final = tmp_path / "run" / "final"
    assert (final / "lora" / "adapter_model.safetensors").is_file()
    whole = _tensors(final / "model.safetensors")
    shutil.rmtree(final)  # as if killed after step 3, before its checkpoint and final/ were written
    shutil.rmtree(tmp_path / "run" / "checkpoint-3")
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["launch"]
    assert recorded == {"num_processes": 2, "accelerate_config": str(FSDP_CONFIG)}, recorded
    # the run's own config relaunches it the same way (2 ranks, FSDP2), as its header says
    resumed = subprocess.run([sys.executable, "-m", "uniedit_cli", "train", "--config", str(tmp_path / "run" / "config.yaml"),
                              "--resume", "latest"], env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "world_size: 2" in (tmp_path / "run" / "config.yaml").read_text()
    assert "resuming from" in resumed.stdout + resumed.stderr
    again = _tensors(final / "model.safetensors")
    assert max(float((whole[k] - again[k]).abs().max()) for k in whole) < 1e-6
    steps = [m["step"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert steps == [1, 2, 3], "step 3, trained again after checkpoint-2, is logged once"


@pytest.mark.slow
def test_fsdp1_config_on_cpu_ranks_is_refused_with_a_hint(janus, data20, tmp_path):
    config = tmp_path / "fsdp1.yaml"
    config.write_text(FSDP_CONFIG.read_text().replace("fsdp_version: 2", "fsdp_version: 1"))
    run = subprocess.run(_train_argv(janus, data20, tmp_path / "run", "--max-steps", "1", "--batch-size", "2",
                                     "--num-processes", "2", "--accelerate-config", str(config)),
                         env=_env(), capture_output=True, text=True)
    assert run.returncode != 0
    assert "FSDP version 1" in run.stderr and "fsdp_version: 2" in run.stderr


def test_data_without_target_images_is_refused_before_the_model_loads(cli, janus, tmp_path):
    import datasets

    rows = list(edit_rows(4))
    features = datasets.Features({"input_image": datasets.Image(), "edit_prompt": datasets.Value("string"),
                                  "edited_image": datasets.Image()})
    datasets.Dataset.from_dict({"input_image": [r[0] for r in rows], "edit_prompt": [r[1] for r in rows],
                                "edited_image": [None] * 4}, features=features).to_parquet(str(tmp_path / "d.parquet"))
    result = cli(["train", "--model", janus, "--data", tmp_path / "d.parquet", "--out", tmp_path / "run", *QUICK,
                  "--val-size", "0"])
    assert result.exit_code == 2, result
    assert "target column 'edited_image' is empty in the first 4 rows" in result.stderr and "--editor" in result.stderr
    assert not (tmp_path / "run" / "final").exists()
