"""OHIF v3 with its MONAI Label mode, served by our server at /ohif/, in headless Chromium against a real Orthanc.

The embedded sample CT (122 x 101 x 30, small enough for software WebGL) is written as a standard axial LPS
DICOM series, twice (two studies), and stored in Orthanc. `annotate-server --app kidney --ohif` lists the PACS
and relays OHIF's QIDO/WADO. In the browser: connect the MONAI Label panel, run kidney_seg (Auto-Segmentation),
put a kidney_click point on the right kidney (Point Prompts), and read OHIF's labelmap back from the page. It
must equal the server's NRRD answers voxel for voxel *in patient coordinates* (OHIF ignores the NRRD header and
pours the raw bytes into its own grid), land on the anatomy kidney_seg finds in the original NIfTI, and the click
must segment the clicked kidney. Next Sample then shows the study fields and reloads the page on that study.
Every request the page makes goes to our origin (no web-font host, no CORS preflight).
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import httpx
import nibabel as nib
import nrrd
import numpy as np
import pytest
from conftest import SAMPLE_CT, free_port
from ohif_support import ct_series_from_nifti
from pacs import Orthanc, require_orthanc

from annotation_server.api.ohif import INSTALL_HINT, ohif_bundle_dir

try:
    from playwright import sync_api
except ImportError:
    sync_api = None  # type: ignore[assignment]

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/lib/chromium/chromium")
ARGS = ["--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RIGHT_KIDNEY_RAS_INDEX = (81, 38, 8)  # a voxel inside the right kidney of the sample NIfTI (tests/test_web_viewer.py)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# docs/images/ohif.png is made by: ANNOTATE_SCREENSHOT_DIR=docs/images pytest tests/test_ohif_browser.py
SCREENSHOT_DIR = "ANNOTATE_SCREENSHOT_DIR"
UPDATED = "updated the segmentation's scalar data"  # OHIF's MONAI Label panel logs this after writing a result

READ_LABELMAP = """() => {
  const v = window.services.segmentationService.getLabelmapVolume('1');
  const d = v.voxelManager.getCompleteScalarDataArray();
  let s = '';
  for (let i = 0; i < d.length; i += 0x8000) s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000));
  return {data: btoa(s), dims: Array.from(v.dimensions), origin: Array.from(v.origin),
          direction: Array.from(v.direction), spacing: Array.from(v.spacing)};
}"""

PROBE_POINTS = """() => {
  const manager = window.cornerstoneTools.annotation.state.getAnnotationManager();
  const saved = manager.saveAnnotations(null, 'ProbeMONAILabel');
  return Object.values(saved || {}).reduce((n, group) => n + ((group && group.ProbeMONAILabel) || []).length, 0);
}"""

CLICK_POSITION = """(world) => new Promise(resolve => {
  const v = window.cornerstone.getRenderingEngines()[0].getViewport('mpr-axial');
  const cam = v.getCamera();
  const dz = world[2] - cam.focalPoint[2];
  v.setCamera({focalPoint: [cam.focalPoint[0], cam.focalPoint[1], world[2]],
               position: [cam.position[0], cam.position[1], cam.position[2] + dz]});
  v.render();
  setTimeout(() => {
    const c = v.worldToCanvas(world);
    const rect = v.canvas.getBoundingClientRect();
    resolve({x: rect.left + c[0], y: rect.top + c[1], slice: v.getCurrentImageIdIndex()});
  }, 1000);
})"""


def labelmap_from_page(page) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """OHIF's labelmap as an (i, j, k) array and its voxel -> LPS affine, read from cornerstone's volume."""
    state = page.evaluate(READ_LABELMAP)
    dims = state["dims"]
    flat = np.frombuffer(base64.b64decode(state["data"]), np.uint8)
    array = flat.reshape(dims[::-1]).transpose(2, 1, 0)  # x fastest, then y, then slices
    direction = np.asarray(state["direction"], float).reshape(3, 3)  # rows: the i, j, k axis directions
    affine = np.eye(4)
    affine[:3, :3] = direction.T * np.asarray(state["spacing"], float)
    affine[:3, 3] = state["origin"]
    return array, affine


def nrrd_answer(body: bytes, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """The server's NRRD answer and its voxel -> LPS affine, from its own header."""
    path = tmp / f"answer-{time.monotonic_ns()}.nrrd"
    path.write_bytes(body)
    data, header = nrrd.read(str(path))
    assert header["space"] == "left-posterior-superior" and header["encoding"] == "raw", header
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(header["space directions"], float).T
    affine[:3, 3] = header["space origin"]
    return np.asarray(data), affine


