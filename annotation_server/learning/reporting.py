"""Training feedback: a rich progress bar in the terminal and a training-curve PNG beside the weights."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from annotation_server.learning.trainer import TrainHistory, TrainProgress


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[TrainProgress], None]]:
    """Yields a callback for `train(progress=...)`: a rich bar on a terminal, plain lines in logs and CI."""
    console = Console(stderr=True)  # stdout stays free for the JSON result scripts print
    if not console.is_terminal:
        every = max(1, total // 20)

        def log_line(p: TrainProgress) -> None:
            if p.step % every == 0 or p.step == p.total_steps or p.val_dice is not None:
                dice = f"{p.best_dice:.4f}" if p.best_dice is not None else "-"
                print(
                    f"{description} step {p.step}/{p.total_steps} loss {p.loss:.4f} best val Dice {dice} "
                    f"elapsed {p.elapsed_s:.0f}s eta {p.eta_s:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )

        yield log_line
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  val Dice {task.fields[dice]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total, loss=0.0, dice="-")

        def update(p: TrainProgress) -> None:
            dice = f"{p.best_dice:.4f}" if p.best_dice is not None else "-"
            # the loop's own count: `total` is an estimate (a click model makes several samples per label)
            bar.update(task, completed=p.step, total=p.total_steps, loss=p.loss, dice=dice)

        yield update


def plot_history(history: TrainHistory, path: Path, title: str) -> Path:
    """Loss per step and validation Dice per evaluation, as a PNG (matplotlib's Agg backend, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    if history.losses:
        steps, losses = zip(*history.losses, strict=True)
        loss_axis.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=0.8, label="loss")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss (Dice + CE)", color="tab:blue")
    if history.validation:
        dice_axis = loss_axis.twinx()
        steps, dices = zip(*history.validation, strict=True)
        dice_axis.plot(steps, dices, color="tab:red", marker="o", label="validation Dice")
        dice_axis.set_ylabel("validation Dice", color="tab:red")
        dice_axis.set_ylim(0, 1)
    loss_axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
