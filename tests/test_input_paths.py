"""Server paths (the studies folder, the data dir) appear only in answers to admins.

Issue #12: an annotator learned the data dir from image info and the PUT /session/ answer, which is how
they knew what file to name in the label upload attack.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from annotation_server.auth.service import users_path
from annotation_server.auth.users import UserStore

USERS = {"anna": ("annotator", "annotator-pass-1"), "root": ("admin", "admin-pass-1")}


@pytest.fixture
def auth_client(studies: Path, tmp_path: Path) -> Iterator[TestClient]:
    from conftest import TEST_APP

    from annotation_server.server import create_app
    from annotation_server.settings import Settings

    data_dir = tmp_path / "data"
    store = UserStore(users_path(data_dir))
    for name, (role, password) in USERS.items():
        store.add(name, role, password)
    store.close()
    settings = Settings(studies=studies, data_dir=data_dir, rescan_interval_s=0, max_upload_mb=4, auth_enabled=True)
    with TestClient(create_app(settings, TEST_APP)) as client:
        yield client


def _login(client: TestClient, name: str) -> dict[str, str]:
    response = client.post("/auth/token", data={"username": name, "password": USERS[name][1]})
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


@pytest.mark.slow
def test_annotators_see_no_server_paths_admins_do(
    auth_client: TestClient, studies: Path, sample_ct: Path, tmp_path: Path
) -> None:
    anna, root = _login(auth_client, "anna"), _login(auth_client, "root")
    secrets = (str(tmp_path), str(studies.resolve()), "/tmp/")
    answers = [
        auth_client.get("/datastore/?output=all", headers=anna),
        auth_client.get("/datastore/?output=train", headers=anna),
        auth_client.get("/datastore/image/info?image=phantom_a", headers=anna),
        auth_client.post("/activelearning/first", headers=anna, json={}),
    ]
    created = auth_client.put("/session/", headers=anna, files={"files": ("ct.nii.gz", sample_ct.read_bytes())})
    assert created.status_code == 200
    session_id = created.json()["session_id"]
    answers += [created, auth_client.get(f"/session/{session_id}", headers=anna)]
    # A file that vanished under the server: the message names the file, not where it was.
    (studies / "phantom_b.nii.gz").unlink()
    answers.append(auth_client.post("/infer/threshold?image=phantom_b&output=json", headers=anna))
    # Library errors (nibabel, ITK) quote the file's full path: only its name may reach the client.
    answers.append(
        auth_client.put("/datastore/label?image=phantom_a", headers=anna, files={"label": ("a.nii.gz", b"\0" * 400)})
    )
    for response in answers:
        assert response.status_code in (200, 404, 422), response.text
        assert not any(secret in response.text for secret in secrets), response.text
    assert created.json()["session_info"]["image"] == "ct.nii.gz"
    admin_info = auth_client.get("/datastore/image/info?image=phantom_a", headers=root).json()
    assert admin_info["path"] == str(studies.resolve() / "phantom_a.nii.gz")
    admin_session = auth_client.get(f"/session/{session_id}", headers=root).json()
    assert admin_session["image"].startswith(str(tmp_path))
