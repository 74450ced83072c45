"""`annotate-server`: start the server (the default command) and inspect apps and models.

annotate-server --app kidney [--studies DIR] [--host H] [--port P]
annotate-server models list --app kidney [--json]
annotate-server models versions kidney_seg | promote kidney_seg 3 | rollback kidney_seg [--to 2]
annotate-server train --app kidney --studies DIR --model kidney_seg [--max-epochs N]
annotate-server users add NAME --role annotator | list | passwd NAME | role NAME ROLE | remove NAME
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from annotation_server import __version__
from annotation_server.audit.cli import audit_app
from annotation_server.auth.cli import users_app
from annotation_server.cli_support import (
    StudiesOption,
    cli_actor,
    cli_audit,
    console,
    load_app_or_exit,
    or_exit,
    settings_from,
)
from annotation_server.federated.cli import fl_app
from annotation_server.inference.batch_cli import batch_app
from annotation_server.projects.cli import projects_app
from annotation_server.slicer_extension import slicer_extension

cli = typer.Typer(add_completion=False, help="AI-assisted annotation server for 3D medical images (MONAI Label API).")
models_cli = typer.Typer(help="Inspect the models an app serves.")
cli.add_typer(models_cli, name="models")
cli.add_typer(fl_app, name="fl")
cli.add_typer(users_app, name="users")
cli.add_typer(audit_app, name="audit")
cli.command("slicer-extension")(slicer_extension)
cli.add_typer(batch_app, name="batch")
cli.add_typer(projects_app, name="projects")

AppOption = Annotated[str | None, typer.Option("--app", help="App name (e.g. kidney) or path to an app folder")]


def _console_log_handler() -> logging.Handler:
    """Rich's coloured log on a terminal; plain, unwrapped lines when stderr goes to a file or a pipe (a log file
    must keep each message on one line, and Rich would wrap it at its 80-column default)."""
    if console.is_terminal:
        return RichHandler(console=console, show_path=False)
    plain = logging.StreamHandler(sys.stderr)
    plain.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    return plain


def _note_shared_data_folder(settings: Any, given: bool) -> None:
    """Earlier versions kept one data folder for every `--studies`; say where that data is, never move it."""
    from annotation_server.settings import default_data_dir

    legacy = default_data_dir()
    if not given and (legacy / "registry").is_dir():
        console.print(
            f"note: {legacy} holds data of an earlier version shared by every --studies; this server uses "
            f"{settings.data_dir}. Pass --data-dir {legacy} to keep using the old registry and users."
        )


def _serve(**overrides: Any) -> None:
    """Start uvicorn with Settings built from the given command-line values (None = not given)."""
    from annotation_server.security.exposure import InsecureBindError, check_exposure

    settings = settings_from(**overrides)
    _note_shared_data_folder(settings, given=overrides.get("data_dir") is not None)
    try:
        check_exposure(settings)  # before the heavy imports: the refusal is immediate
    except InsecureBindError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None

    import uvicorn

    from annotation_server.server import create_app

    if settings.studies is not None and not settings.studies.expanduser().is_dir():
        console.print(
            f"[red]error:[/red] studies folder '{settings.studies}' does not exist; create it or fix the path"
        )
        raise typer.Exit(2)
    logging.basicConfig(level=settings.log_level.upper(), handlers=[_console_log_handler()])
    spec = load_app_or_exit(settings.app)
    uvicorn.run(
        or_exit(lambda: create_app(settings, spec)),
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
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Data folder: registry, users, sessions, logs [default: one per --studies, shown at start]"),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (for MITK)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS key")] = None,
    model_dir: Annotated[
        list[Path] | None, typer.Option(help="Extra MONAI bundle folder to serve (repeatable)")
    ] = None,
    ohif: Annotated[
        bool | None, typer.Option("--ohif", help="Serve OHIF v3 at /ohif/ (needs monailabel installed)")
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit")] = False,
    insecure_no_auth: Annotated[
        bool | None,
        typer.Option("--insecure-no-auth", help="Allow a non-loopback --host with logins off (everyone is admin)"),
    ] = None,
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
            insecure_no_auth=insecure_no_auth,
            ohif=ohif,
        )


@models_cli.command("list")
def models_list(
    app: AppOption = None,
    data_dir: Annotated[Path | None, typer.Option(help="The server's data folder holding the model registry")] = None,
    studies: StudiesOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """List the app's models: name, type, serving version, weights checksum, labels (and any that cannot load)."""
    from annotation_server.app_spec import build_models
    from annotation_server.checksums import file_sha256
    from annotation_server.registry import ModelRegistry

    settings = settings_from(app=app, data_dir=data_dir, studies=studies)
    spec = load_app_or_exit(settings.app)
    tasks, failed = build_models(spec)
    registry_dir = settings.registry_dir(spec.name)
    registry = ModelRegistry(registry_dir) if registry_dir.is_dir() else None
    rows: list[dict[str, Any]] = []
    for task in tasks:
        serving = registry.serving(task.name) if registry is not None else None
        weights = task.weights_path()
        sha = serving.sha256 if serving else (file_sha256(weights) if weights and weights.is_file() else None)
        rows.append(
            {
                "name": task.name,
                "type": task.type,
                # the registry's serving version once the server has run, else the bundle's own version
                "version": str(serving.version) if serving else task.version,
                "versions": len(registry.versions(task.name)) if registry is not None else 0,
                "sha256": sha,
                "labels": dict(task.labels),
            }
        )
    rows += [
        {"name": name, "type": None, "version": None, "versions": 0, "sha256": None, "labels": {}, "error": reason}
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


DataDirOption = Annotated[Path | None, typer.Option(help="The server's data folder holding the model registry")]


def _registry(app: str | None, data_dir: Path | None, studies: str | None) -> Any:
    from annotation_server.registry import ModelRegistry

    settings = settings_from(app=app, data_dir=data_dir, studies=studies)
    spec = load_app_or_exit(settings.app)
    return ModelRegistry(settings.registry_dir(spec.name))


@models_cli.command("versions")
def models_versions(
    model: Annotated[str, typer.Argument(help="model name, e.g. kidney_seg")],
    app: AppOption = None,
    data_dir: DataDirOption = None,
    studies: StudiesOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")] = False,
) -> None:
    """A model's versions at this site: which serves, where each came from, its validation Dice."""
    registry = _registry(app, data_dir, studies)
    versions = registry.versions(model)
    if as_json:
        typer.echo(json.dumps([v.model_dump() for v in versions], indent=2))
        return
    if not versions:
        console.print(f"model '{model}' has no versions yet (they are registered when the server first starts)")
        raise typer.Exit(1)
    table = Table(title=f"versions of {model} ({registry.root})")
    for column in ("version", "status", "source", "val Dice", "serving Dice then", "created", "note"):
        table.add_column(column)
    for v in versions:
        table.add_row(
            str(v.version),
            f"[green]{v.status}[/green]" if v.status == "serving" else v.status,
            v.source,
            str(v.metrics.get("val_dice", "-")),
            str(v.metrics.get("serving_val_dice", "-")),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created_ts)),
            v.note,
        )
    Console().print(table)


