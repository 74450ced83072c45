"""The browser viewer (`viewer_plugins/web/`, served at /viewer/) in real headless Chromium.

A real `annotate-server --app kidney` serves the embedded sample CT (122x101x30, small enough for the
software WebGL of a GPU-less machine) and a tiny phantom. Playwright drives Debian's Chromium (never
`playwright install`): the page loads without errors, draws the image, turns a click on a known voxel into a
session prompt on the server, writes the answer's delta into its overlay (compared voxel by voxel with the
server's mask), undoes, redoes, saves a label version and moves on with "Next".
"""

from __future__ import annotations

import base64
import gzip
import io
import shutil
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

try:
    from playwright import sync_api
except ImportError:  # the browser test skips; the decoder test below still runs
    sync_api = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/lib/chromium/chromium")
ARGS = ["--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RIGHT_KIDNEY = [81, 38, 8]  # a voxel inside the right kidney of the embedded sample CT
OUTSIDE = [20, 20, 8]  # air beside the body on the same slice
TIMEOUT_MS = 30_000
PHANTOM_SHAPE = (20, 16, 12)
PHANTOM_TARGET = [4, 5, 6]  # stored (i, j, k) inside the phantom's block
REPO_WEB = Path(__file__).resolve().parents[1] / "viewer_plugins" / "web"
AXIAL, CORONAL = 0, 1  # NiiVue's tile kinds (axCorSag)
BOX = ([74, 31, 8], [88, 45, 8])  # a 2-D box around the right kidney on axial slice k = 8 (centre RIGHT_KIDNEY)
LASSO = [[60, 38, 5], [100, 38, 5], [100, 38, 12], [60, 38, 12]]  # a rectangle on coronal slice j = 38
ERASE = [[70, 38, 7], [90, 38, 7], [90, 38, 10], [70, 38, 10]]  # a smaller one inside it


@pytest.fixture
def server(live_server, sample_ct: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(sample_ct, studies / "sample_ct.nii.gz")
    phantom = np.zeros(PHANTOM_SHAPE, dtype=np.int16)
    phantom[2:8, 3:9, 3:9] = 100  # off-centre, so a left-right mix-up shows
    # i runs right-to-left (LAS, as many scanners store it): NiiVue draws it flipped, the server counts as stored.
    nib.save(nib.Nifti1Image(phantom, np.diag([-1.5, 1.5, 3.0, 1.0])), str(studies / "phantom_a.nii.gz"))
    return live_server("--app", "kidney", "--studies", str(studies))


@pytest.fixture
def page():  # type: ignore[no-untyped-def]
    """A Chromium page (listed before `server` in a test, so a missing browser skips before a server starts)."""
    if sync_api is None:
        pytest.skip("Playwright for Python is not installed: pip install -e '.[test]' (never `playwright install`)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.set_default_timeout(TIMEOUT_MS)
            page.errors = []  # type: ignore[attr-defined]
            page.on("pageerror", lambda error: page.errors.append(f"pageerror: {error}"))  # type: ignore[attr-defined]
            # Failed requests are checked one by one below; the browser's own "Failed to load resource" line is not.
            page.on(
                "response",
                lambda r: page.errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None,  # type: ignore[attr-defined]
            )
            page.on(
                "console",
                lambda msg: (
                    page.errors.append(f"console: {msg.text}")
                    if msg.type == "error" and not msg.text.startswith("Failed to load resource")
                    else None
                ),  # type: ignore[attr-defined]
            )
            yield page
        finally:
            browser.close()


def wait(page, condition: str) -> None:  # type: ignore[no-untyped-def]
    """Wait for a JS condition; on timeout, fail with what the page says (status line, errors)."""
    try:
        page.wait_for_function(condition)
    except sync_api.TimeoutError:
        status = page.evaluate("document.getElementById('status').textContent")
        pytest.fail(f"timed out waiting for {condition!r}; status line: {status!r}; errors: {page.errors}")


def idle(page) -> None:  # type: ignore[no-untyped-def]
    """Every request the viewer queued has been answered and applied."""
    wait(page, "window.viewer && window.viewer.state.pending === 0")


def page_mask(page) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The overlay NiiVue draws (volumes[1].img, i fastest) as an (i, j, k) array."""
    encoded, dims = page.evaluate(
        """() => {
            const v = window.viewer.maskVolume();
            let s = "";
            for (let i = 0; i < v.img.length; i += 0x8000) {
                s += String.fromCharCode.apply(null, v.img.subarray(i, i + 0x8000));
            }
            return [btoa(s), Array.from(v.hdr.dims.slice(1, 4))];
        }"""
    )
    flat = np.frombuffer(base64.b64decode(encoded), dtype=np.uint8)
    return flat.reshape(dims, order="F")


def server_mask(url: str, session_id: str) -> np.ndarray:
    answer = httpx.get(f"{url}/interactive/sessions/{session_id}/mask", timeout=30)
    answer.raise_for_status()
    image = nib.Nifti1Image.from_bytes(gzip.decompress(answer.content))
    return np.asarray(image.dataobj).astype(np.uint8)


def voxel_xy(page, vox: list[int], tile: int = AXIAL) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Page coordinates of NiiVue (RAS) voxel `vox` on the `tile` view (NiiVue gives device pixels; the mouse
    wants CSS pixels)."""
    css = page.evaluate(
        """([vox, tile]) => {
            const nv = window.viewer.nv;
            const r = nv.frac2canvasPosWithTile(nv.vox2frac(vox), tile);
            if (!r) return null;
            const dpr = nv.uiData.dpr || window.devicePixelRatio || 1;
            return [r.pos[0] / dpr, r.pos[1] / dpr];
        }""",
        [vox, tile],
    )
    assert css is not None, f"voxel {vox} is not on a visible tile"
    box = page.locator("#gl").bounding_box()
    return box["x"] + css[0], box["y"] + css[1]


def click_voxel(page, vox: list[int], shift: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Click the canvas where voxel `vox` is drawn on the axial view."""
    x, y = voxel_xy(page, vox)
    if shift:
        page.keyboard.down("Shift")
    page.mouse.click(x, y)
    if shift:
        page.keyboard.up("Shift")


def drag_voxels(page, path: list[list[int]], tile: int = AXIAL, shift: bool = False) -> int:  # type: ignore[no-untyped-def]
    """Press on the first voxel of `path`, move through the others (with intermediate moves), release.
    -> how many pixels of the #draw overlay the outline covered just before the release."""
    points = [voxel_xy(page, vox, tile) for vox in path]
    page.mouse.move(*points[0])
    if shift:
        page.keyboard.down("Shift")
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=6)
    drawn = overlay_pixels(page)
    page.mouse.up()
    if shift:
        page.keyboard.up("Shift")
    return drawn


def overlay_pixels(page) -> int:  # type: ignore[no-untyped-def]
    """Non-transparent pixels on the #draw canvas (the box or lasso outline while it is drawn)."""
    return page.evaluate(
        """() => {
            const c = document.getElementById("draw");
            if (!c.width || !c.height) return 0;
            const a = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < a.length; i += 4) n += a[i] > 0;
            return n;
        }"""
    )


def show_slice(page, vox: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Put NiiVue's crosshair (which picks the slices shown) on RAS voxel `vox`."""
    page.evaluate(
        "(v) => { const nv = window.viewer.nv; nv.scene.crosshairPos = nv.vox2frac(v); nv.drawScene(); }", vox
    )


def crosshair(page) -> list[float]:  # type: ignore[no-untyped-def]
    return page.evaluate("Array.from(window.viewer.nv.scene.crosshairPos)")


def screenshot(page) -> np.ndarray:  # type: ignore[no-untyped-def]
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page.locator("#gl").screenshot())).convert("RGB")).astype(int)


def red_pixels(rgb: np.ndarray) -> int:
    """Pixels the kidney colour (label 1 is red) dominates."""
    return int(((rgb[..., 0] > rgb[..., 1] + 60) & (rgb[..., 0] > rgb[..., 2] + 60)).sum())


def open_sample_ct(page, url: str) -> str:  # type: ignore[no-untyped-def]
    """Load the viewer, open the CT with the region-growing click model; -> the session id."""
    page.goto(f"{url}/viewer/")
    wait(page, "window.viewer && (window.viewer.ready || window.viewer.error)")
    assert page.evaluate("window.viewer.error") is None
    page.locator('#images li[data-image="sample_ct"]').click()
    wait(page, "window.viewer.state.session !== null")
    idle(page)
    page.select_option("#model", "region_growing")  # deterministic, no weights
    page.select_option("#window", "400,50")  # abdomen window
    return page.evaluate("window.viewer.state.session.session_id")


@pytest.mark.slow
def test_annotation_workflow_in_chromium(page, server) -> None:  # type: ignore[no-untyped-def]
    url = server.url
    redirect = httpx.get(f"{url}/viewer", follow_redirects=False)
    assert redirect.status_code in (301, 302, 307) and redirect.headers["location"].endswith("viewer/")
    assert httpx.get(f"{url}/viewer/vendor/niivue.js").status_code == 200

    page.goto(f"{url}/viewer/")
    wait(page, "window.viewer && (window.viewer.ready || window.viewer.error)")
    assert page.evaluate("window.viewer.error") is None
    assert page.locator("#images li").count() == 2
    assert "region_growing" in page.locator("#model option").all_inner_texts()
    # The viewer starts with the click model the API uses when a prompt names none.
    default_model = httpx.get(f"{url}/info/").json()["server"]["interactive_model"]
    assert page.locator("#model").input_value() == default_model == "kidney_click"
    assert "press Next." in page.locator("#empty-hint").inner_text()  # as rendered: a space before "Next"
    assert page.evaluate("window.viewer.nv.opts.loadingText") == ""  # no "loading ..." over the empty canvas

    # Open the CT from the list: image, empty overlay and a session on the server.
    page.locator('#images li[data-image="sample_ct"]').click()
    wait(page, "window.viewer.state.session !== null")
    idle(page)
    assert page.evaluate("Array.from(window.viewer.nv.volumes[0].hdr.dims.slice(1, 4))") == [122, 101, 30]
    session_id = page.evaluate("window.viewer.state.session.session_id")
    state = httpx.get(f"{url}/interactive/sessions/{session_id}").json()
    assert state["image"] == "sample_ct" and state["shape"] == [122, 101, 30]
    page.select_option("#model", "region_growing")  # deterministic, no weights
    page.select_option("#window", "400,50")  # abdomen window

    # Show the kidney's slice, then check the canvas is drawn (not blank) and carries no label colour yet.
    show_slice(page, OUTSIDE)
    before = screenshot(page)
    assert before.std() > 10 and (before.sum(axis=2) > 30).mean() > 0.2, "the image is not drawn"
    red_before = red_pixels(before)

    # A click on the kidney voxel: a foreground point prompt on the server, the delta applied in the overlay.
    click_voxel(page, RIGHT_KIDNEY)
    wait(page, "window.viewer.state.lastAnswer !== null")
    idle(page)
    state = httpx.get(f"{url}/interactive/sessions/{session_id}").json()
    assert state["object"]["foreground"] == [RIGHT_KIDNEY] and state["object"]["background"] == []
    assert state["version"] == 1 and state["model"] is not None
    shown, truth = page_mask(page), server_mask(url, session_id)
    assert truth.shape == shown.shape == (122, 101, 30)
    assert truth[tuple(RIGHT_KIDNEY)] == 1 and (truth > 0).sum() > 50
    assert np.array_equal(shown, truth), f"overlay differs from the server's mask in {(shown != truth).sum()} voxels"
    assert red_pixels(screenshot(page)) > red_before + 20, "the overlay does not show the new label voxels"
    assert "ms" in page.locator("#latency").inner_text()

    # A shift-click is a background point of the same object; Ctrl+Z undoes it (exactly, server-side too).
    click_voxel(page, OUTSIDE, shift=True)
    wait(page, "window.viewer.state.lastAnswer.version === 2")
    idle(page)
    assert httpx.get(f"{url}/interactive/sessions/{session_id}").json()["object"]["background"] == [OUTSIDE]
    page.locator("#gl").focus()
    page.keyboard.press("Control+z")
    wait(page, "window.viewer.state.lastAnswer.version === 1")
    idle(page)
    assert httpx.get(f"{url}/interactive/sessions/{session_id}").json()["object"]["background"] == []

    # Undo (button) clears the overlay; Ctrl+Shift+Z brings the kidney back.
    page.locator("#undo").click()
    wait(page, "window.viewer.state.lastAnswer.version === 0")
    idle(page)
    assert page_mask(page).sum() == 0 and server_mask(url, session_id).sum() == 0
    page.keyboard.press("Control+Shift+z")
    wait(page, "window.viewer.state.lastAnswer.version === 1")
    idle(page)
    assert np.array_equal(page_mask(page), truth)

    # Save: a new label version, shown in the page and visible through the datastore API.
    page.locator("#save").click()
    wait(page, "document.getElementById('status').textContent.includes('final v1')")
    idle(page)
    versions = httpx.get(f"{url}/datastore/label/versions", params={"image": "sample_ct"}).json()["versions"]
    assert [v["version"] for v in versions] == [1]
    listing = httpx.get(f"{url}/datastore/", params={"output": "all"}).json()["objects"]
    assert listing["sample_ct"]["labels"]["final"]["info"]["version"] == 1
    assert "final v1" in page.locator('#images li[data-image="sample_ct"]').inner_text()

    # The delta decoder refuses a codec it does not know instead of guessing.
    message = page.evaluate(
        """async () => {
            const { decodeDelta } = await import("./delta.js");
            try { await decodeDelta({ codec: "zstd", shape: [1, 1, 1], offset: [0, 0, 0], data: "" }); return null; }
            catch (error) { return error.message; }
        }"""
    )
    assert message is not None and "unknown delta codec 'zstd'" in message

    # "Next" (strategy first) closes this session and opens the only unlabeled image.
    page.select_option("#strategy", "first")
    page.locator("#next").click()
    wait(page, "window.viewer.state.imageId === 'phantom_a' && window.viewer.state.session !== null")
    idle(page)

    # Back to the CT: the new session starts from the saved label (server and overlay), ready to be corrected.
    page.locator('#images li[data-image="sample_ct"]').click()
    wait(page, "window.viewer.state.imageId === 'sample_ct' && window.viewer.state.session !== null")
    idle(page)
    reopened = page.evaluate("window.viewer.state.session.session_id")
    assert httpx.get(f"{url}/interactive/sessions/{reopened}").json()["started_from"] == {"tag": "final", "version": 1}
    assert np.array_equal(server_mask(url, reopened), truth) and np.array_equal(page_mask(page), truth)
    page.locator('#images li[data-image="phantom_a"]').click()
    wait(page, "window.viewer.state.imageId === 'phantom_a' && window.viewer.state.session !== null")
    idle(page)
    sessions = httpx.get(f"{url}/interactive/sessions").json()
    assert [s["image"] for s in sessions] == ["phantom_a"]

    # On an image stored right-to-left, a click still reaches the server as the voxel's stored index.
    ras = [PHANTOM_SHAPE[0] - 1 - PHANTOM_TARGET[0], *PHANTOM_TARGET[1:]]  # where NiiVue (RAS) has it
    assert page.evaluate("(v) => window.viewer.nativeVoxel(v)", ras) == PHANTOM_TARGET
    show_slice(page, [10, 12, 6])
    click_voxel(page, ras)
    wait(page, "window.viewer.state.lastAnswer !== null")
    idle(page)
    phantom_session = sessions[0]["session_id"]
    state = httpx.get(f"{url}/interactive/sessions/{phantom_session}").json()
    assert state["object"]["foreground"] == [PHANTOM_TARGET]
    assert np.array_equal(page_mask(page), server_mask(url, phantom_session))

    assert page.evaluate("window.viewer.error") is None
    # With auth off GET /auth/ is a 404: that is how the page learns no login is needed.
    assert [e for e in page.errors if e != f"HTTP 404 {url}/auth/"] == []  # type: ignore[attr-defined]


@pytest.mark.slow
def test_box_and_lasso_tools_in_chromium(page, server) -> None:  # type: ignore[no-untyped-def]
    """Box (Box button) and lasso (L key, then shift for erasing) drawn on slices become box and lasso prompts in
    stored voxel indices; their deltas land in the overlay exactly as in the server's mask, on that slice only."""
    url = server.url
    sent: list[dict] = []  # the prompts the page posts, as the server receives them
    page.on(
        "request",
        lambda r: sent.append(r.post_data_json["prompt"]) if r.method == "POST" and r.url.endswith("/prompt") else None,
    )
    session_id = open_sample_ct(page, url)

    def server_state() -> dict:
        return httpx.get(f"{url}/interactive/sessions/{session_id}").json()

    def answered(version: int) -> None:
        wait(page, f"window.viewer.state.lastAnswer && window.viewer.state.lastAnswer.version === {version}")
        idle(page)

    # Box: a rectangle dragged on the axial slice k = 8 around the kidney.
    page.locator("#tool-box").click()
    assert page.evaluate("window.viewer.state.tool") == "box"
    assert page.locator("#tool-box").get_attribute("class") == "active"
    show_slice(page, OUTSIDE)
    before = crosshair(page)
    assert drag_voxels(page, [BOX[0], [81, 45, 8], BOX[1]]) > 100, "no rectangle drawn on the overlay"
    answered(1)
    assert overlay_pixels(page) == 0, "the rectangle stays on the overlay after the answer"
    assert crosshair(page) == before, "NiiVue moved the crosshair during the box drag"
    assert [(p["type"], p["corners"], p.get("model")) for p in sent] == [("box", [*BOX], "region_growing")]
    state = server_state()
    assert state["interactions"] == 1 and state["object"]["foreground"] == [RIGHT_KIDNEY]  # the box's centre
    boxed = server_mask(url, session_id)
    assert np.array_equal(page_mask(page), boxed), "the overlay differs from the server's mask after the box"
    labeled = np.argwhere(boxed > 0)
    assert len(labeled) > 20 and boxed[tuple(RIGHT_KIDNEY)] == 1
    assert (labeled[:, 2] == 8).all(), "label voxels outside the box's slice"
    assert (labeled[:, :2] >= BOX[0][:2]).all() and (labeled[:, :2] <= BOX[1][:2]).all(), "label outside the box"

    # Lasso (key L) on a coronal slice: the stored axis held fixed is 1 (j), the polygon is in (i, k).
    page.locator("#gl").focus()
    page.keyboard.press("l")  # NiiVue's own L (crosshair right) must not fire too
    assert page.evaluate("window.viewer.state.tool") == "lasso" and crosshair(page) == before
    page.select_option("#view", "coronal")
    show_slice(page, RIGHT_KIDNEY)
    before = crosshair(page)
    assert drag_voxels(page, [*LASSO, LASSO[0]], tile=CORONAL) > 100, "no outline drawn on the overlay"
    answered(2)
    assert crosshair(page) == before, "NiiVue moved the crosshair during the lasso"
    prompt = sent[-1]
    assert (prompt["type"], prompt["axis"], prompt["index"], prompt["positive"]) == ("lasso", 1, 38, True)
    outline = {tuple(v) for v in prompt["polygon"]}
    assert {(i, k) for i, _, k in LASSO} <= outline, f"the outline misses the corners: {prompt['polygon']}"
    assert all(60 <= i <= 100 and 5 <= k <= 12 for i, k in outline), prompt["polygon"]
    filled = server_mask(url, session_id)
    assert np.array_equal(page_mask(page), filled), "the overlay differs from the server's mask after the lasso"
    changed = np.argwhere(filled != boxed)
    assert len(changed) > 200 and (changed[:, 1] == 38).all(), "the lasso changed voxels off its slice"
    assert (filled[61:100, 38, 6:12] == 1).all(), "the lasso's inside is not filled"
    rows, cols = changed[:, 0], changed[:, 2]
    assert rows.min() >= 60 and rows.max() <= 100 and cols.min() >= 5 and cols.max() <= 12

    # Shift-lasso erases inside the filled region; undo brings it back (the server's history, unchanged).
    drag_voxels(page, [*ERASE, ERASE[0]], tile=CORONAL, shift=True)
    answered(3)
    assert (sent[-1]["type"], sent[-1]["axis"], sent[-1]["positive"]) == ("lasso", 1, False)
    erased = server_mask(url, session_id)
    assert np.array_equal(page_mask(page), erased), "the overlay differs from the server's mask after erasing"
    gone = np.argwhere(erased != filled)
    assert len(gone) > 20 and (gone[:, 1] == 38).all() and (erased[tuple(gone.T)] == 0).all()
    assert (erased[71:90, 38, 8:10] == 0).all()
    page.keyboard.press("Control+z")
    answered(2)
    assert np.array_equal(page_mask(page), filled) and np.array_equal(server_mask(url, session_id), filled)
    assert len(sent) == 3, f"a drag also sent other prompts: {sent}"

    # Back to points (key P): a click is a point prompt again.
    page.locator("#gl").focus()  # the view selector had it: letters would pick its options
    page.keyboard.press("p")
    assert page.evaluate("window.viewer.state.tool") == "point"
    page.select_option("#view", "axial")
    show_slice(page, OUTSIDE)
    click_voxel(page, RIGHT_KIDNEY)
    answered(3)
    assert sent[-1]["type"] == "point" and sent[-1]["point"] == RIGHT_KIDNEY
    assert page.evaluate("window.viewer.error") is None
    assert [e for e in page.errors if e != f"HTTP 404 {url}/auth/"] == []  # type: ignore[attr-defined]


NODE_DECODE = """
import { applyDelta, decodeDelta } from "%s";
const [delta, dims] = JSON.parse(process.argv[2]);
const img = new Uint8Array(dims[0] * dims[1] * dims[2]);
applyDelta(img, dims, delta, await decodeDelta(delta));
process.stdout.write(Buffer.from(img).toString("base64"));
"""


def test_delta_decoder_matches_the_server_codec(tmp_path: Path) -> None:
    """delta.js (outside a browser, in Node) reads what annotation_server.interactive.delta writes."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    import json
    import subprocess

    from annotation_server.interactive.delta import apply_delta, encode

    rng = np.random.default_rng(0)
    dims = (9, 7, 5)
    region = rng.integers(0, 4, size=(4, 3, 2), dtype=np.uint8)
    delta = encode(region, (3, 2, 1))
    script = tmp_path / "decode.mjs"
    script.write_text(NODE_DECODE % (REPO_WEB / "delta.js").as_uri())
    done = subprocess.run(
        [node, str(script), json.dumps([delta, dims])], capture_output=True, text=True, timeout=30, check=True
    )
    shown = np.frombuffer(base64.b64decode(done.stdout), dtype=np.uint8).reshape(dims, order="F")
    assert np.array_equal(shown, apply_delta(np.zeros(dims, np.uint8), delta))

    delta["codec"] = "zstd"  # a codec the viewer does not know is an error, never a guess
    failed = subprocess.run([node, str(script), json.dumps([delta, dims])], capture_output=True, text=True, timeout=30)
    assert failed.returncode != 0 and "unknown delta codec 'zstd'" in failed.stderr
