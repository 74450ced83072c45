"""The PACS watcher's rules and its SQLite state (the parts that make 'once per series' true), without a PACS."""

from __future__ import annotations

import time
from pathlib import Path

from annotation_server.preannotation import PreannotationRules
from annotation_server.preannotation.state import WatchState


def test_rules_accept_and_explain_rejections() -> None:
    rules = PreannotationRules(modalities=("CT",), body_parts=("ABDOMEN", "KIDNEY"), series_description=r"^(?!.*scout)")
    assert rules.rejects({"Modality": "CT", "BodyPartExamined": "abdomen", "SeriesDescription": "axial 3mm"}) is None
    assert rules.rejects({"Modality": "CT", "SeriesDescription": "axial"}) is None  # blank body part passes
    assert "modality MR" in rules.rejects({"Modality": "MR"})  # type: ignore[operator]
    assert "body part HEAD" in rules.rejects({"Modality": "CT", "BodyPartExamined": "HEAD"})  # type: ignore[operator]
    assert "does not match" in rules.rejects({"Modality": "CT", "SeriesDescription": "Scout 1"})  # type: ignore[operator]
    assert PreannotationRules().rejects({"Modality": "US"}) is None  # no rules: anything


def test_state_claims_each_series_once_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "watch.sqlite"
    state = WatchState(path)
    assert not state.baseline_taken()
    assert state.take_baseline([("1.1", "9.1")]) == 1 and state.baseline_taken()
    assert state.add("1.2", "9.2", "arriving", instances=1)
    assert not state.add("1.2", "9.2", "arriving", instances=1)  # never recorded (or queued) twice
    assert state.settle(0.5) == [] and state.claim_due(5) == []  # still arriving
    time.sleep(0.3)
    state.observe("1.2", 2)  # a second instance arrived: its settle time starts again
    time.sleep(0.3)
    assert state.settle(0.5) == []
    time.sleep(0.3)
    state.observe("1.2", 2)  # unchanged
    assert state.settle(0.5) == ["1.2"] and state.get("1.2").instances == 2  # type: ignore[union-attr]
    assert not state.add("1.1", "9.1", "queued")  # the baseline stays baseline
    state.add("1.3", "9.3", "skipped", "modality MR is not one of CT")
    claimed = state.claim_due(5)
    assert [s.uid for s in claimed] == ["1.2"] and claimed[0].status == "running" and claimed[0].attempts == 1
    assert state.claim_due(5) == []  # running: nobody else gets it
    state.close()

    state = WatchState(path)  # a crash while 1.2 was running
    assert state.requeue_interrupted() == 1 and state.backlog() == 1
    retry = state.claim_due(1)[0]
    assert retry.attempts == 2
    state.mark_failed("1.2", "RuntimeError: boom", time.time() + 3600)
    assert state.claim_due(5) == [] and state.get("1.2").status == "retry"  # type: ignore[union-attr]
    state.mark_failed("1.2", "RuntimeError: boom", time.time() - 1)
    again = state.claim_due(5)
    assert [s.uid for s in again] == ["1.2"]
    state.mark_done("1.2", 1, "stored")
    assert state.claim_due(5) == [] and state.backlog() == 0
    assert state.counts() == {"baseline": 1, "done": 1, "skipped": 1}
    assert [s.uid for s in state.recent()] == ["1.3", "1.2"]  # newest first, baseline not listed
    state.close()
