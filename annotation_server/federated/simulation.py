"""`annotate-server fl simulate`: the whole federation on one machine, with independent phantom hospitals.

Each simulated site gets its own studies folder (phantoms from a different `PhantomConfig.site_variant`,
final labels saved through the datastore so they enter the site's queue), its own data folder with the
shipped model registered, and its own entry in a site config file the site script reads (the job itself
carries no paths). NVFlare's simulator then runs the exported job; a run that leaves no global model or
stops before the last round is an error even when NVFlare reports success. Finally every site imports the
global model through its own promotion gate.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotation_server.datastore import LocalDatastore
from annotation_server.errors import InvalidRequestError
from annotation_server.federated.app_models import shipped_bundle
from annotation_server.federated.entries import QueueStatus
from annotation_server.federated.global_model import GLOBAL_MODEL, METRICS_SUMMARY, import_global_model
from annotation_server.federated.nvflare_job import JobOptions, job_options, staged_recipe
from annotation_server.federated.nvflare_support import FederationFailedError, require_nvflare
from annotation_server.federated.site import attach_federated_queue
from annotation_server.federated.site_client import ROUNDS_LOG
from annotation_server.federated.site_config import SITE_CONFIG_ENV
from annotation_server.imaging import write_volume
from annotation_server.phantoms import PhantomConfig, generate_phantom
from annotation_server.registry import ModelRegistry
from annotation_server.settings import Settings

logger = logging.getLogger(__name__)

SIM_JOB = "simulate_job"
SITE_PROFILE_FIELDS = ("phase_weights", "noise_std_hu", "tumor_prob", "cyst_prob", "intensity_offset_hu")


@dataclass(frozen=True)
class SimulatedSite:
    name: str
    studies: Path
    data_dir: Path
    variant: int
    images: int

    def registry(self, app: str) -> ModelRegistry:
        return ModelRegistry(Settings(data_dir=self.data_dir).registry_dir(app))


def site_phantom_config(variant: int, small: bool = False) -> PhantomConfig:
    """The site's phantom distribution; `small` keeps its contrast, noise and lesion profile on a small clean
    grid (80x64x64 voxels of 3 mm, the kidneys in view), for tests that must run in seconds."""
    profile = PhantomConfig.site_variant(variant)
    if not small:
        return profile
    update = {name: getattr(profile, name) for name in SITE_PROFILE_FIELDS}
    return PhantomConfig.easy().model_copy(update={**update, "fov_mm": (240.0, 192.0, 192.0)})


def prepare_site(
    app: Any, model: str, name: str, root: Path, variant: int, images: int, seed: int, small: bool = False
) -> SimulatedSite:
    """A hospital of phantoms: studies with final labels in its queue, and a registry serving the shipped model."""
    studies, data_dir = root / "studies", root / "data"
    studies.mkdir(parents=True)
    config = site_phantom_config(variant, small)
    phantoms = []
    for index in range(images):
        phantom = generate_phantom(seed + index, config)
        write_volume(phantom.image, phantom.geometry, studies / f"{name}-case{index:03d}.nii.gz")
        phantoms.append(phantom)
    datastore = LocalDatastore(studies)
    try:
        datastore.rescan()
        queue, _ = attach_federated_queue(datastore, app.federated)
        for index, phantom in enumerate(phantoms):  # saved like an annotator's correction, so it is queued
            datastore.save_label_array(f"{name}-case{index:03d}", phantom.label, author=f"{name}-annotator")
        for entry in queue.list_entries(limit=None)[1]:
            if entry.status is QueueStatus.pending_review:  # apps that want review: the simulation approves
                queue.approve(entry.id, reviewer="simulation")
        queue.close()
    finally:
        datastore.close()
    site = SimulatedSite(name, studies.resolve(), data_dir.resolve(), variant, images)
    site.registry(app.name).ensure_registered(model, shipped_bundle(app, model))
    return site


def prepare_sites(
    app: Any, model: str, workdir: Path, count: int, images: int, seed: int = 0, small: bool = False
) -> list[SimulatedSite]:
    return [
        prepare_site(app, model, f"site-{k}", workdir / "sites" / f"site-{k}", k - 1, images, seed + 1000 * k, small)
        for k in range(1, count + 1)
    ]


def write_site_config(sites: Sequence[SimulatedSite], path: Path, threads: int | None) -> Path:
    """The site config file all simulated sites share (looked up by site name), like each hospital's own."""
    entries = {s.name: {"studies": str(s.studies), "threads": threads} for s in sites}
    path.write_text(json.dumps({"sites": entries}, indent=1))
    return path


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set variables for the simulator's child processes (they inherit them), restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _error_lines(workspace: Path, limit: int = 12) -> list[str]:
    """The errors NVFlare logged, to say why a run failed without sending people into its logs first."""
    lines: list[str] = []
    for log in sorted(workspace.rglob("log.txt")):
        for line in log.read_text(errors="replace").splitlines():
            if re.search(r"\bERROR\b|Error:|Exception:", line):
                lines.append(f"{log.relative_to(workspace).parts[0]}: {line.strip()[:400]}")
    return lines[-limit:]


