"""The accelerate launcher: re-run the same ``uniedit`` command under ``accelerate launch``.

``--num-processes N`` and ``--accelerate-config FILE`` make a command start itself again under
``accelerate launch`` with an explicit config file and an argv *list* (never a joined string,
so prompts with spaces and quotes survive). Inside the launched processes the work is split
with accelerate's own ``PartialState.split_between_processes``; nothing here replaces
accelerate or torch.distributed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from uniedit_cli.errors import UsageError

# Set in the children so that they do not try to launch again.
LAUNCHED_ENV = "UNIEDIT_LAUNCHED"


def inside_launch() -> bool:
    return os.environ.get(LAUNCHED_ENV) == "1"


def default_config(num_processes: int, *, mixed_precision: str = "no") -> dict:
    """An explicit single-machine accelerate config that starts ``num_processes`` ranks.

    accelerate's MULTI_CPU type launches through mpirun only; on a machine without CUDA we
    use the torchrun launcher (MULTI_GPU) and set ``ACCELERATE_USE_CPU=true`` in the
    environment, which makes accelerate's PartialState pick MULTI_CPU with gloo in each rank.
    """
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU" if num_processes > 1 else "NO",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": num_processes,
        "mixed_precision": mixed_precision,
        "use_cpu": False,
        "main_training_function": "main",
        "rdzv_backend": "static",
        "same_network": True,
        "main_process_ip": "127.0.0.1",
        "main_process_port": _free_port(),
    }


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(config: dict, folder: Path) -> Path:
    import yaml

    path = folder / "accelerate_config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
    return path


def build_launch_argv(command_args: list[str], *, config_file: str | os.PathLike, num_processes: int | None) -> list[str]:
    """The argv that runs ``uniedit <command_args>`` under ``accelerate launch``."""
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    if num_processes is not None:
        argv += ["--num_processes", str(num_processes)]
    # the launch flags stay: the ranks do not launch again (inside_launch), and `train` records them in
    # run_dir/config.yaml so that its "Resume with" line relaunches the same way
    argv += ["-m", "uniedit_cli", *command_args]
    return argv


def check_accelerate_config(path: str | os.PathLike) -> dict:
    """Read an accelerate config as accelerate will, so a wrong path or bad YAML is one line here
    instead of a traceback from inside ``accelerate launch``."""
    from uniedit_cli.io import read_yaml_mapping

    return read_yaml_mapping(path, flag="--accelerate-config", suffixes=(".yaml", ".yml", ".json"),
                             hint="Pass a YAML written by `accelerate config`, or one from examples/accelerate/.")


def relaunch_if_requested(command_args: list[str], *, num_processes: int | None, accelerate_config: str | None,
                          device: str = "auto") -> int | None:
    """If a launch was asked for and we are not already inside one, run it and return its exit code.

    Returns None when the command should just run in this process.
    """
    if inside_launch():
        return None
    if accelerate_config is None and (num_processes is None or num_processes <= 1):
        return None
    if num_processes is not None and num_processes < 1:
        raise UsageError(f"--num-processes {num_processes}: must be at least 1.")
    if accelerate_config is not None:
        check_accelerate_config(accelerate_config)
    env = dict(os.environ)
    env[LAUNCHED_ENV] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    if device == "cpu" or (device == "auto" and not _cuda_available()):
        env["ACCELERATE_USE_CPU"] = "true"
        # one share of the cores per rank keeps CPU ranks from fighting over them
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (num_processes or 1))))
    with tempfile.TemporaryDirectory(prefix="uniedit-launch-") as tmp:
        if accelerate_config is None:
            config_file = write_config(default_config(num_processes), Path(tmp))
        else:
            config_file = Path(accelerate_config)
        argv = build_launch_argv(command_args, config_file=config_file, num_processes=num_processes)
        return subprocess.call(argv, env=env)


def partial_state():
    """accelerate's PartialState for this process (CPU ranks when the launcher asked for them)."""
    from accelerate import PartialState

    return PartialState(cpu=os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
