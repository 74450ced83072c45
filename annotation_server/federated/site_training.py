"""One site's share of a federated round, without NVFlare: train on the site's queue, report weights and counts.

The NVFlare site script (`site_client.py`) only moves models in and out; everything here can be tested and
reasoned about on its own. What a site sends is built by `outgoing_update` and checked by
`check_weights_only`: the network's own parameters (names and shapes of the shared architecture), the number
of training images (the FedAvg weight) and the validation Dice of the model it received. Never image or label
voxels, file paths, image ids or annotator names.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotation_server.checksums import file_sha256
from annotation_server.errors import InvalidRequestError, NotFoundError
from annotation_server.federated.app_models import fine_tune_recipe, shipped_bundle
from annotation_server.federated.site import open_site_queue
from annotation_server.federated.site_config import SiteSettings
from annotation_server.learning.finetune import LabeledImage, load_network, split
from annotation_server.learning.trainer import TrainSettings, train

logger = logging.getLogger(__name__)

NUM_SAMPLES_KEY = "NUM_STEPS_CURRENT_ROUND"  # NVFlare's FedAvg weights each site's update by this meta value
DICE_KEY = "dice"
ALLOWED_META = frozenset({NUM_SAMPLES_KEY})
ALLOWED_METRICS = frozenset({DICE_KEY})


@dataclass(frozen=True)
class LocalTraining:
    """The job-wide training options every site receives as script arguments (no site data in them)."""

    app: str
    model: str
    local_steps: int = 100
    batch_size: int = 2
    learning_rate: float = 5e-4
    val_split: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class RoundResult:
    """What one local round produced; only `outgoing_update(result)` of it leaves the site."""

    state_dict: dict[str, torch.Tensor]
    dice: float  # of the received global model, on the site's held-out labels
    num_samples: int  # training images (the FedAvg weight)
    steps: int
    train_s: float
    eval_s: float


def eligible_items(studies: Path) -> list[LabeledImage]:
    """The queue's eligible entries as training items, each checked to be the very bytes that were queued."""
    datastore, queue = open_site_queue(studies)
    try:
        items = []
        for entry in queue.eligible():
            try:
                label = datastore.label_version(entry.image_id, entry.label_tag, entry.label_version)
                image = datastore.image_path(entry.image_id)
            except NotFoundError as exc:
                logger.warning("queue entry %d skipped: %s", entry.id, exc)
                continue
            path = datastore.label_file(label)
            if not path.is_file() or file_sha256(path) != entry.label_sha256:
                logger.warning("queue entry %d skipped: its label file changed since it was queued", entry.id)
                continue
            items.append(
                LabeledImage(
                    image_id=entry.image_id,
                    image=image,
                    label=path,
                    label_version=entry.label_version,
                    label_sha256=entry.label_sha256,
                )
            )
        return items
    finally:
        queue.close()
        datastore.close()


def held_out_split(studies: Path, val_split: float) -> tuple[list[LabeledImage], list[LabeledImage]]:
    """(train, validation) of the site's eligible labels, split by a stable hash of the image id, so the site's
    job and `import_global_model` validate on the same images (the promotion gate compares like with like)."""
    items = eligible_items(studies)
    if len(items) < 2:
        raise InvalidRequestError(
            f"the federated queue of {studies} has {len(items)} eligible labels; a site needs at least 2 "
            "(one to train, one to validate): save or approve more final labels"
        )
    return split(items, val_split)


def _as_tensor(value: Any) -> torch.Tensor:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


class SiteTrainer:
    """The site's data, network and recipe, prepared once per job; `run_round` is one FedAvg round."""

    def __init__(self, options: LocalTraining, settings: SiteSettings) -> None:
        from annotation_server.app_spec import load_app

        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.options = options
        self.device = settings.device
        app = load_app(options.app)
        recipe = fine_tune_recipe(app, options.model)
        train_items, val_items = held_out_split(settings.studies, options.val_split)
        self.num_samples = len(train_items)
        self.num_validation = len(val_items)
        samples = recipe.samples(train_items)
        self.validate = recipe.validator(recipe.samples(val_items))
        self.batches = recipe.batches(samples, options.batch_size, options.seed)
        self.network = load_network(shipped_bundle(app, options.model), settings.device)
        self.reference = {name: tuple(value.shape) for name, value in self.network.state_dict().items()}

    def load_global(self, params: Mapping[str, Any]) -> None:
        """Load the received global weights; a model of another architecture is refused, not half-loaded."""
        unknown = sorted(set(params) - set(self.reference))
        missing = sorted(set(self.reference) - set(params))
        if unknown or missing:
            raise InvalidRequestError(
                f"the global model does not fit {self.options.model}: unknown {unknown[:3]}, missing {missing[:3]}"
            )
        self.network.load_state_dict({k: _as_tensor(v) for k, v in params.items()})

    def evaluate(self) -> float:
        self.network.eval()
        with torch.no_grad():
            return float(self.validate(self.network))

    def run_round(self, global_params: Mapping[str, Any], round_index: int = 0) -> RoundResult:
        self.load_global(global_params)
        started = time.monotonic()
        dice = self.evaluate()
        evaluated = time.monotonic()
        settings = TrainSettings(
            steps=self.options.local_steps,
            learning_rate=self.options.learning_rate,
            val_every=self.options.local_steps + 1,  # no mid-round validation: FedAvg averages the last weights
            device=self.device,
            seed=self.options.seed + round_index,
        )
        history = train(self.network, self.batches, settings, validate=None)
        state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}
        return RoundResult(
            state_dict=state,
            dice=dice,
            num_samples=self.num_samples,
            steps=len(history.losses),
            train_s=time.monotonic() - evaluated,
            eval_s=evaluated - started,
        )


def outgoing_update(result: RoundResult) -> dict[str, Any]:
    """The only thing a site sends: `FLModel(**outgoing_update(result))` (weights, Dice, training-image count)."""
    return {
        "params": result.state_dict,
        "metrics": {DICE_KEY: float(result.dice)},
        "meta": {NUM_SAMPLES_KEY: int(result.num_samples)},
    }


def check_weights_only(update: Mapping[str, Any], reference: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse to send anything but the shared network's parameters and plain numbers.

    Parameters must be exactly the network's names and shapes (an image- or label-shaped array cannot hide
    among them), metrics and meta only the known numeric keys (no strings at all: no paths, ids or names).
    """
    params = update.get("params") or {}
    if set(params) != set(reference):
        raise InvalidRequestError("outgoing update: parameter names differ from the shared network's")
    for name, value in params.items():
        shape = tuple(getattr(value, "shape", ()))
        if shape != tuple(reference[name]) or not isinstance(value, torch.Tensor | np.ndarray):
            raise InvalidRequestError(f"outgoing update: '{name}' is not the network's {reference[name]} weight")
    for part, allowed in (("metrics", ALLOWED_METRICS), ("meta", ALLOWED_META)):
        values = update.get(part) or {}
        extra = set(values) - allowed
        if extra:
            raise InvalidRequestError(f"outgoing update: {part} may only hold {sorted(allowed)}, not {sorted(extra)}")
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
                raise InvalidRequestError(f"outgoing update: {part}['{key}'] must be a finite number")
    unexpected = set(update) - {"params", "metrics", "meta"}
    if unexpected:
        raise InvalidRequestError(f"outgoing update: unexpected parts {sorted(unexpected)}")
