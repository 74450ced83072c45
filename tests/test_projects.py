"""Multi-reader projects: assignment, blinding on every route, agreement, consensus, adjudication, queue rule."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from annotation_server.auth.policy import required_role
from annotation_server.auth.roles import Role, implied_roles
from annotation_server.auth.service import users_path
from annotation_server.auth.users import UserStore
from annotation_server.projects.agreement import case_agreement, cohen_kappa, dice, fleiss_kappa
from annotation_server.projects.assign import assign_readers
from annotation_server.projects.consensus import ConsensusMethod, consensus

USERS = {"r1": "annotator", "r2": "annotator", "r3": "annotator", "judge": "adjudicator", "boss": "lead"}
PASSWORD = "reader-pass-1"
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])
AFFINE[:3, 3] = [-10, 5, 20]
LABELS = {"kidney": 1, "tumor": 2}


# ---------------------------------------------------------------------------------------------- units
def test_assignment_is_balanced_reproducible_and_distinct() -> None:
    images = [f"case_{i:03d}" for i in range(10)]
    readers = ["a", "b", "c", "d"]
    first = assign_readers(images, readers, 3, seed=7)
    assert first == assign_readers(list(reversed(images)), readers, 3, seed=7)  # order of the list is irrelevant
    assert all(len(set(r)) == 3 for r in first.values())
    load = Counter(r for rs in first.values() for r in rs)
    assert sum(load.values()) == 30 and max(load.values()) - min(load.values()) <= 1
    assert any(assign_readers(images, readers, 3, seed=s) != first for s in range(8, 12))  # the seed matters


def test_roles_nest_lead_above_adjudicator_above_reviewer() -> None:
    assert implied_roles(Role.lead) == [Role.lead, Role.adjudicator, Role.reviewer, Role.annotator, Role.user]
    assert required_role("POST", "/projects") is Role.lead
    assert required_role("POST", "/projects/{project_id}/cases/{image_id}/adjudicate") is Role.adjudicator
    assert required_role("PUT", "/projects/{project_id}/cases/{image_id}/label") is Role.annotator
    assert required_role("GET", "/projects/{project_id}/report") is Role.adjudicator


def test_kappas_match_hand_computed_values() -> None:
    a = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
    b = np.array([1, 0, 0, 0, 1, 1, 0, 0], bool)
    # observed 6/8; expected (3/8*3/8 + 5/8*5/8) = 34/64; kappa = (0.75 - 34/64) / (1 - 34/64) = 14/30
    assert cohen_kappa(a, b) == pytest.approx(14 / 30)
    assert fleiss_kappa([a, a, a]) == pytest.approx(1.0)
    assert fleiss_kappa([a, b]) < cohen_kappa(a, b) + 1e-9  # Fleiss pools the marginals: never above Cohen here


def _truth() -> np.ndarray:
    t = np.zeros((40, 40, 24), np.uint8)
    t[8:32, 8:32, 4:20] = 1
    t[14:20, 14:20, 8:14] = 2
    t[24:28, 24:28, 14:18] = 3
    return t


def test_staple_beats_every_reader_and_agreement_flags_the_missed_cyst() -> None:
    from scipy import ndimage

    truth = _truth()
    over = truth.copy()
    over[ndimage.binary_dilation(truth > 0, iterations=1) & (truth == 0)] = 1
    under = truth.copy()
    under[(truth == 1) & ~ndimage.binary_erosion(truth == 1, iterations=1)] = 0
    missed = truth.copy()
    missed[missed == 3] = 1
    reads = {"over": over, "under": under, "missed": missed}
    labels = {"kidney": 1, "tumor": 2, "cyst": 3}
    label, details = consensus(reads, labels, ConsensusMethod.staple)
    for value in (1, 3):
        best = max(dice(r == value, truth == value) for r in reads.values())
        assert dice(label == value, truth == value) >= best
    assert details["staple"]["cyst"]["missed"]["sensitivity"] < 0.1 < details["staple"]["cyst"]["over"]["sensitivity"]
    report = case_agreement("c", reads, (1.0, 1.0, 1.0), labels, 0.8)
    assert report.flagged and report.flagged_readers == {"missed": ["cyst"]} and report.missed == {"missed": ["cyst"]}
    assert report.mean_dice["tumor"] == 1.0 and report.mean_dice["cyst"] == pytest.approx(1 / 3)
    kidney = next(p for p in report.pairs if p.label == "kidney" and {p.a, p.b} == {"over", "under"})
    assert 2.0 <= kidney.hd95_mm <= 3.5 and 1.0 < kidney.asd_mm < 2.5  # the two shells are 2 voxels apart
    doubled = case_agreement("c", reads, (2.0, 2.0, 2.0), labels, 0.8)  # mm follow the image's spacing
    pair = next(p for p in doubled.pairs if p.label == "kidney" and {p.a, p.b} == {"over", "under"})
    assert pair.hd95_mm == pytest.approx(2 * kidney.hd95_mm) and pair.dice == kidney.dice


# ------------------------------------------------------------------------------------------------- API
def _label(mask: np.ndarray) -> bytes:
    return nib.Nifti1Image(mask.astype(np.uint8), AFFINE).to_bytes()


@pytest.fixture
def app_client(studies: Path, tmp_path: Path) -> Iterator[TestClient]:
    from annotation_server.server import create_app
    from annotation_server.settings import Settings
    from tests.conftest import TEST_APP

    data_dir = tmp_path / "data"
    users = UserStore(users_path(data_dir))
    for name, role in USERS.items():
        users.add(name, role, PASSWORD)
    users.close()
    settings = Settings(studies=studies, data_dir=data_dir, rescan_interval_s=0, max_upload_mb=4, auth_enabled=True)
    with TestClient(create_app(settings, TEST_APP)) as client:
        yield client


def _as(client: TestClient, name: str) -> dict[str, str]:
    token = client.post("/auth/token", data={"username": name, "password": PASSWORD}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow  # a whole app with logins: ~4 s
def test_project_blinded_reads_consensus_adjudication_and_queue(app_client: TestClient) -> None:
    c = app_client
    h = {name: _as(c, name) for name in USERS}
    spec = {"name": "kidney truth", "images": ["phantom_a"], "readers": ["r1", "r2", "r3"], "readers_per_image": 3}
    assert c.post("/projects", json=spec, headers=h["r1"]).status_code == 403  # readers do not create projects
    assert c.post("/projects", json={**spec, "readers_per_image": 4}, headers=h["boss"]).status_code == 422
    project = c.post("/projects", json=spec, headers=h["boss"]).json()
    pid = project["id"]

    base = np.zeros((20, 16, 12), np.uint8)
    base[5:12, 4:10, 3:8] = 1
    base[7:9, 6:8, 4:6] = 2
    reads = {"r1": base, "r2": np.where(base == 2, 1, base), "r3": base}  # r2 misses the tumor
    for reader, mask in reads.items():
        nxt = c.post(f"/projects/{pid}/next", headers=h[reader]).json()
        assert nxt["id"] == "phantom_a" and nxt["tag"] == f"reader-p{pid}-{reader}"
        # a reader of an open blinded case may not save to a shared tag
        direct = c.put(
            "/datastore/label",
            params={"image": "phantom_a"},
            files={"label": ("a.nii", _label(mask))},
            headers=h[reader],
        )
        assert direct.status_code == 403 and f"/projects/{pid}/cases/phantom_a/label" in direct.json()["detail"]
        saved = c.put(
            f"/projects/{pid}/cases/phantom_a/label",
            data={"params": json.dumps({"seconds": 30})},
            files={"label": ("a.nii", _label(mask))},
            headers=h[reader],
        )
        assert saved.status_code == 200, saved.text
        assert c.post(f"/projects/{pid}/next", headers=h[reader]).json() == {}  # nothing left for them
    # a non-reader annotator cannot save a read
    outsider = c.put(
        f"/projects/{pid}/cases/phantom_a/label", files={"label": ("a.nii", _label(base))}, headers=h["judge"]
    )
    assert outsider.status_code == 403

    # blinding: every route that could show r2's read to r1
    other = f"reader-p{pid}-r2"
    refused = [
        c.get("/datastore/label", params={"label": "phantom_a", "tag": other}, headers=h["r1"]),
        c.head("/datastore/label", params={"image": "phantom_a", "tag": other}, headers=h["r1"]),
        c.get("/datastore/label/info", params={"label": "phantom_a", "tag": other}, headers=h["r1"]),
        c.get("/datastore/label/versions", params={"image": "phantom_a"}, headers=h["r1"]),
        c.get("/datastore/label/versions", params={"image": "phantom_a", "tag": other}, headers=h["r1"]),
        c.post("/interactive/sessions", json={"image": "phantom_a", "from_label": other}, headers=h["r1"]),
        c.get(f"/projects/{pid}/cases/phantom_a/agreement", headers=h["r1"]),
        c.get(f"/projects/{pid}/report", headers=h["r1"]),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]
    # ... and every route that could overwrite a read or save the case elsewhere
    session = c.post("/interactive/sessions", json={"image": "phantom_a"}, headers=h["r1"])
    assert session.status_code == 200, session.text
    session_id = session.json()["session_id"]
    forged = {"label": ("a.nii", _label(base))}
    writes = [
        c.put("/datastore/label", params={"image": "phantom_a", "tag": other}, files=forged, headers=h["judge"]),
        c.put(
            "/datastore/label",
            params={"image": "phantom_a", "tag": f"consensus-p{pid}"},
            files=forged,
            headers=h["boss"],
        ),
        c.post(f"/interactive/sessions/{session_id}/save", json={"tag": "final"}, headers=h["r1"]),
        c.post(
            "/infer/threshold",
            params={"image": "phantom_a", "output": "json"},
            data={"params": json.dumps({"save_label": True, "label_tag": "final"})},
            headers=h["r1"],
        ),
    ]
    assert [r.status_code for r in writes] == [403] * len(writes), [r.text for r in writes]
    listing = c.get("/datastore/", params={"output": "all"}, headers=h["r1"]).json()
    assert sorted(listing["objects"]["phantom_a"]["labels"]) == [f"reader-p{pid}-r1"]  # only their own
    own = c.get("/datastore/label", params={"label": "phantom_a", "tag": f"reader-p{pid}-r1"}, headers=h["r1"])
    assert own.status_code == 200
    # the adjudicator sees every read
    seen = c.get("/datastore/label", params={"label": "phantom_a", "tag": other}, headers=h["judge"])
    assert seen.status_code == 200
    assert np.array_equal(np.asarray(nib.Nifti1Image.from_bytes(seen.content).dataobj), reads["r2"])

    report = c.get(f"/projects/{pid}/report", headers=h["judge"]).json()
    assert report["flagged_cases"] == ["phantom_a"] and report["flagged_readers"]["phantom_a"] == {"r2": ["tumor"]}
    assert report["missed_structures"] == {"phantom_a": {"r2": ["tumor"]}}
    assert report["reader_seconds"] == {"r1": 30.0, "r2": 30.0, "r3": 30.0}
    assert report["reader_vs_consensus_mean_dice"]["r2"]["tumor"] == 0.0  # r2 drew no tumor
    assert report["reader_vs_consensus_mean_dice"]["r1"] == {"kidney": 1.0, "tumor": 1.0}
    csv_rows = c.get(f"/projects/{pid}/report.csv", headers=h["judge"]).text.strip().splitlines()
    assert len(csv_rows) == 1 + 3 * 2  # header + 3 pairs x 2 labels
    png = c.get(f"/projects/{pid}/report.png", headers=h["judge"])
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"

    cons = c.post(f"/projects/{pid}/cases/phantom_a/consensus", headers=h["judge"]).json()
    info = c.get("/datastore/label/info", params={"label": "phantom_a", "tag": cons["tag"]}, headers=h["judge"]).json()
    assert info["provenance"] == {r: {"tag": f"reader-p{pid}-{r}", "version": 1} for r in reads}
    assert set(info["consensus"]["staple"]["tumor"]) == set(reads)
    assert (
        c.get("/datastore/label", params={"label": "phantom_a", "tag": cons["tag"]}, headers=h["r3"]).status_code == 403
    )
    # agreement below the threshold: the consensus cannot be accepted unedited
    assert c.post(f"/projects/{pid}/cases/phantom_a/accept-consensus", headers=h["boss"]).status_code == 409

    # a lead's direct final in a project needing adjudication is held out of the queue
    c.put(
        "/datastore/label", params={"image": "phantom_a"}, files={"label": ("a.nii", _label(base))}, headers=h["boss"]
    )
    queue = c.get("/fl/queue", params={"image_id": "phantom_a"}, headers=h["boss"]).json()
    assert [e["status"] for e in queue["entries"]] == ["excluded"] and "adjudication" in queue["entries"][0]["reason"]
    final = c.post(
        f"/projects/{pid}/cases/phantom_a/adjudicate", files={"label": ("a.nii", _label(base))}, headers=h["judge"]
    )
    assert final.status_code == 200 and final.json()["tag"] == "final"
    queue = c.get("/fl/queue", params={"image_id": "phantom_a"}, headers=h["boss"]).json()
    newest = queue["entries"][0]
    assert newest["label_version"] == final.json()["version"] and newest["status"] == "eligible"
    head = c.get("/datastore/label/info", params={"label": "phantom_a"}, headers=h["judge"]).json()
    assert head["adjudication"]["reads"]["r2"] == {"tag": other, "version": 1}
    # closed: the blinding is lifted
    assert c.get("/datastore/label", params={"label": "phantom_a", "tag": other}, headers=h["r1"]).status_code == 200
    status = c.get(f"/projects/{pid}", headers=h["r1"]).json()
    assert status["closed"] == 1 and status["reads_done"] == 3
    actions = [json.loads(line)["action"] for line in _audit_lines(c)]
    assert {"project.create", "project.read", "project.consensus", "project.adjudicate"} <= set(actions)


def _audit_lines(client: TestClient) -> list[str]:
    folder = client.app.state.services.settings.data_dir / "audit"  # type: ignore[attr-defined]
    return [line for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines() if line]


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_create_status_and_export(studies: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from annotation_server.cli import cli

    runner = CliRunner()
    common = ["--studies", str(studies), "--app", "kidney"]
    options = ["--readers", "ann,bob,cat", "--filter", "phantom_*", "--readers-per-image", "2", "--seed", "3"]
    made = runner.invoke(cli, ["projects", "create", "pilot", *common, *options, "--data-dir", str(tmp_path / "data")])
    assert made.exit_code == 0, made.output
    project = json.loads(made.stdout)
    status = runner.invoke(cli, ["projects", "status", str(project["id"]), *common])
    assert status.exit_code == 0, status.output
    progress = json.loads(status.stdout)
    assert progress["cases"] == 2 and progress["reads_total"] == 4 and progress["reads_done"] == 0
    assert sorted(v["assigned"] for v in progress["per_reader"].values()) == [1, 1, 2]
    out = tmp_path / "report"
    exported = runner.invoke(cli, ["projects", "export", str(project["id"]), *common, "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert json.loads((out / "report.json").read_text())["cases"] == []  # nobody has read yet
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    bad = runner.invoke(cli, ["projects", "create", "x", *common, "--readers", "ann", "--readers-per-image", "2"])
    assert bad.exit_code == 2 and "exactly one of" in bad.output  # no image selection, too few readers
    audit = (tmp_path / "data" / "audit").glob("*.jsonl")
    assert any('"project.create"' in f.read_text() for f in audit)


# ------------------------------------------------------------------------------------- simulated project
@pytest.mark.slow  # a live kidney server, phantoms, 9 reads through REST: ~45 s
def test_simulated_project_on_a_live_server() -> None:
    """benchmarks/multireader.py: three readers with known errors on the real CT and two phantoms."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "multireader.py"), "--phantoms", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["reads"] == 9 and result["blinding_holds"], result["blinding"]
    assert all(result["staple_beats_best_reader"].values()), result["per_case"]
    assert result["missed_cyst_reader_flagged_on_every_phantom"] and result["missed_structures"].get("real_ct") is None
    assert result["queue"]["only_adjudicated_eligible"] and result["queue"]["direct_finals_held"] == 1
    assert result["queue"]["reader_tags_in_queue"] == 0


