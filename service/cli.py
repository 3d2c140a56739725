"""``mimea serve``: load a checkpoint and serve it with uvicorn.

The settings are validated and the checkpoint is loaded before uvicorn starts, so bad input ends
the command with one ``error: ...`` line instead of a server traceback. Exit status: 2 for bad
input (settings, checkpoint), 1 for a runtime failure (e.g. no GPU for ``--device cuda``).
``python -m mimea.service.cli serve ...`` runs the same command without the training package.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from mimea.model.checkpoint import CheckpointError
from mimea.service.index import IndexKind
from mimea.service.settings import DeviceName, LogLevel

logger = logging.getLogger(__name__)

BAD_INPUT = 2
RUNTIME_FAILURE = 1


def serve(
    checkpoint: Annotated[Path | None, typer.Option(
        help="Checkpoint directory (default: MIMEA_CHECKPOINT).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to bind.")] = 8000,
    redis_url: Annotated[str | None, typer.Option(
        help="Redis URL (default: MIMEA_REDIS_URL; unset = in-process LRU cache).")] = None,
    index: Annotated[IndexKind | None, typer.Option(
        help="FAISS index (default: MIMEA_INDEX or flat).")] = None,
    device: Annotated[DeviceName | None, typer.Option(
        help="Embedding device (default: MIMEA_DEVICE or auto).")] = None,
    log_level: Annotated[LogLevel | None, typer.Option(
        case_sensitive=False, help="Log level (default: MIMEA_LOG_LEVEL or INFO).")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (slower).")] = False,
) -> None:
    """Serve a checkpoint over HTTP. Options override MIMEA_* environment settings."""
    import uvicorn

    from mimea.service.aligner import Aligner
    from mimea.service.errors import StartupError
    from mimea.service.main import create_app
    from mimea.service.protocol import guarded_protocol
    from mimea.service.settings import Settings

    overrides: dict[str, Any] = {
        "checkpoint": checkpoint, "redis_url": redis_url, "log_level": log_level,
        "index": index, "device": device}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: invalid settings: {settings_errors(exc)}", err=True)
        raise typer.Exit(BAD_INPUT) from exc
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_can_listen(host, port)
    try:
        aligner = Aligner.load(settings)
    except CheckpointError as exc:
        typer.echo(f"error: cannot start the service: {one_line(exc)}", err=True)
        raise typer.Exit(BAD_INPUT) from exc
    except StartupError as exc:
        typer.echo(f"error: cannot start the service: {one_line(exc)}", err=True)
        raise typer.Exit(RUNTIME_FAILURE) from exc
    app = create_app(settings, aligner=aligner)
    try:
        uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower(),
                    access_log=access_log, timeout_keep_alive=settings.keep_alive_timeout_s,
                    limit_concurrency=settings.limit_concurrency,
                    http=guarded_protocol(settings.header_timeout_s, settings.max_header_bytes))
    except SystemExit as exc:  # uvicorn exits 3 when it cannot start (its log says why)
        if exc.code in (0, None):
            raise
        typer.echo(f"error: the server could not start on {host}:{port} (see the log above)",
                   err=True)
        raise typer.Exit(RUNTIME_FAILURE) from exc


def check_can_listen(host: str, port: int) -> None:
    """Exit 1 with one line, before the checkpoint is loaded (minutes for a large one), when
    ``host:port`` cannot be bound: most often another server holds the port."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(RUNTIME_FAILURE) from exc


def one_line(exc: BaseException) -> str:
    """An error message on one line, as a terminal or a log collector shows it best."""
    return " ".join(str(exc).split())


def settings_errors(exc: ValidationError) -> str:
    """Each invalid setting and why, on one line, without echoing values (secrets)."""
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                     for err in exc.errors())


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to the root ``mimea`` CLI."""
    app.command("serve")(serve)


def main() -> None:
    """Standalone entry point (``python -m mimea.service.cli``)."""
    cli = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="MIMEA alignment service.")

    @cli.callback()
    def _root() -> None:
        """Keep ``serve`` a subcommand even though it is the only one."""

    register(cli)
    cli()


if __name__ == "__main__":
    main()
