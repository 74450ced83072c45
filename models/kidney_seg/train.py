"""Reproduce models/kidney_seg from phantoms only (fixed seeds; CPU is enough).

    python models/kidney_seg/train.py                          # the shipped model
    python models/kidney_seg/train.py --steps 5 --out /tmp/x   # a smoke test

Writes the bundle (configs/, models/model.pt, its sha256 in configs/metadata.json), training_curve.png and
training_history.json into --out (default: this folder), and prints a JSON summary.
"""

from pathlib import Path

from annotation_apps.kidney.training import cli

if __name__ == "__main__":
    cli("kidney_seg", Path(__file__).resolve().parent, steps_default=4000)
