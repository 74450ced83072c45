"""Bringing a finished federated job's global model home: a new registry version, through the promotion gate.

The global model is found in any of the layouts NVFlare leaves it in: the simulator's workspace
(`<workspace>/server/simulate_job/app_server/FL_global_model.pt`), a job downloaded with
`nvflare job download <id> -o DIR` (`DIR/<id>/workspace/app_server/...`), an `app_server` folder, or the
file itself. The version is registered with source "federated" and provenance (job, rounds, sites, sample
counts, metrics), then the serving and the new version are scored on the site's own held-out final labels
(the same split the site's job validated on) and the usual gate decides.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from annotation_server.errors import InvalidRequestError, NotFoundError
from annotation_server.federated.app_models import fine_tune_recipe, shipped_bundle, trainable_model
from annotation_server.federated.site_training import held_out_split
from annotation_server.learning.finetune import load_network, sample_scores, write_version_bundle
from annotation_server.learning.promotion import (
    MIN_VAL_IMAGES,
    NONINFERIORITY_MARGIN,
    GateDecision,
    apply_gate,
    decide,
)
from annotation_server.registry import ModelRegistry, ModelVersion

logger = logging.getLogger(__name__)

GLOBAL_MODEL = "FL_global_model.pt"
SERVER_APP = "app_server"
METRICS_SUMMARY = "metrics_summary.json"
ROUND_METRICS = "round_metrics.jsonl"


class ImportOutcome(BaseModel):
    """The registered version and what the gate decided (no gate without validation labels)."""

    version: ModelVersion
    gate: GateDecision | None
    promoted: bool
    global_model: str
    val_images: int


def find_global_model(source: Path) -> Path:
    """`FL_global_model.pt` of a job result, whichever NVFlare layout `source` is; a clear error otherwise."""
    source = Path(source).expanduser()
    if source.is_file():
        return source
    if not source.is_dir():
        raise NotFoundError(f"no job result at {source}: give the folder `nvflare job download` wrote, or the file")
    direct = source / GLOBAL_MODEL
    if direct.is_file():
        return direct
    found = sorted(p for p in source.rglob(GLOBAL_MODEL) if p.parent.name == SERVER_APP)
    if not found:
        raise NotFoundError(
            f"no {GLOBAL_MODEL} under {source}: the job may have failed or not finished (check the server log), "
            f"or this is not a job result; download it with `nvflare job download <job_id> -o DIR`"
        )
    if len(found) > 1:
        listing = ", ".join(str(p.relative_to(source)) for p in found)
        raise InvalidRequestError(f"{source} holds several job results ({listing}); point at one of them")
    return found[0]


def load_global_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a global checkpoint (`{"model": state_dict, ...}`), loaded without unpickling code."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidRequestError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping) or not state:
        raise InvalidRequestError(f"{path} holds no model state dict")
    tensors = {}
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        else:
            raise InvalidRequestError(
                f"{path}: '{name}' is not a plain tensor (a homomorphically encrypted job leaves only ciphertext on "
                "the server; import the decrypted model a site received instead)"
            )
    return tensors


def job_record(global_model: Path) -> dict[str, Any]:
    """What the job's server left beside the model: job name/id, rounds, aggregated and per-site metrics."""
    app_server = global_model.parent
    record: dict[str, Any] = {"global_model_file": global_model.name}
    for folder in (app_server.parent, app_server.parent.parent):
        meta = folder / "meta.json"
        if meta.is_file():
            try:
                data = json.loads(meta.read_text())
            except ValueError:
                continue
            record["job_name"] = data.get("name")
            record["job_id"] = data.get("job_id", data.get("name"))
            break
    summaries = sorted(app_server.parent.rglob(METRICS_SUMMARY))
    if summaries:
        summary = json.loads(summaries[0].read_text())
        record["final_round"] = summary.get("final_round")
        record["rounds"] = None if summary.get("final_round") is None else summary["final_round"] + 1
        record["global_metrics"] = summary.get("final_aggregated_metrics")
        record["best_round"] = summary.get("best_round")
        rounds_file = summaries[0].parent / summary.get("round_metrics_file", ROUND_METRICS)
        if rounds_file.is_file():
            record["round_metrics"] = [json.loads(line) for line in rounds_file.read_text().splitlines() if line]
    return record