def on_grid(values: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target: np.ndarray) -> np.ndarray:
    """`values` (voxel -> LPS `affine`) sampled at the voxel centres of the `target` grid (nearest; 0 outside)."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ target[:3, :3].T + target[:3, 3]
    src = np.rint((world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    inside = np.all((src >= 0) & (src < np.asarray(values.shape)), axis=1)
    out = np.zeros(len(src), values.dtype)
    out[inside] = values[tuple(src[inside].T)]
    return out.reshape(shape)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture
def browser_page():  # type: ignore[no-untyped-def]
    if sync_api is None:
        pytest.skip("Playwright for Python is not installed: pip install -e '.[test]' (never `playwright install`)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    if ohif_bundle_dir() is None:
        pytest.skip(f"OHIF comes with the monailabel package: {INSTALL_HINT}")
    require_orthanc()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(90_000)
            yield page
        finally:
            browser.close()


def test_ohif_auto_segmentation_click_and_next_sample(browser_page, live_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = browser_page
    folder = tmp_path / "orthanc"
    folder.mkdir()
    orthanc = Orthanc(folder, free_port())
    try:
        first, second = ct_series_from_nifti(SAMPLE_CT, "093015"), ct_series_from_nifti(SAMPLE_CT, "141500")
        orthanc.upload(first + second)
        server = live_server(
            "--app", "kidney", "--studies", orthanc.dicomweb_url, "--ohif", env={"ANNOTATE_RESCAN_INTERVAL_S": "0"}
        )
        _drive_ohif(page, server.url, first, second, tmp_path)
    finally:
        orthanc.stop()


def _drive_ohif(page, url: str, first, second, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text[:300]}"))

    def on_response(response) -> None:  # type: ignore[no-untyped-def]
        if response.status >= 400 and "check_if_running" not in response.url:
            errors.append(
                f"HTTP {response.status} {response.url}: {response.text()[:300]} <- {response.request.post_data}"
            )

    page.on("response", on_response)
    study = str(first[0].StudyInstanceUID)
    started = time.monotonic()
    page.goto(f"{url}/ohif/monai-label?StudyInstanceUIDs={study}")
    page.wait_for_function(
        "() => window.services && window.cornerstone && window.cornerstone.getRenderingEngines().length"
        " && window.cornerstone.getRenderingEngines()[0].getViewport('mpr-axial')"
    )
    load_s = time.monotonic() - started
    page.get_by_text("Confirm and Hide").click()
    page.locator(".monaiLabelPanel .settingsTable button.actionButton").click()  # connect: GET /info/
    page.wait_for_selector("label.tab-label:has-text('Auto-Segmentation')")

    # Auto-segmentation with kidney_seg.
    auto = page.locator(".tab", has=page.locator("label.tab-label", has_text="Auto-Segmentation"))
    assert auto.locator("select.selectBox option").all_inner_texts() == ["kidney_seg "]
    started = time.monotonic()
    with (
        page.expect_response(lambda r: "/infer/kidney_seg" in r.url) as seg_response,
        page.expect_console_message(lambda m: UPDATED in m.text),
    ):
        auto.locator("button[title='Run Segmentation']").click()
    auto_s = time.monotonic() - started
    overlay, grid = labelmap_from_page(page)
    answer, answer_affine = nrrd_answer(seg_response.value.body(), tmp_path)
    assert overlay.shape == answer.shape == (122, 101, 30)
    # OHIF maps the model's values to its segments by label name (alphabetical): cyst 1, kidney 2, tumor 3.
    to_segment = np.array([0, 2, 3, 1], np.uint8)  # kidney_seg: kidney 1, tumor 2, cyst 3
    expected = to_segment[on_grid(answer, answer_affine, overlay.shape, grid)]
    np.testing.assert_array_equal(overlay, expected)  # OHIF shows the server's answer where it says it is
    kidney_voxels = int((overlay == 2).sum())
    assert kidney_voxels > 1000
    page.screenshot(path=str(Path(os.environ.get(SCREENSHOT_DIR, tmp_path)) / "ohif.png"))

    # ... and where the kidneys are: the same model on the original NIfTI, compared in patient coordinates.
    with SAMPLE_CT.open("rb") as fh:
        reference = httpx.post(
            f"{url}/infer/kidney_seg",
            params={"output": "image"},
            files={"file": ("sample_ct.nii.gz", fh)},
            data={"params": json.dumps({"result_extension": ".nii.gz"})},
            timeout=300,
        )
    assert reference.status_code == 200, reference.text
    (tmp_path / "reference.nii.gz").write_bytes(reference.content)
    nifti = nib.load(str(tmp_path / "reference.nii.gz"))
    truth = on_grid(np.asarray(nifti.dataobj).astype(np.uint8), LPS @ nifti.affine, overlay.shape, grid)
    anatomy_dice = dice(overlay > 0, truth > 0)
    assert anatomy_dice > 0.9, (
        f"OHIF's overlay is not on the kidneys kidney_seg finds in the NIfTI: Dice {anatomy_dice}"
    )

    # A kidney_click point on the right kidney (Point Prompts).
    prompts = page.locator(".tab", has=page.locator("label.tab-label", has_text="Point Prompts"))
    page.locator("label.tab-label", has_text="Point Prompts").click()
    assert prompts.locator("select.selectBox option").all_inner_texts() == ["region_growing ", "kidney_click "]
    prompts.locator("select.selectBox").select_option("kidney_click")
    prompts.locator("tr.clickable-row", has_text="kidney").click()
    world_ras = nifti.affine @ np.array([*RIGHT_KIDNEY_RAS_INDEX, 1.0])
    world = (LPS @ world_ras)[:3]
    target = tuple(int(v) for v in np.rint(np.linalg.solve(grid[:3, :3], world - grid[:3, 3])))
    position = page.evaluate(CLICK_POSITION, [float(v) for v in world])
    assert position["slice"] == target[2]
    for _ in range(3):  # on a loaded machine the first click can land while the tool is still being armed
        page.mouse.click(position["x"], position["y"])
        try:
            page.wait_for_function(PROBE_POINTS, timeout=5_000)
            break
        except sync_api.TimeoutError:
            continue
    before = overlay
    started = time.monotonic()
    try:
        with (
            page.expect_response(lambda r: "/infer/kidney_click" in r.url, timeout=60_000) as click_response,
            page.expect_console_message(lambda m: UPDATED in m.text, timeout=60_000),
        ):
            prompts.locator("button[title='Run PointPrompts']").click()
    except sync_api.TimeoutError:
        pytest.fail(f"no result drawn after the click; page errors {errors}, console {console[-15:]}")
    click_s = time.monotonic() - started
    after, _ = labelmap_from_page(page)
    click_answer, click_affine = nrrd_answer(click_response.value.body(), tmp_path)
    grown = on_grid(click_answer, click_affine, after.shape, grid) > 0
    assert grown[target], "the click model's answer does not hold the clicked voxel"
    assert grown.sum() > 500
    # OHIF's merge for a point prompt: voxels that were background or kidney take the answer (kidney or 0).
    replaceable = (before == 0) | (before == 2)
    np.testing.assert_array_equal(after, np.where(replaceable, np.where(grown, 2, 0), before))
    right = np.zeros_like(grown)
    right[: after.shape[0] // 2] = True  # image columns run to the patient's left: the right kidney is i < 61
    assert grown[right].sum() > 0.95 * grown.sum(), "the click grew something beyond the clicked (right) kidney"

    # Next Sample: the dialog shows the study's fields; OK reloads OHIF on that study.
    page.locator("label.tab-label", has_text="Active Learning").click()
    with page.expect_response(lambda r: "/activelearning/" in r.url and r.request.method == "POST") as next_answer:
        page.get_by_role("button", name="Next Sample").click()
    dialog = page.locator(".nextSampleForm")
    dialog.wait_for()
    offered = next_answer.value.json()
    chosen = next(s for s in (first, second) if str(s[0].SeriesInstanceUID) == offered["id"])
    rows = dict(
        zip(
            dialog.locator("tbody td:nth-child(1)").all_inner_texts(),
            dialog.locator("tbody td:nth-child(2)").all_inner_texts(),
            strict=True,
        )
    )
    assert rows["Study Instance UID"] == str(chosen[0].StudyInstanceUID)
    assert rows["Study Time"] == str(chosen[0].StudyTime) and rows["Series Instance UID"] == offered["id"]
    page.once("dialog", lambda d: d.accept())
    with page.expect_navigation():
        dialog.get_by_role("button", name="OK").click()
    assert page.url.endswith(f"StudyInstanceUIDs={chosen[0].StudyInstanceUID}")
    page.wait_for_function(
        "(uid) => window.services && window.services.displaySetService.getActiveDisplaySets().some("
        "d => d.SeriesInstanceUID === uid)",
        arg=offered["id"],
    )

    foreign = [r for r in requests if not r.split(" ", 1)[1].startswith((url, "data:", "blob:"))]
    assert foreign == [], f"OHIF asked another host: {foreign[:5]}"
    assert not [r for r in requests if r.startswith("OPTIONS ")], "same-origin OHIF needs no CORS preflight"
    assert errors == [], errors
    print(
        json.dumps(
            {
                "ohif_page_load_s": round(load_s, 1),
                "auto_seg_round_trip_s": round(auto_s, 2),
                "click_round_trip_s": round(click_s, 2),
                "kidney_voxels": kidney_voxels,
                "anatomy_dice_vs_nifti": round(anatomy_dice, 4),
            }
        )
    )