@models_cli.command("promote")
def models_promote(
    model: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[int, typer.Argument(help="version number to serve")],
    app: AppOption = None,
    data_dir: DataDirOption = None,
    studies: StudiesOption = None,
    reason: Annotated[str, typer.Option(help="why (kept in the registry's log)")] = "promoted from the command line",
) -> None:
    """Serve a version. A running server switches to it within seconds, without a restart."""
    registry = _registry(app, data_dir, studies)
    promoted = or_exit(lambda: registry.promote(model, version, actor="cli", reason=reason))
    cli_audit(data_dir, studies).record(
        "model.promote", cli_actor(), None, model, version=promoted.version, reason=reason
    )
    typer.echo(f"{promoted.label} is now serving")


@models_cli.command("rollback")
def models_rollback(
    model: Annotated[str, typer.Argument(help="model name")],
    to: Annotated[int | None, typer.Option(help="version to serve (default: the one that served before)")] = None,
    app: AppOption = None,
    data_dir: DataDirOption = None,
    studies: StudiesOption = None,
    reason: Annotated[str, typer.Option(help="why (kept in the registry's log)")] = "rolled back from the command line",
) -> None:
    """Serve the previous version again. A running server switches within seconds."""
    registry = _registry(app, data_dir, studies)
    restored = or_exit(lambda: registry.rollback(model, to, actor="cli", reason=reason))
    cli_audit(data_dir, studies).record(
        "model.rollback", cli_actor(), None, model, version=restored.version, reason=reason
    )
    typer.echo(f"{restored.label} is now serving")


