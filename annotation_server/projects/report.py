"""The project report's CSV (one row per case, reader pair and label) and PNG (Dice per label, flagged cases)."""

from __future__ import annotations

import csv
import io
from typing import Any

COLUMNS = ("image", "label", "reader_a", "reader_b", "dice", "hd95_mm", "asd_mm", "kappa", "flagged")


def report_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for case in report["cases"]:
        for p in case["pairs"]:
            writer.writerow(
                (
                    case["image_id"],
                    p["label"],
                    p["a"],
                    p["b"],
                    p["dice"],
                    p["hd95_mm"],
                    p["asd_mm"],
                    p["kappa"],
                    case["flagged"],
                )
            )
    return out.getvalue()


def report_png(report: dict[str, Any]) -> bytes:
    """Pairwise Dice per label (one dot per pair and case) with the flagging threshold."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    by_label: dict[str, list[float]] = {}
    for case in report["cases"]:
        for p in case["pairs"]:
            by_label.setdefault(p["label"], []).append(p["dice"])
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    names = sorted(by_label)
    for x, name in enumerate(names):
        values = by_label[name]
        axes.scatter([x] * len(values), values, alpha=0.6)
    if names:
        axes.boxplot([by_label[n] for n in names], positions=list(range(len(names))), widths=0.4)
    axes.axhline(report["threshold"], color="red", linestyle="--", label="flag threshold")
    axes.set_xticks(range(len(names)), names)
    axes.set_ylim(-0.05, 1.05)
    axes.set_ylabel("pairwise Dice")
    axes.set_title(
        f"{report['project']['name']}: {len(report['flagged_cases'])} of {len(report['cases'])} cases flagged"
    )
    axes.legend(loc="lower left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