def check_run(workspace: Path, rounds: int) -> dict[str, Any]:
    """The run's metrics summary, or FederationFailedError: NVFlare's simulator can return success after a
    site failed to start or a round was aborted, so success is judged from what the server left."""
    server_app = workspace / "server" / SIM_JOB / "app_server"
    summary_files = sorted((workspace / "server").rglob(METRICS_SUMMARY))
    summary = json.loads(summary_files[0].read_text()) if summary_files else {}
    problems = []
    if not (server_app / GLOBAL_MODEL).is_file():
        problems.append(f"no global model ({GLOBAL_MODEL}) was written")
    if summary.get("final_round") != rounds - 1:
        problems.append(f"the last completed round is {summary.get('final_round')}, expected {rounds - 1}")
    if problems:
        errors = "\n  ".join(_error_lines(workspace)) or "(no error lines found)"
        raise FederationFailedError(
            f"the federated run failed: {'; '.join(problems)}. NVFlare's errors:\n  {errors}\nlogs: {workspace}"
        )
    return summary


def run_simulation(
    options: JobOptions, initial_bundle: Path, sites: Sequence[SimulatedSite], workdir: Path, threads: int | None
) -> Path:
    """Run the job in NVFlare's simulator with one client per site; returns the checked workspace."""
    require_nvflare()
    from nvflare.recipe import SimEnv

    config = write_site_config(sites, workdir / "site_config.json", threads)
    workspace_root = workdir / "nvflare"
    workspace = workspace_root / options.name
    env = SimEnv(clients=[s.name for s in sites], num_threads=len(sites), workspace_root=str(workspace_root))
    # The sites read their studies from the config; HOME keeps NVFlare's per-user files out of the real home.
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    environment = {SITE_CONFIG_ENV: str(config), "HOME": str(home)}
    with _environment(**environment), staged_recipe(options, initial_bundle) as recipe:
        try:
            recipe.run(env)
        except Exception as exc:  # SimEnv raises on a non-zero exit; the check below explains it
            logger.error("NVFlare simulator: %s", exc)
    check_run(workspace, options.rounds)
    return workspace


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_ROUND_STARTED = re.compile(r"Round (\d+) started\.")


def server_round_times(workspace: Path) -> list[float]:
    """Seconds each FedAvg round took on the server (task sent to aggregated), read from its log; round 0 also
    holds the sites' start-up (imports, preprocessing). Best effort: empty when the log format is unknown."""
    from datetime import datetime

    log = workspace / "server" / "log.txt"
    if not log.is_file():
        return []
    marks: list[float] = []
    last: float | None = None
    for line in log.read_text(errors="replace").splitlines():
        stamp = _LOG_TIME.match(line)
        if stamp:
            last = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        elif last is not None and (_ROUND_STARTED.search(line) or "Finished FedAvg." in line):
            marks.append(last)
    return [round(b - a, 1) for a, b in itertools.pairwise(marks)]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def site_rounds(site: SimulatedSite) -> list[dict[str, Any]]:
    """The site's own record of each round (samples, Dice of the received model, local train time)."""
    from annotation_server.datastore.local import STATE_DIRNAME

    return _read_jsonl(site.studies / STATE_DIRNAME / ROUNDS_LOG)