@cli.command("train")
def train_command(
    studies: Annotated[Path, typer.Option(help="Folder of studies whose 'final' labels to train on")],
    model: Annotated[str | None, typer.Option(help="model to fine-tune (default: the app's first trainable)")] = None,
    app: AppOption = None,
    data_dir: DataDirOption = None,
    max_epochs: Annotated[int, typer.Option(help="passes over the training labels")] = 20,
    steps: Annotated[int | None, typer.Option(help="optimizer steps (overrides --max-epochs)")] = None,
    val_split: Annotated[float, typer.Option(help="share of labeled images held out for validation")] = 0.2,
    learning_rate: Annotated[float, typer.Option(help="peak learning rate")] = 5e-4,
    min_improvement: Annotated[float, typer.Option(help="Mean Dice the new version must gain to be promoted")] = 0.0,
    min_val_images: Annotated[int, typer.Option(help="Fewest validation images the promotion gate decides on")] = 5,
    promote: Annotated[bool, typer.Option(help="promote when the gate passes")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
) -> None:
    """Fine-tune from the serving version on all 'final' labels; the result is a new version (with its
    training curve), promoted only if the gate passes. The same job as POST /train/{model}."""
    from annotation_server.datastore import LocalDatastore
    from annotation_server.inference.model_sources import BundleModel
    from annotation_server.learning.finetune import FineTuneParams, fine_tune, labeled_images, split
    from annotation_server.learning.reporting import progress_bar
    from annotation_server.registry import ModelRegistry

    settings = settings_from(app=app, data_dir=data_dir, studies=studies)
    spec = load_app_or_exit(settings.app)
    chosen = model or next(iter(spec.trainers), None)
    if chosen is None:
        console.print(f"[red]error:[/red] app '{spec.name}' has no trainable models")
        raise typer.Exit(2)
    if not studies.is_dir():
        console.print(f"[red]error:[/red] studies folder '{studies}' does not exist")
        raise typer.Exit(2)
    registry = ModelRegistry(settings.registry_dir(spec.name))
    source = next((m for m in spec.models if m.name == chosen), None)
    if isinstance(source, BundleModel) and registry.serving(chosen) is None:  # no server has registered it yet
        or_exit(lambda: registry.ensure_registered(chosen, Path(source.path)))
    store = LocalDatastore(studies)
    store.rescan()
    items = labeled_images(store)
    params = FineTuneParams(
        max_epochs=max_epochs,
        steps=steps,
        val_split=val_split,
        learning_rate=learning_rate,
        min_improvement=min_improvement,
        min_val_images=min_val_images,
        auto_promote=promote,
        device=device,
    )
    train_items, _ = or_exit(lambda: split(items, val_split))
    with progress_bar(f"{chosen} on {len(train_items)} labels", params.total_steps(len(train_items))) as progress:
        outcome = or_exit(lambda: fine_tune(dict(spec.trainers), chosen, items, registry, params, progress))
    store.close()
    verdict = "promoted, now serving" if outcome.promoted else f"kept as a candidate ({outcome.gate.reason})"
    console.print(f"{outcome.version.label}: {verdict}; curve {Path(outcome.version.path) / 'training_curve.png'}")
    typer.echo(outcome.model_dump_json(indent=1))


def main() -> None:
    cli()
