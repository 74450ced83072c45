"""`annotate-server batch infer`: batch inference from a shell, with a progress bar.

annotate-server batch infer --model kidney_seg [--images unlabeled | --images ID --images ID ...]
    [--app kidney] [--studies DIR | http://pacs/dicom-web] [--data-dir DIR] [--label-tag original]

It runs the same job as POST /batch/infer/{model} in this process (the models are loaded here), on the same
studies and data folder as the server, so results land in the same datastore (and PACS, as SEGs). The final
job, with per-image state and errors, is printed as JSON on stdout; the exit code is 1 when an image failed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from annotation_server.cli_support import console, load_app_or_exit, or_exit, settings_from

batch_app = typer.Typer(help="Run a model over many images (MONAI Label's batch inference).")


@batch_app.command("infer")
def batch_infer(
    model: Annotated[str, typer.Option(help="automatic segmentation model, e.g. kidney_seg")],
    images: Annotated[
        list[str] | None, typer.Option(help="all | unlabeled | labeled, or image ids (repeatable); default all")
    ] = None,
    app: Annotated[str | None, typer.Option("--app", help="App name or path to an app folder")] = None,
    studies: Annotated[str | None, typer.Option(help="Folder of studies, or a PACS's DICOMweb URL")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Per-user data folder (as the server's)")] = None,
    label_tag: Annotated[str, typer.Option(help="tag the results are saved under")] = "original",
) -> None:
    """Label every chosen image with the model's output (tag `original`, a SEG in the PACS on DICOMweb)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from annotation_server.server import build_services

    settings = settings_from(app=app, studies=studies, data_dir=data_dir)
    spec = load_app_or_exit(settings.app)
    chosen: str | list[str] = (
        "all"
        if not images
        else images[0]
        if len(images) == 1
        and images[0]
        in (
            "all",
            "unlabeled",
            "labeled",
        )
        else list(images)
    )
    services = or_exit(lambda: build_services(settings, spec))
    try:
        job = or_exit(lambda: services.batch.start(model, chosen, label_tag=label_tag, request={"trigger": "cli"}))
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
            task = bar.add_task(f"{model} on {job.total} images", total=job.total)
            last = [-1]

            def show(state):  # type: ignore[no-untyped-def]
                bar.update(task, completed=state.done)
                if not console.is_terminal and state.done != last[0]:  # plain lines in logs and CI
                    last[0] = state.done
                    print(f"{model}: {state.done}/{state.total} images, {state.failed} failed", file=sys.stderr)

            job = services.batch.wait(job.id, poll=show)
    finally:
        services.close()
    typer.echo(job.model_dump_json(indent=1))
    for image_id, error in job.errors.items():
        console.print(f"[red]failed:[/red] {image_id}: {error}")
    if job.status != "DONE" or job.failed:
        raise typer.Exit(1)
