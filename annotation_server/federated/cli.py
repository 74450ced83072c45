"""`annotate-server fl ...`: the site's federated training queue and the annotation-effort report.

annotate-server fl queue list|count --studies DIR [--json]
annotate-server fl queue approve|exclude ENTRY --studies DIR [--reason TEXT]
annotate-server fl effort --studies DIR --out report.json --plot effort.png

These read the queue file directly (`<studies>/.annotation-server/fl_queue.sqlite`), so they work with or
without a running server. `fl_app` is kept free of heavy imports; more `fl` commands attach to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from annotation_server.errors import AnnotationServerError
from annotation_server.federated.job_cli import register_job_commands

if TYPE_CHECKING:
    from annotation_server.federated.entries import QueueEntry
    from annotation_server.federated.queue import FederatedQueue

fl_app = typer.Typer(help="Federated learning: the site's training queue of corrected labels and the effort report.")
queue_app = typer.Typer(help="The federated training queue: list, count, approve and exclude entries.")
fl_app.add_typer(queue_app, name="queue")
register_job_commands(fl_app)  # fl job | simulate | import
console = Console(stderr=True, soft_wrap=True)

StudiesOption = Annotated[Path, typer.Option("--studies", help="The site's studies folder (as given to the server)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]


def _open_queue(studies: Path):  # type: ignore[no-untyped-def]
    """The queue of `studies`; a clear exit when there is none (nothing is created by a read-only look)."""
    from annotation_server.datastore.local import STATE_DIRNAME
    from annotation_server.federated.queue import QUEUE_FILENAME, FederatedQueue

    path = studies.expanduser() / STATE_DIRNAME / QUEUE_FILENAME
    if not path.is_file():
        console.print(
            f"[red]error:[/red] no federated queue at {path}; labels enter it when the server saves them "
            f"(start it with `annotate-server --studies {studies}`)"
        )
        raise typer.Exit(2)
    return FederatedQueue(path)


def _fail(exc: AnnotationServerError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"


def _num(value: float | int | None, digits: int = 3) -> str:
    return "-" if value is None else f"{round(value, digits):g}"


def _print_entries(entries: list, title: str) -> None:  # type: ignore[type-arg]
    table = Table(title=title)
    for column in ("id", "image", "v", "status", "annotator", "saved", "model", "dice", "changed", "clicks", "s"):
        table.add_column(column, no_wrap=column in ("id", "image", "v"))  # what a person types back
    for e in entries:
        table.add_row(
            str(e.id),
            e.image_id,
            str(e.label_version),
            e.status.value + (f" ({e.reason})" if e.reason else ""),
            e.annotator,
            _when(e.saved_ts),
            f"{e.model} v{e.model_version or '?'}" if e.model else ("AI" if e.ai_assisted else "manual"),
            _num(e.dice),
            _num(e.voxels_changed),
            _num(e.interactions),
            _num(e.seconds, 1),
        )
    Console().print(table)


@queue_app.command("list")
def queue_list(
    studies: StudiesOption,
    status: Annotated[str | None, typer.Option(help="pending_review, eligible, excluded or superseded")] = None,
    annotator: Annotated[str | None, typer.Option(help="Only this annotator's labels")] = None,
    model_version: Annotated[str | None, typer.Option(help="Only labels pre-annotated by this model version")] = None,
    since: Annotated[datetime | None, typer.Option(help="Only labels saved at or after (e.g. 2025-03-01)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many entries")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many entries")] = 0,
    as_json: JsonOption = False,
) -> None:
    """Queue entries, newest first."""
    from annotation_server.federated.entries import QueueStatus

    try:
        chosen = QueueStatus(status) if status else None
    except ValueError:
        console.print(f"[red]error:[/red] unknown status '{status}'; use one of {', '.join(QueueStatus)}")
        raise typer.Exit(2) from None
    queue = _open_queue(studies)
    try:
        total, entries = queue.list_entries(
            status=chosen,
            annotator=annotator,
            model_version=model_version,
            since=since.timestamp() if since else None,
            limit=limit,
            offset=offset,
        )
    finally:
        queue.close()
    if as_json:
        typer.echo(json.dumps({"total": total, "entries": [e.model_dump(mode="json") for e in entries]}, indent=2))
        return
    _print_entries(entries, f"federated queue: {len(entries)} of {total} entries")


@queue_app.command("count")
def queue_count(studies: StudiesOption, as_json: JsonOption = False) -> None:
    """Entries per status."""
    queue = _open_queue(studies)
    try:
        counts = {status.value: n for status, n in queue.count().items()}
    finally:
        queue.close()
    if as_json:
        typer.echo(json.dumps({"total": sum(counts.values()), "by_status": counts}, indent=2))
        return
    table = Table(title="federated queue")
    table.add_column("status")
    table.add_column("entries", justify="right")
    for status, n in counts.items():
        table.add_row(status, str(n))
    table.add_row("[bold]total[/bold]", str(sum(counts.values())))
    Console().print(table)


@queue_app.command("approve")
def queue_approve(
    entry_id: Annotated[int, typer.Argument(help="Entry id (from `fl queue list`)")],
    studies: StudiesOption,
    reviewer: Annotated[str, typer.Option(help="Who approves")] = "reviewer",
    as_json: JsonOption = False,
) -> None:
    """Admit an entry to federated training."""
    _review(studies, lambda queue: queue.approve(entry_id, reviewer), "approved", as_json)


@queue_app.command("exclude")
def queue_exclude(
    entry_id: Annotated[int, typer.Argument(help="Entry id (from `fl queue list`)")],
    studies: StudiesOption,
    reason: Annotated[str, typer.Option(help="Why it must not be trained on")],
    reviewer: Annotated[str, typer.Option(help="Who excludes")] = "reviewer",
    as_json: JsonOption = False,
) -> None:
    """Keep an entry out of federated training (the reason is kept)."""
    _review(studies, lambda queue: queue.exclude(entry_id, reason, reviewer), "excluded", as_json)


def _review(studies: Path, decide: Callable[[FederatedQueue], QueueEntry], verb: str, as_json: bool) -> None:
    """Approve or exclude one entry and show it; a domain error is a red message and an exit code."""
    queue = _open_queue(studies)
    try:
        entry = decide(queue)
    except AnnotationServerError as exc:
        raise _fail(exc) from exc
    finally:
        queue.close()
    if as_json:
        typer.echo(entry.model_dump_json(indent=2))
        return
    _print_entries([entry], f"entry {entry.id} {verb}")


@fl_app.command("effort")
def effort(
    studies: StudiesOption,
    out: Annotated[Path | None, typer.Option("--out", help="Write the report as JSON here")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the report as a PNG plot here")] = None,
    bucket: Annotated[str, typer.Option(help="Time buckets of the per-model-version series: day or week")] = "week",
) -> None:
    """Annotation effort: AI-assisted vs manual labels, and per model version over time."""
    from annotation_server.federated.effort import write_effort_report

    if bucket not in ("day", "week"):
        console.print(f"[red]error:[/red] unknown bucket '{bucket}'; use day or week")
        raise typer.Exit(2)
    queue = _open_queue(studies)
    try:
        report = write_effort_report(queue.current(), out, plot, bucket)  # type: ignore[arg-type]
    finally:
        queue.close()
    table = Table(title=f"annotation effort: {report.labels} labels")
    for column in ("", "labels", "median s", "median clicks", "median voxels changed", "median Dice"):
        table.add_column(column)
    for name, summary in (("AI-assisted", report.ai_assisted), ("manual", report.manual)):
        table.add_row(
            name,
            str(summary.count),
            _num(summary.median_seconds, 1),
            _num(summary.median_interactions),
            _num(summary.median_voxels_changed),
            _num(summary.median_dice),
        )
    Console().print(table)
    for path in (out, plot):
        if path is not None:
            console.print(f"wrote {path}")
