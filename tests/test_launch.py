"""The launcher builds an argv list (quoting intact) for `accelerate launch`."""

from __future__ import annotations

import sys

import pytest
import yaml

from uniedit_cli import launch


def test_argv_keeps_prompts_with_spaces_and_quotes_as_single_arguments(tmp_path):
    prompt = 'make the "sky" stormy; it\'s $HOME && rm -rf /'
    args = ["edit", "photo.png", prompt, "--model", "ip2p-tiny", "--num-processes", "2"]
    argv = launch.build_launch_argv(args, config_file=tmp_path / "c.yaml", num_processes=2)
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[argv.index("--config_file") + 1] == str(tmp_path / "c.yaml")
    assert argv[argv.index("--num_processes") + 1] == "2"
    tail = argv[argv.index("-m", 3) + 1:]
    assert tail == ["uniedit_cli", "edit", "photo.png", prompt, "--model", "ip2p-tiny", "--num-processes", "2"]


def test_default_config_is_explicit_and_loadable(tmp_path):
    config = launch.default_config(2)
    path = launch.write_config(config, tmp_path)
    loaded = yaml.safe_load(path.read_text())
    assert loaded["num_processes"] == 2 and loaded["distributed_type"] == "MULTI_GPU"
    assert loaded["main_process_ip"] == "127.0.0.1" and isinstance(loaded["main_process_port"], int)
    from accelerate.commands.config.config_args import load_config_from_file

    assert load_config_from_file(str(path)).num_processes == 2


def test_no_relaunch_without_flags_or_inside_a_launch(monkeypatch):
    assert launch.relaunch_if_requested(["models"], num_processes=None, accelerate_config=None) is None
    assert launch.relaunch_if_requested(["models"], num_processes=1, accelerate_config=None) is None
    monkeypatch.setenv(launch.LAUNCHED_ENV, "1")
    assert launch.relaunch_if_requested(["models"], num_processes=4, accelerate_config=None) is None


def test_every_shipped_accelerate_config_loads_and_names_its_command():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((Path(__file__).parent.parent / "examples" / "accelerate").glob("*.yaml"))
    assert configs
    for path in configs:
        header = [line for line in path.read_text().splitlines() if line.startswith("#")]
        assert any("uniedit " in line for line in header), f"{path.name}: the header must show the command"
        config = load_config_from_file(str(path))
        assert config.num_processes >= 1


@pytest.mark.parametrize("name, text, needle", [
    ("bad.yaml", "data: [unclosed\n", "is not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
    ("list.yaml", "- a\n- b\n", "holds a list, not a mapping"),
    ("folder", None, "is a folder, not a YAML file"),
    ("config.txt", "a: 1\n", "expected a .yaml/.yml/.json file"),
    ("missing.yaml", False, "no such file"),
])
def test_a_bad_accelerate_config_is_one_line_before_launching(cli, tmp_path, name, text, needle):
    path = tmp_path / name
    if text is None:
        path.mkdir()
    elif text is not False:
        path.write_text(text)
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"prompt": "a red cube"}\n')
    result = cli(["generate", "--batch", batch, "--model", "janus-tiny", "--out", tmp_path / "o",
                  "--accelerate-config", path])
    assert result.exit_code == 2, result.stderr
    assert needle in result.stderr and "Traceback" not in result.stderr + result.stdout
