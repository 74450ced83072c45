"""The training child process: `python -m annotation_server.learning.train_job SPEC.json`.

The server starts one per training job (see `learning.jobs`), so a crash, a leak or a kill never takes
serving down, and the GIL and CPU threads of training are not the server's. It reports progress as JSON
lines in the job's events file, which the server tails for `GET /train/`, `/info/` and the event stream.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from annotation_server.learning.finetune import FineTuneParams, LabeledImage, fine_tune, split
from annotation_server.learning.trainer import TrainProgress

EVENTS = "events.jsonl"
RESULT = "result"
PROGRESS = "progress"


class JobSpec(BaseModel):
    """Everything the child needs; written by the server into the job folder."""

    job_id: str
    app: str
    model: str
    registry_root: Path
    items: list[LabeledImage]
    params: FineTuneParams
    nice: int = 10


def _emit(events: Path, kind: str, payload: dict[str, Any]) -> None:
    with events.open("a") as fh:  # one short line per write: a reader never sees half an event
        fh.write(json.dumps({"type": kind, "ts": time.time(), **payload}) + "\n")
        fh.flush()


def run(spec_file: Path) -> int:
    from annotation_server.app_spec import load_app
    from annotation_server.registry import ModelRegistry

    spec = JobSpec.model_validate_json(spec_file.read_text())
    events = spec_file.parent / EVENTS
    if spec.nice:
        os.nice(spec.nice)  # serving (clicks) must win the CPU when both want it
    train_items, _ = split(spec.items, spec.params.val_split)  # the split fine_tune makes
    label_epoch_steps = max(1, -(-len(train_items) // spec.params.train_batch_size))

    def steps_per_epoch(total_steps: int) -> float:
        """Asked for in epochs: total steps / epochs (a recipe may make several samples per label)."""
        return total_steps / spec.params.max_epochs if spec.params.steps is None else label_epoch_steps

    server = os.getppid()  # its own session, so a killed server's signals never reach it: it checks instead

    def progress(p: TrainProgress) -> None:
        if os.getppid() != server:  # orphaned: nobody tracks this job, and a new server may start another
            raise SystemExit(f"the server (pid {server}) that started this job is gone; stopping")
        _emit(
            events,
            PROGRESS,
            {
                "step": p.step,
                "total_steps": p.total_steps,
                "epoch": math.ceil(p.step / steps_per_epoch(p.total_steps)),
                "total_epochs": math.ceil(p.total_steps / steps_per_epoch(p.total_steps)),
                "loss": round(p.loss, 5),
                "val_dice": None if p.val_dice is None else round(p.val_dice, 5),
                "best_metric": None if p.best_dice is None else round(p.best_dice, 5),
                "elapsed_s": round(p.elapsed_s, 2),
                "eta_s": round(p.eta_s, 2),
            },
        )

    app = load_app(spec.app)
    _emit(events, "started", {"pid": os.getpid(), "model": spec.model, "labels": len(spec.items)})
    outcome = fine_tune(
        dict(app.trainers),
        spec.model,
        spec.items,
        ModelRegistry(spec.registry_root),
        spec.params,
        progress,
        job_id=spec.job_id,
    )
    _emit(events, RESULT, json.loads(outcome.model_dump_json()))
    print(f"new version {outcome.version.label}: {outcome.gate.reason}; promoted={outcome.promoted}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
