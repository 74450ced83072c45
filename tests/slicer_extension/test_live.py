"""AnnotationServerLib against a real server on 127.0.0.1: what the Slicer module does, call for call.

After every prompt, undo, redo and reset, the mask rebuilt from the deltas equals the server's own
(`GET /interactive/sessions/{id}/mask`); a save lands in the federated queue with the effort record; logins,
401 and 403 read as messages that say what to do; an admin promotes and rolls back model versions.
"""

from __future__ import annotations

import slicer_support  # noqa: F401  first: puts the module folder on sys.path, as Slicer does

# isort: split

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from AnnotationServerLib import AnnotationServerClient, ServerError, SessionBook, apply_delta
from AnnotationServerLib.prompts import box_prompt, lasso_prompt, point_prompt, scribble_prompt
from slicer_support import KIDNEYS

from annotation_models import bundle_path
from annotation_server.registry import ModelRegistry

pytestmark = pytest.mark.slow


def server_mask(client: AnnotationServerClient, session_id: str) -> np.ndarray:
    return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(client.session_mask(session_id))).dataobj)


class Annotator:
    """The Lib as the Slicer Logic drives it, with the client-side mask the segments would hold."""

    def __init__(self, client: AnnotationServerClient, image: str, **options: object) -> None:
        self.client = client
        self.book = SessionBook.from_state(client.open_session(image, **options))  # type: ignore[arg-type]
        self.mask = np.zeros(self.book.shape, np.uint8)

    def do(self, kind: str, prompt: dict | None = None, **extra: object) -> dict:
        sid = self.book.session_id
        if prompt is not None:
            answer = self.client.prompt(sid, prompt, **extra)  # type: ignore[arg-type]
        else:
            answer = {
                "undo": lambda: self.client.undo(sid),
                "redo": lambda: self.client.redo(sid),
                "reset": lambda: self.client.reset(sid, self.book.locked),
            }[kind]()
        self.book.answered(answer, kind)
        apply_delta(self.mask, answer["delta"])
        assert np.array_equal(self.mask, server_mask(self.client, sid)), f"after {kind}"
        return answer


def test_every_prompt_undo_redo_and_reset_keeps_the_client_mask_equal_to_the_servers(
    live_server, studies: Path
) -> None:  # type: ignore[no-untyped-def]
    server = live_server("--app", "kidney", "--studies", str(studies))
    client = AnnotationServerClient(server.url, client_id="dora")
    assert client.auth_required() is False
    info = client.info()
    assert {"region_growing", "kidney_seg", "kidney_click"} <= set(info["models"])
    assert info["models"]["kidney_seg"]["version"] == "1" and "random" in info["strategies"]
    assert set(client.studies()["objects"]) == {"phantom_a", "phantom_b", "sample_ct"}
    first, second = client.next_sample("random"), AnnotationServerClient(server.url, "emil").next_sample("random")
    assert first["id"] != second["id"]  # reservations: two annotators never get the same case

    truth = np.asarray(nib.load(KIDNEYS).dataobj)
    kidney = np.argwhere(truth == 2)
    centre = tuple(int(v) for v in kidney[np.argmin(((kidney - kidney.mean(0)) ** 2).sum(1))])
    i, j, k = centre
    user = Annotator(client, "sample_ct", model="region_growing", label="kidney")
    assert user.book.labels == {"kidney": 1, "tumor": 2, "cyst": 3}
    grown = user.do("point", point_prompt(centre))
    assert grown["delta"] is not None and user.mask[centre] == 1
    assert (user.mask == 1).sum() > 100  # a grown region, not a single voxel
    user.do("point", point_prompt((i, j + 3, k), positive=False))
    user.do("box", box_prompt((i - 6, j - 6, k - 2), (i + 6, j + 6, k + 2), label="kidney"), new_object=True)
    user.do("lasso", lasso_prompt(2, k, [(i - 3, j - 3), (i + 3, j - 3), (i + 3, j + 3)], label="tumor"))
    tumor = user.mask == 2
    assert tumor.sum() > 0
    user.book.lock("tumor")  # accepted: from now on no prompt may change a tumor voxel
    painted = np.array([(i + d, j, k + 1) for d in range(-2, 3)])
    user.do("scribble", scribble_prompt(painted, label="kidney", locked=user.book.locked), new_object=True)
    assert np.array_equal(user.mask == 2, tumor)
    before = user.mask.copy()
    user.do("undo")
    user.do("undo")
    assert user.book.can_redo
    user.do("redo")
    user.do("redo")
    assert np.array_equal(user.mask, before)

    # A kidney lasso across the locked tumor leaves every tumor voxel as it was, on the server too.
    user.do(
        "lasso",
        lasso_prompt(
            2,
            k,
            [(i - 8, j - 8), (i + 8, j - 8), (i + 8, j + 8), (i - 8, j + 8)],
            label="kidney",
            locked=user.book.locked,
        ),
    )
    assert np.array_equal(user.mask == 2, tumor) and (user.mask == 1).sum() > 0
    before_reset = user.mask.copy()
    user.do("reset")  # with the tumor locked, the reset keeps it
    assert np.array_equal(user.mask, np.where(tumor, 2, 0))
    user.do("undo")
    assert np.array_equal(user.mask, before_reset)

    saved = client.save_session(user.book.session_id, "final", user.book.save_info())
    assert saved["image"] == "sample_ct" and saved["tag"] == "final"
    entries = client.queue()["entries"]
    (entry,) = [e for e in entries if e["image_id"] == "sample_ct"]
    assert entry["annotator"] == "dora" and entry["seconds"] == user.book.effort.record()["seconds"]
    assert entry["interactions"] == 7  # the server counts its 6 prompts and the reset, not undo/redo
    history = client.json("GET", "/datastore/label/versions", params={"image": "sample_ct", "tag": "final"})
    info_saved = history["versions"][-1]["info"]
    assert info_saved["client_interactions"] == user.book.effort.interactions == 12
    assert info_saved["client"] == "slicer-annotationserver"

    # Start from the saved label: the new session's mask is the saved one.
    again = Annotator(client, "sample_ct", from_label="final")
    assert np.array_equal(server_mask(client, again.book.session_id), user.mask)
    with pytest.raises(ServerError) as unknown:
        client.prompt(again.book.session_id, point_prompt(centre, label="liver"))
    assert unknown.value.status == 422 and "unknown label 'liver'" in str(unknown.value)


