"""The annotation-effort report: does AI assistance save annotators time, and how good are its pre-annotations?

Built from the queue's current entries (one per labeled image, superseded saves left out): AI-assisted
labels (corrected from a model's pre-annotation) against manual ones, and the assisted ones per model
version over time, so a consortium sees whether a new model version cut the correction work.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from annotation_server.federated.entries import QueueEntry

Bucket = Literal["day", "week"]


class EffortSummary(BaseModel):
    """Medians over a group of labels; None where no label of the group reports the measure."""

    count: int
    median_seconds: float | None = None
    median_interactions: float | None = None
    median_voxels_changed: float | None = None
    median_dice: float | None = Field(None, description="pre-annotation vs final label; AI-assisted labels only")
    mean_dice: float | None = None
    with_seconds: int = Field(0, description="labels whose client reported the time spent")


class ModelPeriodEffort(EffortSummary):
    model: str | None
    model_version: str | None
    period: str = Field(description="'2025-03-14' (day) or '2025-W11' (ISO week), UTC")


class EffortReport(BaseModel):
    generated_ts: float
    bucket: Bucket
    labels: int
    ai_assisted: EffortSummary
    manual: EffortSummary
    seconds_ratio: float | None = Field(
        None, description="median seconds of AI-assisted labels / median seconds of manual labels (< 1: time saved)"
    )
    by_model_version: list[ModelPeriodEffort]


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def _summary(entries: Sequence[QueueEntry]) -> dict:
    dice = [e.dice for e in entries if e.dice is not None]
    return {
        "count": len(entries),
        "median_seconds": _median(e.seconds for e in entries),
        "median_interactions": _median(e.interactions for e in entries),
        "median_voxels_changed": _median(e.voxels_changed for e in entries),
        "median_dice": _median(dice),
        "mean_dice": round(statistics.fmean(dice), 4) if dice else None,
        "with_seconds": sum(e.seconds is not None for e in entries),
    }


def period_of(ts: float, bucket: Bucket) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    if bucket == "day":
        return moment.strftime("%Y-%m-%d")
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def build_effort_report(entries: Sequence[QueueEntry], bucket: Bucket = "week") -> EffortReport:
    assisted = [e for e in entries if e.ai_assisted]
    manual = [e for e in entries if not e.ai_assisted]
    groups: dict[tuple[str | None, str | None, str], list[QueueEntry]] = {}
    for entry in assisted:
        groups.setdefault((entry.model, entry.model_version, period_of(entry.saved_ts, bucket)), []).append(entry)
    by_model = [
        ModelPeriodEffort(model=model, model_version=version, period=period, **_summary(group))
        for (model, version, period), group in sorted(groups.items(), key=lambda kv: (kv[0][2], str(kv[0][:2])))
    ]
    assisted_summary, manual_summary = EffortSummary(**_summary(assisted)), EffortSummary(**_summary(manual))
    ratio = None
    if assisted_summary.median_seconds is not None and manual_summary.median_seconds:
        ratio = round(assisted_summary.median_seconds / manual_summary.median_seconds, 4)
    return EffortReport(
        generated_ts=time.time(),
        bucket=bucket,
        labels=len(entries),
        ai_assisted=assisted_summary,
        manual=manual_summary,
        seconds_ratio=ratio,
        by_model_version=by_model,
    )


def render_effort_png(report: EffortReport) -> bytes:
    """Four panels: seconds and interactions (assisted vs manual), seconds and Dice per model version over time.

    Uses matplotlib's object API on the Agg canvas (no pyplot state), so server threads can render at once.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2)
    groups = (("AI-assisted", report.ai_assisted), ("manual", report.manual))
    for ax, field, title in (
        (axes[0][0], "median_seconds", "median seconds per label"),
        (axes[0][1], "median_interactions", "median interactions per label"),
    ):
        values = [getattr(summary, field) or 0.0 for _, summary in groups]
        bars = ax.bar([f"{name}\n(n={summary.count})" for name, summary in groups], values, color=["C0", "C1"])
        ax.bar_label(bars, labels=[_fmt(getattr(s, field)) for _, s in groups])
        ax.set_title(title)
    series: dict[str, list[ModelPeriodEffort]] = {}
    for row in report.by_model_version:
        series.setdefault(f"{row.model or '?'} v{row.model_version or '?'}", []).append(row)
    periods = sorted({row.period for row in report.by_model_version})
    for ax, field, title in (
        (axes[1][0], "median_seconds", f"AI-assisted: median seconds per {report.bucket}"),
        (axes[1][1], "median_dice", f"AI-assisted: median Dice pre vs final per {report.bucket}"),
    ):
        ax.set_title(title)
        plotted = False
        for name, rows in series.items():
            points = [(periods.index(r.period), getattr(r, field)) for r in rows if getattr(r, field) is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
                plotted = True
        if plotted:
            ax.set_xticks(range(len(periods)), periods, rotation=30, ha="right")
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no AI-assisted labels with this measure yet", ha="center", va="center")
            ax.set_xticks([])
    axes[1][1].set_ylim(0, 1.05)
    figure.suptitle(f"Annotation effort: {report.labels} labels")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def write_effort_report(
    entries: Sequence[QueueEntry], json_path: Path | None, png_path: Path | None, bucket: Bucket = "week"
) -> EffortReport:
    """Build the report and write its JSON and/or PNG (atomically, so a dashboard never reads half a file)."""
    from annotation_server.datastore.atomic import atomic_write_bytes

    report = build_effort_report(entries, bucket)
    if json_path is not None:
        atomic_write_bytes(json_path, report.model_dump_json(indent=2).encode())
    if png_path is not None:
        atomic_write_bytes(png_path, render_effort_png(report))
    return report