def test_next_hands_out_only_assigned_unfinished_cases_and_skips(studies: Path, tmp_path: Path) -> None:
    from annotation_server.datastore import LocalDatastore
    from annotation_server.learning.strategies import builtin_strategies
    from annotation_server.projects.models import ProjectCreate
    from annotation_server.projects.service import ProjectService
    from annotation_server.projects.store import ProjectStore

    store = LocalDatastore(studies)
    store.rescan()
    service = ProjectService(ProjectStore(tmp_path / "p.sqlite"), store, LABELS, builtin_strategies())
    try:
        spec = ProjectCreate(name="p", strategy="random", count=2, readers=["ann", "bob"], readers_per_image=2)
        project = service.create(spec, "lead")
        cases = sorted(a.image_id for a in service.store.assignments(project.id, reader="ann"))
        assert len(cases) == 2 and set(cases) <= {"sample_ct", "phantom_a", "phantom_b"}
        first = service.next_case(project.id, "ann")["id"]
        second = service.next_case(project.id, "ann")["id"]  # asking again: they skipped the first
        assert {first, second} == set(cases) and service.next_case(project.id, "bob")["id"] in cases
        done = cases[0]
        geometry = store.image_geometry(done)
        label = tmp_path / "read.nii"
        nib.save(nib.Nifti1Image(np.zeros(geometry.shape, np.uint8), geometry.affine), str(label))
        service.save_read(project.id, done, "ann", label, "read.nii", {"seconds": 12})
        assert all(service.next_case(project.id, "ann")["id"] == cases[1] for _ in range(3))  # done: never again
        assert service.store.assignments(project.id, reader="ann", image_id=done)[0].seconds == 12
        assert service.next_case(project.id, "zoe") == {}  # not a reader of the project
    finally:
        service.close()
        store.close()
