"""The audit trail (issue #12): an append-only, hash-chained log of security-relevant events, `GET /audit`
for admins, and `annotate-server audit verify`, which must notice a changed, removed or reordered line."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from annotation_server.audit.log import AuditLog, audit_dir
from annotation_server.audit.verify import verify_log
from annotation_server.cli import cli
from tests.test_auth import PASSWORDS, _label_bytes, _login, auth_client, data_dir  # noqa: F401 (fixtures)


def _filled(folder: Path, count: int = 5) -> AuditLog:
    log = AuditLog(folder)
    for i in range(count):
        log.record("label.save", "anna", "10.0.0.1", f"image_{i}", version=i + 1)
    return log


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_records_chain_and_verify(tmp_path: Path) -> None:
    log = _filled(tmp_path / "audit")
    records = list(log.records())
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev == "0" * 64 and all(b.prev == a.hash for a, b in itertools.pairwise(records))
    assert records[2].details == {"version": 3} and records[2].address == "10.0.0.1"
    result = verify_log(log.folder)
    assert result.ok and result.records == 5, result.message
    assert oct(log.path.stat().st_mode & 0o777) == "0o600"


def test_a_changed_field_is_found(tmp_path: Path) -> None:
    log = _filled(tmp_path / "audit")
    lines = _lines(log)
    record = json.loads(lines[2])
    record["actor"] = "mallory"  # someone rewrites who did it
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    log.path.write_text("".join(lines), encoding="utf-8")
    result = verify_log(log.folder)
    assert not result.ok and result.seq == 3 and result.line == 3
    assert "record 3 (line 3) was changed" in result.message


def test_a_changed_field_with_a_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    from annotation_server.audit.log import record_hash

    log = _filled(tmp_path / "audit")
    lines = _lines(log)
    record = json.loads(lines[1])
    record["target"] = "another_image"
    record["hash"] = record_hash(record)  # a careful forger fixes this record's own hash
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    log.path.write_text("".join(lines), encoding="utf-8")
    result = verify_log(log.folder)
    assert not result.ok and result.seq == 3 and "does not follow" in result.message


def test_removed_lines_are_found_in_the_middle_and_at_the_end(tmp_path: Path) -> None:
    log = _filled(tmp_path / "middle")
    lines = _lines(log)
    log.path.write_text("".join(lines[:1] + lines[3:]), encoding="utf-8")
    result = verify_log(log.folder)
    assert not result.ok and result.seq == 4 and "records 2..3 were removed" in result.message

    log = _filled(tmp_path / "end")
    log.path.write_text("".join(_lines(log)[:-2]), encoding="utf-8")
    result = verify_log(log.folder)
    assert not result.ok and "ends at record 3" in result.message and result.seq == 5

    log = _filled(tmp_path / "head-gone")
    log.head_path.unlink()
    assert not verify_log(log.folder).ok


def test_reordered_and_garbled_lines_are_found(tmp_path: Path) -> None:
    log = _filled(tmp_path / "order")
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    log.path.write_text("".join(lines), encoding="utf-8")
    result = verify_log(log.folder)
    assert not result.ok and result.line == 2

    log = _filled(tmp_path / "garbled")
    lines = _lines(log)
    lines[3] = lines[3][:20] + "\n"
    log.path.write_text("".join(lines), encoding="utf-8")
    result = verify_log(log.folder)
    assert not result.ok and result.line == 4 and "not a valid record" in result.message


def test_concurrent_writers_from_two_handles_keep_one_chain(tmp_path: Path) -> None:
    """Two AuditLog objects on one folder (as the server and the users CLI are): flock keeps one chain."""
    first, second = AuditLog(tmp_path / "audit"), AuditLog(tmp_path / "audit")

    def write(log: AuditLog, who: str) -> None:
        for i in range(25):
            log.record("test.event", who, None, str(i))

    threads = [threading.Thread(target=write, args=(log, f"w{n}")) for n, log in enumerate([first, second] * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = verify_log(first.folder)
    assert result.ok and result.records == 100, result.message


def test_query_filters_and_pages(tmp_path: Path) -> None:
    log = _filled(tmp_path / "audit")
    log.record("label.retire", "root", "10.0.0.2", "image_1", tag="final")
    log.record("auth.login", "root", "10.0.0.2", "root")
    total, page = log.query(action="label", limit=2, offset=1)
    assert total == 6 and [r.seq for r in page] == [5, 4]  # newest first
    assert [r.action for r in log.query(actor="root")[1]] == ["auth.login", "label.retire"]
    assert log.query(target="image_1")[0] == 2
    assert log.query(action="lab")[0] == 0  # a prefix only at a dot boundary


# --------------------------------------------------------------------------------------------------- API
def test_server_records_who_did_what_from_where(auth_client: TestClient, data_dir: Path) -> None:  # noqa: F811
    bad = auth_client.post("/auth/token", data={"username": "anna", "password": "wrong-password"})
    assert bad.status_code == 401
    anna, rev, root = _login(auth_client, "anna"), _login(auth_client, "rev"), _login(auth_client, "root")
    saved = auth_client.put(
        "/datastore/label",
        params={"image": "phantom_a"},
        files={"label": ("phantom_a.nii", _label_bytes())},
        headers=anna,
    )
    assert saved.status_code == 200, saved.text
    entry = auth_client.get("/fl/queue", headers=rev).json()["entries"][0]
    excluded = {"reason": "boundary wrong"}
    assert auth_client.post(f"/fl/queue/{entry['id']}/exclude", json=excluded, headers=rev).status_code == 200
    assert auth_client.post(f"/fl/queue/{entry['id']}/approve", headers=rev).status_code == 200
    assert auth_client.get("/datastore/dataset", headers=root).status_code == 200
    assert auth_client.delete("/datastore/label?id=phantom_a&tag=final", headers=root).status_code == 200
    assert auth_client.post("/auth/logout", headers=anna).status_code == 200

    refused = auth_client.get("/audit", headers=rev)
    assert refused.status_code == 403 and 'Role "admin" is required' in refused.json()["detail"]
    page = auth_client.get("/audit", params={"limit": 100}, headers=root).json()
    actions = [(r["action"], r["actor"], r["target"]) for r in reversed(page["records"])]
    assert actions == [
        ("auth.login_failed", "anna", "anna"),
        ("auth.login", "anna", "anna"),
        ("auth.login", "rev", "rev"),
        ("auth.login", "root", "root"),
        ("label.save", "anna", "phantom_a"),
        ("fl.exclude", "rev", "phantom_a"),
        ("fl.approve", "rev", "phantom_a"),
        ("dataset.export", "root", None),
        ("label.retire", "root", "phantom_a"),
        ("auth.logout", "anna", "anna"),
    ]
    assert {r["address"] for r in page["records"]} == {"testclient"}
    save = next(r for r in page["records"] if r["action"] == "label.save")
    assert save["details"] == {"tag": "final", "version": 1, "author": "anna"}
    labels = auth_client.get("/audit", params={"action": "label", "limit": 1}, headers=root).json()
    assert labels["total"] == 2 and [r["action"] for r in labels["records"]] == ["label.retire"]
    assert verify_log(audit_dir(data_dir)).ok


def test_users_cli_and_audit_verify_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    args = ["--data-dir", str(data)]
    added = runner.invoke(
        cli, ["users", "add", "alice", "--role", "reviewer", "--password-stdin", *args], input="pw-123456\n"
    )
    assert added.exit_code == 0, added.output
    assert runner.invoke(cli, ["users", "role", "alice", "admin", *args]).exit_code == 0
    assert runner.invoke(cli, ["users", "remove", "alice", *args]).exit_code == 0
    records = list(AuditLog.for_data_dir(data).records())
    assert [(r.action, r.target) for r in records] == [
        ("user.add", "alice"),
        ("user.role", "alice"),
        ("user.remove", "alice"),
    ]
    assert records[1].details == {"role": "admin", "was": "reviewer"} and records[0].actor.endswith("(cli)")

    ok = runner.invoke(cli, ["audit", "verify", *args])
    assert ok.exit_code == 0 and "audit log OK: 3 records" in ok.output
    log = AuditLog.for_data_dir(data)
    log.path.write_text(log.path.read_text().replace('"admin"', '"user"'), encoding="utf-8")
    tampered = runner.invoke(cli, ["audit", "verify", *args])
    assert tampered.exit_code == 1
    assert "TAMPERED" in tampered.output and "record 2 (line 2) was changed" in tampered.output


@pytest.mark.slow
def test_audit_verify_as_a_real_command(tmp_path: Path) -> None:
    log = _filled(audit_dir(tmp_path / "data"))
    command = [sys.executable, "-m", "annotation_server", "audit", "verify", "--data-dir", str(tmp_path / "data")]
    ok = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "chain intact" in ok.stdout, ok.stderr
    lines = _lines(log)
    log.path.write_text("".join(lines[:2] + lines[3:]), encoding="utf-8")
    removed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert removed.returncode == 1 and "record 3 was removed" in " ".join(removed.stderr.split())


def test_with_auth_off_actions_are_recorded_as_anonymous(client) -> None:  # type: ignore[no-untyped-def]
    params = {"save_label": True, "client_id": "model-runner"}
    answer = client.post("/infer/threshold?image=phantom_a&output=json", data={"params": json.dumps(params)})
    assert answer.status_code == 200, answer.text
    assert client.delete("/datastore/image?id=phantom_b").status_code == 200
    records = client.get("/audit").json()["records"]  # everyone is admin with auth off, as before
    assert [(r["action"], r["actor"], r["target"]) for r in reversed(records)] == [
        ("label.save", "anonymous", "phantom_a"),
        ("image.delete", "anonymous", "phantom_b"),
    ]
    assert records[1]["details"] == {"tag": "original", "version": 1, "author": "model-runner", "model": "threshold"}
