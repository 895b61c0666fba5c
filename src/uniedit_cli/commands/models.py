"""``uniedit models``: the registry as a table."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from uniedit_cli.commands import common

HELP = "List the model registry: names, families, sources, capabilities, local weights."
EPILOG = """\
[bold]Examples[/]

  uniedit models

  uniedit models --can edit

  uniedit models --json
"""


@common.handle_errors
def models(
    can: Annotated[str, typer.Option("--can", help="Only models with this capability (ask, generate, edit, train, rewrite).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    from rich.console import Console
    from rich.table import Table

    from uniedit_cli import registry
    from uniedit_cli.errors import UsageError

    if can and can not in registry.CAPABILITIES:
        raise UsageError(f"--can {can!r}: unknown capability.", hint=f"Choose one of {', '.join(registry.CAPABILITIES)}.")
    specs = [s for s in registry.MODELS if not can or can in s.capabilities]
    rows = [
        {"name": s.name, "aliases": list(s.aliases), "family": s.family, "source": s.source,
         "capabilities": list(s.capabilities), "weights": registry.weights_status(s), "description": s.description}
        for s in specs
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich import box

    table = Table(title="uniedit model registry", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("family", no_wrap=True)
    table.add_column("source", overflow="fold")
    table.add_column("can")
    table.add_column("weights", no_wrap=True)
    colors = {"cached": "green", "local": "green", "builds locally": "cyan", "not downloaded": "yellow"}
    for row in rows:
        name = row["name"] + "".join(f"\n[dim]alias {a}[/]" for a in row["aliases"])
        status = row["weights"]
        table.add_row(name, row["family"], row["source"], ", ".join(row["capabilities"]),
                      f"[{colors.get(status, 'white')}]{status}[/]")
    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=140)
    console.print(table)
    console.print("[dim]--model also takes a hub id (org/name, with --family if needed) or a local folder.[/]")
