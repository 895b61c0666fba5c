"""``uniedit train``: tune a model on edit data (one stage, one task, one dataset)."""

from __future__ import annotations

import typer

from uniedit_cli.commands import common
from uniedit_cli.train.config import with_signature

HELP = "Tune a model on edit data: full or LoRA, resumable, on one device or many (Uni-Edit recipe)."
EPILOG = """\
[bold]Examples[/]

  uniedit train --model janus-pro-1b --data data/gqa-edit --out runs/janus-uniedit

  uniedit train --config examples/train/janus-pro-7b-uniedit.yaml --num-processes 8 --accelerate-config examples/accelerate/fsdp.yaml

  uniedit train --model janus-tiny --data uniedit-data --out runs/tiny --max-steps 200   [dim]# any machine, no downloads[/]

  uniedit train --config runs/tiny/config.yaml --resume latest   [dim]# continue a stopped run[/]

  uniedit edit img.png "..." --model runs/janus-uniedit/final

[bold]Run folder[/] (--out): checkpoint-N/ (resumable state every --save-every steps and at the last step, the last
--checkpoint-limit kept), final/ (the model in its family's own layout + uniedit.json, usable as --model), config.yaml
(the resolved options and launch settings; a valid --config),
metrics.jsonl, validation/step-N.png (source | instruction | target | output), skipped.jsonl (rows that could not be used).

Options come from the defaults, then --config FILE (YAML, nested by section: data, tune, optim, checkpoint, log,
launch; see examples/train/), then the flags given here.
"""


@common.handle_errors
def _train(**options) -> None:
    from uniedit_cli import launch, registry
    from uniedit_cli.errors import UsageError
    from uniedit_cli.train import config as train_config

    config = train_config.load_config(options.pop("config", None), options)
    if config.model is None:
        raise UsageError("no model: pass --model (e.g. janus-tiny, janus-pro-1b, instruct-pix2pix) or "
                                      "set `model:` in --config.")
    resolved = registry.resolve(config.model, config.family)
    resolved.require(registry.TRAIN)
    train_config.resolve(config, resolved.family)
    if not launch.inside_launch():
        common.check_writable_dir(config.out)
    launching = not launch.inside_launch() and (config.launch.accelerate_config is not None
                                                or (config.launch.num_processes or 1) > 1)
    if launching:
        # bad data fails here, once, before N processes start and load the model
        from uniedit_cli.models.base import preflight
        from uniedit_cli.train.data import load_edit_data

        preflight(resolved)
        load_edit_data(config.data, seed=config.seed)
    code = launch.relaunch_if_requested(common.invoked_argv(), num_processes=config.launch.num_processes,
                                        accelerate_config=config.launch.accelerate_config, device=config.device)
    if code is not None:
        if code != 0:
            raise typer.Exit(code)
        return
    from uniedit_cli.train.loop import run

    run(config, console=common.error_console(), command=common.invoked_argv())


train = with_signature(_train)
train.__name__ = "train"
