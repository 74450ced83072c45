"""One supervised training loop for every model the server trains: shipped models, on-site fine-tuning, FL.

The loop knows nothing about phantoms, clicks or datastores: it takes batches, a loss, a validation
function and a progress callback (rich bars in the terminal, job status on the server), keeps the best
weights by validation Dice, and reports a history that model cards and training curves are made from.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from monai.losses import DiceCELoss


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    val_every: int = 100
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None


@dataclass(frozen=True)
class TrainProgress:
    step: int
    total_steps: int
    loss: float
    val_dice: float | None
    best_dice: float | None
    elapsed_s: float

    @property
    def eta_s(self) -> float:
        return self.elapsed_s / max(self.step, 1) * (self.total_steps - self.step)


@dataclass
class TrainHistory:
    losses: list[tuple[int, float]] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    best_dice: float = -math.inf
    best_step: int = 0
    wall_s: float = 0.0
    best_state: dict[str, torch.Tensor] | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "losses": self.losses,
            "validation": self.validation,
            "best_dice": self.best_dice,
            "best_step": self.best_step,
            "wall_s": round(self.wall_s, 1),
        }


Batch = tuple[torch.Tensor, torch.Tensor]


def train(
    network: torch.nn.Module,
    batches: Iterator[Batch],
    settings: TrainSettings,
    validate: Callable[[torch.nn.Module], float] | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    loss_fn: torch.nn.Module | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainHistory:
    """Train `network` in place for `settings.steps` steps; returns the history with the best weights."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    device = torch.device(settings.device)
    network.to(device)
    loss_fn = loss_fn or DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=1e-5, smooth_dr=1e-5)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=settings.learning_rate, total_steps=settings.steps, pct_start=0.1
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    history = TrainHistory()
    started = time.monotonic()
    running = 0.0
    for step in range(1, settings.steps + 1):
        if should_stop is not None and should_stop():
            break
        network.train()
        inputs, targets = next(batches)
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
            loss = loss_fn(network(inputs), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        running = loss.item() if step == 1 else 0.9 * running + 0.1 * loss.item()
        history.losses.append((step, round(loss.item(), 5)))
        val_dice = None
        if validate is not None and (step % settings.val_every == 0 or step == settings.steps):
            network.eval()
            with torch.no_grad():
                val_dice = float(validate(network))
            history.validation.append((step, round(val_dice, 5)))
            if val_dice > history.best_dice:
                history.best_dice, history.best_step = val_dice, step
                history.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in network.state_dict().items()})
        if progress is not None:
            best = history.best_dice if history.validation else None
            progress(TrainProgress(step, settings.steps, running, val_dice, best, time.monotonic() - started))
    history.wall_s = time.monotonic() - started
    if history.best_state is None:
        history.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in network.state_dict().items()})
    return history
