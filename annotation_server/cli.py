"""`annotate-server`: start the server (the default command) and inspect apps and models.

annotate-server --app kidney [--studies DIR] [--host H] [--port P]
annotate-server models list --app kidney [--json]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from annotation_server import __version__
from annotation_server.errors import AnnotationServerError

cli = typer.Typer(add_completion=False, help="AI-assisted annotation server for 3D medical images (MONAI Label API).")
models_cli = typer.Typer(help="Inspect the models an app serves.")
cli.add_typer(models_cli, name="models")
console = Console(stderr=True, soft_wrap=True)

AppOption = Annotated[str | None, typer.Option("--app", help="App name (e.g. kidney) or path to an app folder")]


def _settings(**overrides: Any) -> Any:
    from annotation_server.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _load_app_or_exit(name: str) -> Any:
    from annotation_server.app_spec import load_app

    try:
        return load_app(name)
    except AnnotationServerError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _serve(**overrides: Any) -> None:
    """Start uvicorn with Settings built from the given command-line values (None = not given)."""
    import uvicorn

    from annotation_server.server import create_app

    settings = _settings(**overrides)
    if settings.studies is not None and not settings.studies.expanduser().is_dir():
        console.print(
            f"[red]error:[/red] studies folder '{settings.studies}' does not exist; create it or fix the path"
        )
        raise typer.Exit(2)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )
    spec = _load_app_or_exit(settings.app)
    uvicorn.run(
        create_app(settings, spec),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
    )


@cli.callback(invoke_without_command=True)
def main_command(
    ctx: typer.Context,
    app: AppOption = None,
    studies: Annotated[Path | None, typer.Option(help="Folder of studies (default: the embedded sample CT)")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: 8000]")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Per-user data folder (samples, logs, sessions)")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (for MITK)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS key")] = None,
    model_dir: Annotated[
        list[Path] | None, typer.Option(help="Extra MONAI bundle folder to serve (repeatable)")
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit")] = False,
) -> None:
    """Start the server (when no command is given)."""
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        _serve(
            app=app,
            studies=studies,
            host=host,
            port=port,
            data_dir=data_dir,
            log_level=log_level,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            model_dirs=model_dir or None,
        )


@models_cli.command("list")
def models_list(
    app: AppOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List the app's models: name, type, version, weights checksum, labels (and any that cannot load)."""
    from annotation_server.app_spec import build_models
    from annotation_server.checksums import file_sha256

    spec = _load_app_or_exit(app or _settings().app)
    tasks, failed = build_models(spec)
    rows: list[dict[str, Any]] = []
    for task in tasks:
        weights = task.weights_path()
        sha = file_sha256(weights) if weights and weights.is_file() else None
        rows.append(
            {"name": task.name, "type": task.type, "version": task.version, "sha256": sha, "labels": dict(task.labels)}
        )
    rows += [
        {"name": name, "type": None, "version": None, "sha256": None, "labels": {}, "error": reason}
        for name, reason in failed.items()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"models of app '{spec.name}'")
    for column in ("name", "type", "version", "sha256", "labels"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            row["type"] or "[red]error[/red]",
            row["version"] or row.get("error", "-"),
            (row["sha256"] or "-")[:16],
            json.dumps(row["labels"]),
        )
    Console().print(table)


def main() -> None:
    cli()
