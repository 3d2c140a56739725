"""The ``mimea`` command: training subcommands and the ``serve`` subcommand under one name.

Training and service stay independent packages; each contributes its own Typer commands and is
imported only when its commands are registered here.
"""

from __future__ import annotations

import typer

from service.cli import register as register_service
from training.align_cli import register as register_align
from training.cli import register as register_training

app = typer.Typer(help="MIMEA multi-modal entity alignment.", no_args_is_help=True,
                  add_completion=False)
register_training(app)
register_align(app)
register_service(app)

if __name__ == "__main__":
    app()
