"""The federated job: NVFlare's FedAvg recipe around the app's model and the site script.

`export_job` writes a standard NVFlare job folder (`meta.json`, `app_server/`, `app_<site>/` or one app for
all sites, each with `config/` and `custom/`) that a coordinator submits with `nvflare job submit`. The job
holds the public starting weights, the network definition and the site script, never a site path: each
site finds its own studies through its environment (see `site_config`).

NVFlare is imported lazily: without the `fl` extra the server and every other command still work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from annotation_server.errors import InvalidRequestError
from annotation_server.federated import fl_network, site_client
from annotation_server.federated.app_models import shipped_bundle, trainable_model
from annotation_server.federated.nvflare_support import require_nvflare
from annotation_server.inference.bundle import load_bundle
from annotation_server.inference.bundle_runtime import load_state_dict

SITE_SCRIPT = "site_client.py"
NETWORK_MODULE = "fl_network"
INITIAL_CHECKPOINT = "initial_model.pt"
TRAIN_TASK = "train"


@dataclass(frozen=True)
class JobOptions:
    """Everything the job says, the same for every site. Privacy defaults come from `AppSpec.federated`."""

    app: str
    model: str
    rounds: int = 2
    sites: tuple[str, ...] = ()  # named sites get their own app folder; none: one app for whichever sites join
    min_clients: int = 2
    local_steps: int = 100
    batch_size: int = 2
    learning_rate: float = 5e-4
    val_split: float = 0.2
    seed: int = 0
    exclude_vars: tuple[str, ...] = ()
    percentile_privacy: float | None = None
    extra_filters: tuple[Any, ...] = field(default=(), compare=False)  # NVFlare filters for tests/experiments

    @property
    def name(self) -> str:
        return f"{self.model}_fedavg"

    @property
    def train_args(self) -> str:
        return (
            f"--app {self.app} --model {self.model} --local-steps {self.local_steps} --batch-size {self.batch_size} "
            f"--learning-rate {self.learning_rate:g} --val-split {self.val_split:g} --seed {self.seed}"
        )


def job_options(
    app: Any,
    model: str | None = None,
    rounds: int = 2,
    sites: Sequence[str] | None = None,
    local_steps: int | None = None,
    **overrides: Any,
) -> JobOptions:
    """Options for `app` (an AppSpec): its trainable model and its `federated` privacy and step settings."""
    if rounds < 1:
        raise InvalidRequestError("a federated job needs at least 1 round")
    config = app.federated
    sites = tuple(sites or ())
    if len(set(sites)) != len(sites):
        raise InvalidRequestError(f"site names must be unique: {list(sites)}")
    values: dict[str, Any] = {
        "app": app.name,
        "model": trainable_model(app, model),
        "rounds": rounds,
        "sites": sites,
        "min_clients": len(sites) or 2,
        "local_steps": local_steps or config.local_steps,
        "exclude_vars": tuple(config.exclude_vars),
        "percentile_privacy": config.percentile_privacy,
    }
    return JobOptions(**{**values, **overrides})


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    """NVFlare writes relative script paths into the job as given, so the job is built from its staging folder."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _stage(options: JobOptions, initial_bundle: Path, staging: Path) -> dict[str, Any]:
    """Copy the site script and the network module, write the initial weights; return the model config."""
    shutil.copyfile(site_client.__file__, staging / SITE_SCRIPT)
    shutil.copyfile(fl_network.__file__, staging / f"{NETWORK_MODULE}.py")
    bundle = load_bundle(initial_bundle)
    network_def = json.loads(bundle.config_file.read_text()).get("network_def")
    if not isinstance(network_def, dict):
        raise InvalidRequestError(f"bundle {initial_bundle} has no network_def dict in its config")
    torch.save({"model": load_state_dict(bundle)}, staging / INITIAL_CHECKPOINT)
    return {"class_path": f"{NETWORK_MODULE}.BundleNetwork", "args": {"network_def": network_def}}


def _add_filters(recipe: Any, options: JobOptions) -> None:
    """Privacy filters first, then the audit, so the audit sees (and checks) exactly what leaves a site."""
    from nvflare.apis.dxo import DataKind
    from nvflare.app_common.filters.exclude_vars import ExcludeVars
    from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy

    from annotation_server.federated.audit import OutgoingUpdateAudit

    if options.exclude_vars:
        # A list, never a regex string: NVFlare compiles a string to re.Pattern, which its exporter cannot write.
        recipe.add_client_output_filter(ExcludeVars(exclude_vars=list(options.exclude_vars)), tasks=[TRAIN_TASK])
    if options.percentile_privacy is not None:
        # Only on weight differences: applied to full weights it would zero most of the model.
        recipe.add_client_output_filter(
            PercentilePrivacy(percentile=options.percentile_privacy, data_kinds=[DataKind.WEIGHT_DIFF]),
            tasks=[TRAIN_TASK],
        )
    for extra in options.extra_filters:
        recipe.add_client_output_filter(extra, tasks=[TRAIN_TASK])
    recipe.add_client_output_filter(OutgoingUpdateAudit(), tasks=[TRAIN_TASK])


def build_recipe(options: JobOptions, initial_bundle: Path, staging: Path) -> Any:
    """The FedAvg recipe; call inside `_working_dir(staging)` and export or run it there."""
    require_nvflare()
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.client.config import TransferType

    model = _stage(options, initial_bundle, staging)
    recipe = FedAvgRecipe(
        name=options.name,
        model=model,
        initial_ckpt=INITIAL_CHECKPOINT,  # relative: bundled into the server app, so the job is self-contained
        min_clients=options.min_clients,
        num_rounds=options.rounds,
        train_script=SITE_SCRIPT,
        train_args=options.train_args,
        key_metric="dice",
        key_metric_mode="max",
        params_transfer_type=TransferType.DIFF if options.percentile_privacy is not None else TransferType.FULL,
    )
    if options.sites:
        recipe.set_per_site_config({site: {"train_args": options.train_args} for site in options.sites})
    recipe.add_server_file(f"{NETWORK_MODULE}.py")
    # Sites run annotation-server itself: its classes in the job (the audit filter) are imported from the
    # installed package, not copied into the job as a partial package that would shadow it.
    recipe._job.set_app_packages(["annotation_server"])
    _add_filters(recipe, options)
    return recipe


@contextlib.contextmanager
def staged_recipe(options: JobOptions, initial_bundle: Path) -> Iterator[Any]:
    """A recipe built in a scratch staging folder that is the working directory while the caller uses it."""
    with tempfile.TemporaryDirectory(prefix="fl-job-") as scratch, _working_dir(Path(scratch)):
        yield build_recipe(options, initial_bundle, Path(scratch))


def export_job(
    app: Any,
    out_dir: Path,
    model: str | None = None,
    rounds: int = 2,
    sites: Sequence[str] | None = None,
    local_steps: int | None = None,
    initial_bundle: Path | None = None,
    **overrides: Any,
) -> Path:
    """Write the job folder under `out_dir`; returns `out_dir/<job name>` (what `nvflare job submit -j` takes).

    `initial_bundle` defaults to the app's shipped bundle of the model (the same public starting point at
    every site); pass a site's serving version to continue from it.
    """
    options = job_options(app, model, rounds, sites, local_steps, **overrides)
    bundle = Path(initial_bundle) if initial_bundle else shipped_bundle(app, options.model)
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with staged_recipe(options, bundle) as recipe:
        recipe.export(job_dir=str(out_dir))
    return out_dir / options.name
