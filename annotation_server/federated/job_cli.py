"""`annotate-server fl job | simulate | import`: export the NVFlare job, simulate a federation, import its result.

annotate-server fl job --app kidney --rounds 5 --out build/fl_job [--sites hospital-a,hospital-b]
annotate-server fl simulate --app kidney --sites 2 --rounds 2 --workdir /tmp/fl-sim
annotate-server fl import --job-dir DIR --studies /data/kidney-ct [--data-dir DIR]

Registered on `fl_app` by `register_job_commands`; NVFlare and torch are imported only when a command runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from annotation_server.cli_support import console, load_app_or_exit, or_exit, settings_from

AppOption = Annotated[str | None, typer.Option("--app", help="App name (e.g. kidney) or path to an app folder")]
ModelOption = Annotated[str | None, typer.Option(help="Model to train (default: the app's first trainable model)")]
LocalStepsOption = Annotated[
    int | None, typer.Option(min=1, help="Training steps per site and round (default: the app's federated config)")
]


def _run(action: Any) -> Any:
    """Run a command body; a failed federation exits 1, other domain errors (bad input) exit 2."""
    from annotation_server.federated.nvflare_support import FederationFailedError

    def failed_run_exits_1() -> Any:
        try:
            return action()
        except FederationFailedError as exc:
            console.print(f"[red]federation failed:[/red] {escape(str(exc))}")
            raise typer.Exit(1) from exc

    return or_exit(failed_run_exits_1)


def _app(name: str | None) -> Any:
    return load_app_or_exit(settings_from(app=name).app)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """NVFlare's simulator and its child processes log to standard output; keep that for the JSON summary."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def job_command(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the job into (job = OUT/<model>_fedavg)")],
    app: AppOption = None,
    model: ModelOption = None,
    rounds: Annotated[int, typer.Option(min=1, help="FedAvg rounds")] = 5,
    sites: Annotated[
        str | None, typer.Option(help="Comma-separated site names (default: one app for whichever sites join)")
    ] = None,
    min_clients: Annotated[int, typer.Option(min=1, help="Sites needed per round when --sites is not given")] = 2,
    local_steps: LocalStepsOption = None,
    initial_bundle: Annotated[
        Path | None, typer.Option(help="Bundle to start from (default: the app's shipped bundle)")
    ] = None,
) -> None:
    """Export the NVFlare FedAvg job (submit it with `nvflare job submit -j OUT/<model>_fedavg`)."""
    from annotation_server.federated.nvflare_job import export_job
    from annotation_server.federated.nvflare_support import require_nvflare

    spec = _app(app)
    names = [s.strip() for s in sites.split(",") if s.strip()] if sites else None
    extra = {} if names else {"min_clients": min_clients}
    _run(require_nvflare)
    job_dir = _run(lambda: export_job(spec, out, model, rounds, names, local_steps, initial_bundle, **extra))
    console.print(f"job written to {job_dir}; submit it with: nvflare job submit -j {job_dir}")
    typer.echo(str(job_dir))


def simulate_command(
    workdir: Annotated[Path, typer.Option(help="New or empty folder for the sites, the NVFlare workspace, summary")],
    app: AppOption = None,
    model: ModelOption = None,
    sites: Annotated[int, typer.Option(min=2, help="Number of simulated hospitals")] = 2,
    rounds: Annotated[int, typer.Option(min=1, help="FedAvg rounds")] = 2,
    images: Annotated[int, typer.Option(min=2, help="Phantom studies with final labels per site")] = 6,
    local_steps: LocalStepsOption = None,
    small: Annotated[bool, typer.Option(help="Small clean phantoms (fast; for tests and demos)")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="Torch threads per site")] = None,
    seed: Annotated[int, typer.Option(help="Phantom seed")] = 0,
) -> None:
    """Simulate a federation of phantom hospitals in NVFlare's simulator; prints a JSON summary."""
    from annotation_server.federated.simulation import simulate

    logging.basicConfig(level=logging.WARNING)
    spec = _app(app)
    with _stdout_to_stderr():
        summary = _run(
            lambda: simulate(
                spec,
                sites=sites,
                rounds=rounds,
                workdir=workdir,
                model=model,
                images_per_site=images,
                local_steps=local_steps,
                small=small,
                threads=threads,
                seed=seed,
            )
        )
    typer.echo(json.dumps(summary, indent=1))


def import_command(
    job_dir: Annotated[
        Path, typer.Option(help="Job result: `nvflare job download` folder, simulator workspace or the .pt file")
    ],
    app: AppOption = None,
    model: ModelOption = None,
    studies: Annotated[
        Path | None, typer.Option(help="This site's studies: its held-out final labels run the promotion gate")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="This site's data folder holding the model registry")] = None,
    val_split: Annotated[float, typer.Option(help="Held-out share (as the job's --val-split)")] = 0.2,
    min_improvement: Annotated[float, typer.Option(help="Mean Dice the new version must gain to be promoted")] = 0.0,
    min_val_images: Annotated[int, typer.Option(help="Fewest held-out images the gate decides on")] = 5,
    promote: Annotated[bool, typer.Option(help="Promote when the gate passes")] = True,
) -> None:
    """Import a finished job's global model as a new federated version; the promotion gate decides if it serves."""
    from annotation_server.federated.global_model import import_global_model
    from annotation_server.registry import ModelRegistry

    settings = settings_from(app=app, data_dir=data_dir, studies=studies)
    spec = _app(app)
    registry = ModelRegistry(settings.registry_dir(spec.name))
    outcome = _run(
        lambda: import_global_model(
            job_dir,
            spec,
            registry,
            studies=settings.studies,
            model=model,
            val_split=val_split,
            min_improvement=min_improvement,
            min_val_images=min_val_images,
            auto_promote=promote,
        )
    )
    if outcome.gate is None:
        console.print(f"{outcome.version.label}: registered as a candidate; give --studies to run the promotion gate")
    else:
        verdict = "promoted, now serving" if outcome.promoted else f"kept as a candidate ({outcome.gate.reason})"
        console.print(f"{outcome.version.label}: {verdict}")
    typer.echo(outcome.model_dump_json(indent=1))


def register_job_commands(fl_app: typer.Typer) -> None:
    fl_app.command("job")(job_command)
    fl_app.command("simulate")(simulate_command)
    fl_app.command("import")(import_command)