def sent_updates(workspace: Path, site: str) -> list[dict[str, Any]]:
    """What the site's audit filter recorded leaving the site, one record per round."""
    from annotation_server.federated.audit import AUDIT_LOG

    return [r for path in sorted((workspace / site).rglob(AUDIT_LOG)) for r in _read_jsonl(path)]


def _site_report(site: SimulatedSite, outcome: Any, workspace: Path, app: str) -> dict[str, Any]:
    """One site's part of the summary: its rounds (own log), what it sent (audit), its gate decision."""
    rounds_log = site_rounds(site)
    gate = outcome.gate
    return {
        "phantom_variant": site.variant,
        "images": site.images,
        "train_images": rounds_log[-1]["num_samples"] if rounds_log else None,
        "val_images": outcome.val_images,
        "rounds": [
            {k: r[k] for k in ("round", "num_samples", "dice", "steps", "eval_s", "train_s", "round_s")}
            for r in rounds_log
        ],
        "sent": [
            {"round": u["round"], "data_kind": u["data_kind"], "params": len(u["params"]), "meta": u["meta"]}
            for u in sent_updates(workspace, site.name)
        ],
        "dice_before": gate.serving_dice if gate else None,
        "dice_after": gate.candidate_dice if gate else None,
        "new_version": outcome.version.version,
        "status": outcome.version.status,
        "promoted": outcome.promoted,
        "gate": gate.reason if gate else None,
        "registry": str(site.registry(app).root),
    }


def simulate(
    app: Any,
    sites: int = 2,
    rounds: int = 2,
    workdir: Path = Path("fl-simulation"),
    model: str | None = None,
    images_per_site: int = 4,
    local_steps: int | None = None,
    small: bool = False,
    threads: int | None = None,
    seed: int = 0,
    **job_overrides: Any,
) -> dict[str, Any]:
    """Prepare `sites` phantom hospitals in `workdir`, federate, import the global model at each; a JSON summary."""
    require_nvflare()
    if sites < 2:
        raise InvalidRequestError("a federation needs at least 2 sites")
    workdir = Path(workdir).expanduser().resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise InvalidRequestError(f"workdir {workdir} is not empty; give a new or empty folder")
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    names = [f"site-{k}" for k in range(1, sites + 1)]
    options = job_options(app, model, rounds, names, local_steps, **job_overrides)
    prepared = prepare_sites(app, options.model, workdir, sites, images_per_site, seed, small)
    prepared_s = time.monotonic() - started
    threads = threads or max(1, (os.cpu_count() or 1) // sites)
    run_started = time.monotonic()
    workspace = run_simulation(options, shipped_bundle(app, options.model), prepared, workdir, threads)
    run_s = time.monotonic() - run_started
    per_site = {}
    for site in prepared:
        outcome = import_global_model(
            workspace,
            app,
            site.registry(app.name),
            studies=site.studies,
            model=options.model,
            val_split=options.val_split,
            provenance={
                "job_id": SIM_JOB,
                "job_name": options.name,
                "rounds": rounds,
                "sites": names,
                "simulated": True,
            },
        )
        per_site[site.name] = _site_report(site, outcome, workspace, app.name)
    summary_file = next((workspace / "server").rglob(METRICS_SUMMARY))
    metrics = json.loads(summary_file.read_text())
    rounds_file = summary_file.parent / metrics.get("round_metrics_file", "round_metrics.jsonl")
    result = {
        "app": app.name,
        "model": options.model,
        "sites": names,
        "rounds": rounds,
        "local_steps": options.local_steps,
        "wall_s": round(time.monotonic() - started, 1),
        "prepare_s": round(prepared_s, 1),
        "federation_s": round(run_s, 1),
        "import_s": round(time.monotonic() - run_started - run_s, 1),
        "round_s": server_round_times(workspace),
        "global_metrics": metrics.get("final_aggregated_metrics"),
        "round_metrics": _read_jsonl(rounds_file),
        "per_site": per_site,
        "workspace": str(workspace),
        "global_model": str(workspace / "server" / SIM_JOB / "app_server" / GLOBAL_MODEL),
    }
    (workdir / "summary.json").write_text(json.dumps(result, indent=1))
    return result
