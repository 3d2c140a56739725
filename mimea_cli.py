"""The ``mimea`` command: training subcommands and the ``serve`` subcommand under one name.

Training and service stay independent packages; each contributes its own Typer commands and is
imported only when its commands are registered here. Help is plain text (``rich_markup_mode``
off): every option with its value type and default, flags without a type.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated

import typer

from mimea.service.cli import register as register_service
from mimea.training.align_cli import register as register_align
from mimea.training.cli import register as register_training

app = typer.Typer(help="MIMEA multi-modal entity alignment.", no_args_is_help=True,
                  add_completion=False, rich_markup_mode=None)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mimea {version('mimea')}")
        raise typer.Exit()


@app.callback()
def main(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="print the installed version and exit")] = False,
) -> None:
    """MIMEA multi-modal entity alignment."""


register_training(app)
register_align(app)
register_service(app)

if __name__ == "__main__":
    app()
