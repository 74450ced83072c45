"""The browser viewer's multi-reader mode in headless Chromium (issue #15).

A real kidney server with logins serves the embedded sample CT; three readers have saved their reads of it
through the REST API and the adjudicator built the STAPLE consensus. In the viewer the adjudicator logs in,
picks the project, opens the case and sees the three reads and the consensus as separately coloured layers,
toggles them, checks the radiological convention (patient's right on the screen's left) and its toggle, edits
the consensus with a click, and saves: the adjudicated final, whose voxels are what the page showed.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from tests.test_web_viewer import RIGHT_KIDNEY, click_voxel, idle, page, page_mask, show_slice, voxel_xy, wait  # noqa: F401

KIDNEYS = Path(__file__).resolve().parent / "slicer_extension" / "data" / "example_kidneys.nii.gz"
PASSWORD = "viewer-pass-1"
USERS = {"r1": "annotator", "r2": "annotator", "r3": "annotator", "judge": "adjudicator", "boss": "lead"}


def _reads() -> tuple[dict[str, np.ndarray], np.ndarray]:
    kidneys = nib.load(str(KIDNEYS))
    truth = np.isin(np.asarray(kidneys.dataobj), (2, 3)).astype(np.uint8)
    return {
        "r1": ndimage.binary_dilation(truth).astype(np.uint8),  # over
        "r2": ndimage.binary_erosion(truth).astype(np.uint8),  # under
        "r3": np.where(np.asarray(kidneys.dataobj) == 3, 0, truth).astype(np.uint8),  # missed the left kidney
    }, kidneys.affine


@pytest.fixture
def project_server(live_server, sample_ct: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from annotation_server.auth.service import users_path
    from annotation_server.auth.users import UserStore

    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(sample_ct, studies / "sample_ct.nii.gz")
    users = UserStore(users_path(tmp_path / "server-data"))  # the live_server fixture's --data-dir
    for name, role in USERS.items():
        users.add(name, role, PASSWORD)
    users.close()
    return live_server("--app", "kidney", "--studies", str(studies), env={"ANNOTATE_AUTH_ENABLED": "true"})


def _token(url: str, name: str) -> dict[str, str]:
    answer = httpx.post(f"{url}/auth/token", data={"username": name, "password": PASSWORD})
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def _label(content: bytes) -> np.ndarray:
    content = gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content
    return np.asarray(nib.Nifti1Image.from_bytes(content).dataobj).astype(np.uint8)


@pytest.mark.slow  # a live server and Chromium
def test_adjudicator_sees_reader_layers_toggles_edits_and_saves(page, project_server) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    url = project_server.url
    h = {name: _token(url, name) for name in USERS}
    spec = {"name": "kidney reads", "images": ["sample_ct"], "readers": ["r1", "r2", "r3"], "readers_per_image": 3}
    project = httpx.post(f"{url}/projects", json=spec, headers=h["boss"]).json()
    pid = project["id"]
    reads, affine = _reads()
    for reader, mask in reads.items():
        saved = httpx.put(
            f"{url}/projects/{pid}/cases/sample_ct/label",
            files={"label": ("r.nii", nib.Nifti1Image(mask, affine).to_bytes())},
            headers=h[reader],
        )
        assert saved.status_code == 200, saved.text
    consensus = httpx.post(f"{url}/projects/{pid}/cases/sample_ct/consensus", headers=h["judge"], timeout=60).json()

    page.goto(f"{url}/viewer/")
    wait(page, "window.viewer && (window.viewer.ready || window.viewer.error)")
    page.fill("#username", "judge")
    page.fill("#password", PASSWORD)
    page.click("#login button[type=submit]")
    wait(page, "document.getElementById('login').hidden && document.querySelectorAll('#project option').length === 2")
    page.select_option("#project", str(pid))
    wait(page, "!document.getElementById('queue').hidden")
    page.locator('#images li[data-image="sample_ct"]').click()
    wait(page, "window.viewer.state.session !== null && window.viewer.state.layers.length === 4")
    idle(page)

    # four layers, each its own colour, all shown; the session starts from the consensus
    layers = page.evaluate(
        "window.viewer.state.layers.map(l => [l.name, l.color.join(','), l.volume.opacity,"
        " window.viewer.nv.volumes.indexOf(l.volume)])"
    )
    assert [name for name, *_ in layers] == ["r1", "r2", "r3", "consensus"]
    assert len({color for _, color, *_ in layers}) == 4 and all(op > 0 and index >= 2 for _, _, op, index in layers)
    assert page.evaluate("window.viewer.state.session.from_label ?? null") in (consensus["tag"], None)
    cons = _label(
        httpx.get(
            f"{url}/datastore/label", params={"label": "sample_ct", "tag": consensus["tag"]}, headers=h["judge"]
        ).content
    )
    assert np.array_equal(page_mask(page), cons)

    # toggling a reader's layer hides exactly that layer, and shows it again
    page.locator('#layers input[data-layer="r2"]').click()
    hidden = page.evaluate("window.viewer.state.layers.map(l => l.volume.opacity)")
    assert hidden[1] == 0 and all(op > 0 for i, op in enumerate(hidden) if i != 1)
    page.locator('#layers input[data-layer="r2"]').click()
    assert page.evaluate("window.viewer.state.layers[1].volume.opacity") > 0

    # radiological convention by default: the patient's right kidney is drawn on the screen's left
    show_slice(page, RIGHT_KIDNEY)
    box = page.locator("#gl").bounding_box()
    assert page.evaluate("window.viewer.nv.opts.isRadiologicalConvention") is True
    radiological_x = voxel_xy(page, RIGHT_KIDNEY)[0]
    page.locator("#radiological").click()
    neurological_x = voxel_xy(page, RIGHT_KIDNEY)[0]
    page.locator("#radiological").click()
    centre = box["x"] + box["width"] / 2
    assert radiological_x < centre < neurological_x

    # edit: clear the consensus, click the right kidney with the region-growing model, save as adjudicated
    page.select_option("#model", "region_growing")
    page.click("#reset")
    idle(page)
    click_voxel(page, RIGHT_KIDNEY)
    wait(page, "window.viewer.state.lastAnswer && window.viewer.state.lastAnswer.version >= 2")
    idle(page)
    shown = page_mask(page)
    assert shown[tuple(RIGHT_KIDNEY)] == 1 and not np.array_equal(shown, cons)
    page.click("#save")
    wait(page, "window.viewer.state.lastSaved && window.viewer.state.lastSaved.tag === 'final'")
    idle(page)
    final = httpx.get(f"{url}/datastore/label", params={"label": "sample_ct"}, headers=h["judge"])
    assert np.array_equal(_label(final.content), shown)  # the adjudicated final is what the page showed
    info = httpx.get(f"{url}/datastore/label/info", params={"label": "sample_ct"}, headers=h["judge"]).json()
    assert (
        set(info["adjudication"]["reads"]) == {"r1", "r2", "r3"} and info["adjudication"]["adjudicated_by"] == "judge"
    )
    queue = httpx.get(f"{url}/fl/queue", params={"image_id": "sample_ct"}, headers=h["boss"]).json()["entries"]
    assert [e["status"] for e in queue] == ["eligible"]
    assert page.errors == [], page.errors  # type: ignore[attr-defined]
