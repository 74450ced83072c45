"""`annotate-server projects create|status|export`: multi-reader projects from the command line, on the
studies folder directly (the same projects.sqlite the server uses; safe while it runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from annotation_server.cli_support import cli_actor, cli_audit, console, load_app_or_exit, or_exit

projects_app = typer.Typer(help="Multi-reader projects: create, progress, agreement report export.")

StudiesOption = Annotated[Path, typer.Option("--studies", help="The site's studies folder (as given to the server)")]
DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="Data folder (for the audit trail)")]


def _service(studies: Path, app: str):  # type: ignore[no-untyped-def]
    from annotation_server.datastore import LocalDatastore
    from annotation_server.learning.strategies import builtin_strategies
    from annotation_server.projects.service import ProjectService
    from annotation_server.projects.store import ProjectStore

    if not studies.expanduser().is_dir():
        console.print(f"[red]error:[/red] studies folder '{studies}' does not exist")
        raise typer.Exit(2)
    store = LocalDatastore(studies.expanduser())
    store.rescan()
    labels = dict(load_app_or_exit(app).labels)
    return ProjectService(ProjectStore.in_state_dir(store.state_dir), store, labels, builtin_strategies())


@projects_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Project name")],
    studies: StudiesOption,
    readers: Annotated[str, typer.Option("--readers", help="Comma-separated reader user names")],
    app: Annotated[str, typer.Option("--app")] = "kidney",
    images: Annotated[str | None, typer.Option("--images", help="Comma-separated image ids")] = None,
    filter: Annotated[str | None, typer.Option("--filter", help="Glob over image ids")] = None,
    strategy: Annotated[str | None, typer.Option("--strategy", help="e.g. random, first")] = None,
    count: Annotated[int | None, typer.Option("--count")] = None,
    per_image: Annotated[int, typer.Option("--readers-per-image")] = 2,
    adjudicator: Annotated[str | None, typer.Option("--adjudicator")] = None,
    due: Annotated[str | None, typer.Option("--due", help="YYYY-MM-DD")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threshold: Annotated[float, typer.Option("--threshold", help="flag cases below this Dice")] = 0.8,
    data_dir: DataDirOption = None,
) -> None:
    """Create a project; prints it (with its id) as JSON."""
    from pydantic import ValidationError

    from annotation_server.projects.models import ProjectCreate

    try:
        spec = ProjectCreate(
            name=name,
            app=app,
            images=images.split(",") if images else None,
            filter=filter,
            strategy=strategy,
            count=count,
            readers_per_image=per_image,
            readers=[r.strip() for r in readers.split(",") if r.strip()],
            adjudicator=adjudicator,
            due=due,
            seed=seed,
            agreement_threshold=threshold,
        )
    except ValidationError as exc:
        console.print(f"[red]error:[/red] {exc.errors()[0]['msg']}")
        raise typer.Exit(2) from None
    service = _service(studies, app)
    project = or_exit(lambda: service.create(spec, cli_actor()))
    cli_audit(data_dir).record("project.create", cli_actor(), None, str(project.id), name=project.name)
    typer.echo(project.model_dump_json(indent=2))


@projects_app.command("status")
def status(project_id: int, studies: StudiesOption, app: Annotated[str, typer.Option("--app")] = "kidney") -> None:
    """Progress: cases, closed cases, reads done per reader (JSON)."""
    service = _service(studies, app)
    typer.echo(or_exit(lambda: service.status(project_id)).model_dump_json(indent=2))


@projects_app.command("export")
def export(
    project_id: int,
    studies: StudiesOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json, report.csv and report.png")],
    app: Annotated[str, typer.Option("--app")] = "kidney",
) -> None:
    """Write the agreement report as JSON, CSV and a PNG plot."""
    from annotation_server.projects.report import report_csv, report_png

    service = _service(studies, app)
    report = or_exit(lambda: service.report(project_id))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.csv").write_text(report_csv(report))
    (out / "report.png").write_bytes(report_png(report))
    console.print(f"wrote {out}/report.json, report.csv, report.png ({len(report['flagged_cases'])} flagged cases)")
