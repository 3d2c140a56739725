"""``mimea serve``: load a checkpoint and serve it with uvicorn.

The checkpoint is loaded before uvicorn starts, so a missing, truncated or inconsistent one ends
the command with one clear message and a non-zero exit status instead of a server traceback.
``python -m service.cli serve ...`` runs the same command without the training package.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from model.checkpoint import CheckpointError

logger = logging.getLogger(__name__)


class IndexChoice(StrEnum):
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"


class DeviceChoice(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def serve(
    checkpoint: Annotated[Path | None, typer.Option(
        help="Checkpoint directory (default: MIMEA_CHECKPOINT).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8000,
    redis_url: Annotated[str | None, typer.Option(
        help="Redis URL (default: MIMEA_REDIS_URL; unset = in-process LRU cache).")] = None,
    index: Annotated[IndexChoice | None, typer.Option(
        help="FAISS index (default: MIMEA_INDEX or flat).")] = None,
    device: Annotated[DeviceChoice | None, typer.Option(
        help="Embedding device (default: MIMEA_DEVICE or auto).")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (slower).")] = False,
) -> None:
    """Serve a checkpoint over HTTP. Options override MIMEA_* environment settings."""
    import uvicorn

    from service.aligner import Aligner
    from service.errors import StartupError
    from service.main import create_app
    from service.settings import Settings

    overrides: dict[str, Any] = {
        "checkpoint": checkpoint, "redis_url": redis_url, "log_level": log_level,
        "index": index.value if index else None, "device": device.value if device else None}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from exc
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        aligner = Aligner.load(settings)
    except (CheckpointError, StartupError) as exc:
        typer.echo(f"error: cannot start the service: {exc}", err=True)
        raise typer.Exit(1) from exc
    app = create_app(settings, aligner=aligner)
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(),
                access_log=access_log)


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the root ``mimea`` CLI."""
    app.command("serve")(serve)


def main() -> None:
    """Standalone entry point (``python -m service.cli``)."""
    cli = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="MIMEA alignment service.")

    @cli.callback()
    def _root() -> None:
        """Keep ``serve`` a subcommand even though it is the only one."""

    register(cli)
    cli()


if __name__ == "__main__":
    main()
