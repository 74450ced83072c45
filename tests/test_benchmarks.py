"""Benchmarks stay runnable: each prints one JSON document with the keys the notes quote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_datastore_scale_benchmark_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "datastore_scale.py"), "--sizes", "5", "12", "--repeats", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(result.stdout)
    small = report["by_studies"]["5"]
    assert {"save_label_median_s", "stats_median_s", "random_median_s", "first_median_s"} <= set(small)
    assert report["save_ratio_large_vs_small"] > 0 and isinstance(report["targets_met"], bool)