def test_login_401_403_and_an_admin_promotes_and_rolls_back(live_server, studies: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from test_auth import _users_here
    from test_model_versions import perturbed_bundle

    data = tmp_path / "server-data"  # the live_server fixture's data dir
    registry = ModelRegistry(data / "registry" / "kidney")
    registry.ensure_registered("kidney_seg", bundle_path("kidney_seg"))
    registry.add_version("kidney_seg", perturbed_bundle(tmp_path / "b2", 0.3), "training", {"val_dice": 0.9})
    registry.close() if hasattr(registry, "close") else None
    for name, role, password in (("anna", "annotator", "annotator-pass-1"), ("adam", "admin", "admin-pass-1")):
        added = _users_here(data, "add", name, "--role", role, "--password-stdin", stdin=f"{password}\n")
        assert added.returncode == 0, added.stderr
    server = live_server("--app", "kidney", "--studies", str(studies), env={"ANNOTATE_AUTH_ENABLED": "true"})

    anonymous = AnnotationServerClient(server.url)
    assert anonymous.auth_required() is True
    with pytest.raises(ServerError) as missing:
        anonymous.info()
    assert missing.value.status == 401 and "log in again" in str(missing.value)
    with pytest.raises(ServerError) as wrong:
        anonymous.login("anna", "not-her-password")
    assert wrong.value.status == 401 and "wrong user name or password" in str(wrong.value)

    anna = AnnotationServerClient(server.url)
    anna.login("anna", "annotator-pass-1")
    assert anna.username == "anna" and "annotator" in anna.roles
    assert anna.model_versions("kidney_seg")["serving"] == 1  # reading is allowed
    with pytest.raises(ServerError) as forbidden:
        anna.promote("kidney_seg", 2)
    assert forbidden.value.status == 403 and "ask an admin" in str(forbidden.value)

    adam = AnnotationServerClient(server.url)
    adam.login("adam", "admin-pass-1")
    promoted = adam.promote("kidney_seg", 2, reason="better on site data")
    assert promoted["version"] == 2 and adam.model_versions("kidney_seg")["serving"] == 2
    assert adam.info()["server"]["serving_versions"]["kidney_seg"] == 2
    rolled = adam.rollback("kidney_seg")
    assert rolled["version"] == 1 and adam.model_versions("kidney_seg")["serving"] == 1
    with pytest.raises(ServerError) as absent:
        adam.promote("kidney_seg", 7)
    assert absent.value.status == 404 and "versions: 1, 2" in str(absent.value)
