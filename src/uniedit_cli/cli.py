"""The ``uniedit`` executable: registers the commands, imports nothing heavy.

Each command lives in ``uniedit_cli.commands.<name>`` as a plain function plus its help text;
torch, transformers and diffusers are imported only inside a command's body, so ``--help``
stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from uniedit_cli import __version__
from uniedit_cli.commands import ask, common, edit, generate, models, synth, train
from uniedit_cli.commands import eval as eval_command
from uniedit_cli.commands.common import set_invoked_argv

__all__ = ["app", "main", "set_invoked_argv"]

app = typer.Typer(
    name="uniedit",
    help="Uni-Edit for unified multimodal models: synthesise reasoning-intensive edit data, tune on it, "
         "edit / generate / ask, and evaluate.",
    epilog="Run `uniedit COMMAND --help` for a command's options and examples.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"uniedit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """Uni-Edit for unified multimodal models."""


for _module, _name in ((synth, "synth"), (train, "train"), (edit, "edit"), (generate, "generate"), (ask, "ask"),
                       (eval_command, "eval"), (models, "models")):
    app.command(name=_name, help=_module.HELP, epilog=_module.EPILOG)(getattr(_module, _name))


def _close_distributed() -> None:
    """A launched rank tears its process group down before the interpreter exits: left to
    interpreter shutdown, gloo's threads could be destroyed while joinable ("terminate called
    without an active exception", SIGABRT), which accelerate launch reports as a failed run."""
    if "torch.distributed" not in sys.modules:  # never import torch just to check
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass


def main() -> None:
    set_invoked_argv(sys.argv[1:])
    try:
        app(prog_name="uniedit")
    finally:
        _close_distributed()


del common