def _sample_counts(record: Mapping[str, Any]) -> dict[str, int]:
    """Training images per site (the FedAvg weight each site reported), from the server's per-round records."""
    counts: dict[str, int] = {}
    for entry in record.get("round_metrics") or []:
        for site in entry.get("sites") or []:
            if isinstance(site, Mapping) and site.get("name") and site.get("weight") is not None:
                counts[str(site["name"])] = int(site["weight"])
    return counts


def import_global_model(
    source: Path,
    app: Any,
    registry: ModelRegistry,
    studies: Path | None = None,
    model: str | None = None,
    val_split: float = 0.2,
    min_improvement: float = 0.0,
    min_val_images: int = MIN_VAL_IMAGES,
    noninferiority_margin: float = NONINFERIORITY_MARGIN,
    auto_promote: bool = True,
    provenance: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> ImportOutcome:
    """Register the job's global model as a federated version of `model` at this site, then gate it.

    `studies` is the site's studies folder: its held-out eligible labels (the split the site's job used)
    score both versions. Without it the version stays a candidate and the gate is not run.
    """
    model = trainable_model(app, model)
    path = find_global_model(source)
    state = load_global_state(path)
    if registry.serving(model) is None:
        registry.ensure_registered(model, shipped_bundle(app, model))
    base = registry.serving(model)
    assert base is not None
    network = load_network(Path(base.path), device)
    expected = network.state_dict()
    if set(state) != set(expected) or any(tuple(state[k].shape) != tuple(v.shape) for k, v in expected.items()):
        raise InvalidRequestError(f"the global model in {path} does not fit {model} (other names or shapes)")
    record = job_record(path)
    record["sample_counts"] = _sample_counts(record)
    record = {**record, **dict(provenance or {}), "base_version": base.version}

    val_items: list[Any] = []
    serving_dice = candidate_dice = None
    serving_scores: list[float] = []
    candidate_scores: list[float] = []
    if studies is not None:
        recipe = fine_tune_recipe(app, model)
        _, val_items = held_out_split(Path(studies), val_split)
        samples = recipe.samples(val_items)
        serving_scores = sample_scores(recipe, network, samples)
        network.load_state_dict(state)
        candidate_scores = sample_scores(recipe, network, samples)
        serving_dice = sum(serving_scores) / len(serving_scores) if serving_scores else 0.0
        candidate_dice = sum(candidate_scores) / len(candidate_scores) if candidate_scores else 0.0
    metrics: dict[str, Any] = {"serving_version": base.version, "val_images": len(val_items)}
    if candidate_dice is not None and serving_dice is not None:
        metrics |= {"val_dice": round(candidate_dice, 5), "serving_val_dice": round(serving_dice, 5)}
    if record.get("global_metrics"):
        metrics["federated_metrics"] = record["global_metrics"]
    record["validation_labels"] = [
        {"image": i.image_id, "label_version": i.label_version, "sha256": i.label_sha256} for i in val_items
    ]
    with tempfile.TemporaryDirectory(dir=registry.root) as scratch:
        summary = {"source": "federated", "job": record.get("job_id") or record.get("job_name"), **metrics}
        bundle = write_version_bundle(Path(base.path), state, Path(scratch) / "bundle", summary)
        version = registry.add_version(
            model,
            bundle,
            "federated",
            metrics,
            record,
            note=f"federated global model of job {record.get('job_name') or path.name} ({record.get('rounds')} rounds)",
        )
    gate = None
    promoted = False
    if candidate_dice is not None and serving_dice is not None:
        gate = decide(
            candidate_scores, serving_scores, len(val_items), min_improvement, min_val_images, noninferiority_margin
        )
        promoted = apply_gate(registry, version, gate, auto_promote)
    return ImportOutcome(
        version=registry.get(model, version.version),
        gate=gate,
        promoted=promoted,
        global_model=str(path),
        val_images=len(val_items),
    )
