"""Logins and roles: off by default (MONAI Label clients see the 404 that means "no login"), and when on,
401 without a valid token, 403 naming the missing role, the logged-in user as a label's author, the
`users` CLI, and MONAI Label's own client logging in against a real server process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from annotation_server.auth.policy import required_role
from annotation_server.auth.roles import Role
from annotation_server.auth.service import users_path
from annotation_server.auth.tokens import TokenSigner
from annotation_server.auth.users import UserStore

PASSWORDS = {"ursula": "user-pass-1", "anna": "annotator-pass-1", "rev": "reviewer-pass-1", "root": "admin-pass-1"}
ROLES = {"ursula": "user", "anna": "annotator", "rev": "reviewer", "root": "admin"}


def _label_bytes(shape: tuple[int, ...] = (20, 16, 12)) -> bytes:
    """A label on phantom_a's grid (see conftest.studies)."""
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 20]
    mask = np.zeros(shape, np.uint8)
    mask[6:10, 5:9, 4:7] = 1
    return nib.Nifti1Image(mask, affine).to_bytes()


def _app(studies: Path, data_dir: Path, **settings: object) -> TestClient:
    from annotation_server.server import create_app
    from annotation_server.settings import Settings
    from tests.conftest import TEST_APP

    config = Settings(studies=studies, data_dir=data_dir, rescan_interval_s=0, max_upload_mb=4, **settings)
    return TestClient(create_app(config, TEST_APP))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    store = UserStore(users_path(folder))
    for name, password in PASSWORDS.items():
        store.add(name, ROLES[name], password)
    store.close()
    return folder


@pytest.fixture
def auth_client(studies: Path, data_dir: Path) -> Iterator[TestClient]:
    with _app(studies, data_dir, auth_enabled=True, auth_token_expiry_s=600) as client:
        yield client


def _login(client: TestClient, name: str) -> dict[str, str]:
    response = client.post(
        "/auth/token", data={"username": name, "password": PASSWORDS[name], "grant_type": "password"}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


# ------------------------------------------------------------------------------------------- auth off
def test_auth_off_by_default_keeps_404_and_needs_no_headers(client, studies: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/auth/").status_code == 404  # what MONAI Label answers; clients read it as "no login"
    assert client.post("/auth/token", data={"username": "a", "password": "b"}).status_code == 404
    assert client.get("/info/").status_code == 200
    saved = client.put(
        "/datastore/label",
        params={"image": "phantom_a"},
        data={"params": '{"client_id": "user-xyz"}'},
        files={"label": ("phantom_a.nii", _label_bytes())},
    )
    assert saved.status_code == 200, saved.text
    versions = client.get("/datastore/label/versions", params={"image": "phantom_a", "tag": "final"}).json()
    assert versions["versions"][-1]["author"] == "user-xyz"  # the client's own id, as before
    assert not (tmp_path / "data" / "auth").exists()  # nothing is created while auth is off


# ------------------------------------------------------------------------------------------ the table
@pytest.mark.parametrize(
    ("method", "route", "role"),
    [
        ("GET", "/health", None),
        ("GET", "/", None),
        ("GET", "/info/", Role.user),
        ("GET", "/datastore/", Role.user),
        ("HEAD", "/datastore/label", Role.user),
        ("GET", "/session/{session_id}", Role.user),
        ("GET", "/logs/", Role.admin),
        ("GET", "/datastore/dataset", Role.admin),
        ("POST", "/infer/{model}", Role.annotator),
        ("POST", "/activelearning/{strategy}", Role.annotator),
        ("PUT", "/session/", Role.annotator),
        ("POST", "/interactive/sessions/{session_id}/prompt", Role.annotator),
        ("PUT", "/datastore/label", Role.annotator),
        ("PUT", "/datastore/", Role.annotator),
        ("POST", "/fl/queue/{entry_id}/approve", Role.reviewer),
        ("POST", "/fl/queue/{entry_id}/exclude", Role.reviewer),
        ("POST", "/train/{model}", Role.admin),
        ("DELETE", "/train/", Role.admin),
        ("POST", "/models/{model}/promote", Role.admin),
        ("POST", "/models/{model}/rollback", Role.admin),
        ("DELETE", "/datastore/image", Role.admin),
        ("DELETE", "/datastore/label", Role.admin),
        ("POST", "/scoring/{method}", Role.admin),
        ("GET", "/some/future/route", Role.user),  # unlisted reads: any logged-in user
        ("POST", "/some/future/route", Role.admin),  # unlisted writes: admin until someone decides
    ],
)
def test_route_table(method: str, route: str, role: Role | None) -> None:
    assert required_role(method, route) is role


# ------------------------------------------------------------------------------------------- auth on
def test_auth_endpoint_says_enabled(auth_client: TestClient) -> None:
    body = auth_client.get("/auth/").json()
    assert body["enabled"] is True and body["client_id"] == "annotation-server"


@pytest.mark.slow
def test_missing_token_is_401_like_monailabel_but_health_and_metrics_stay_open(auth_client: TestClient) -> None:
    response = auth_client.get("/info/")
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["www-authenticate"] == "Bearer"
    for path in ("/datastore/", "/datastore/image?image=phantom_a", "/session/abc", "/info"):
        assert auth_client.get(path).status_code == 401, path
    assert auth_client.get("/health").status_code == 200
    assert auth_client.get("/metrics").status_code == 200
    assert auth_client.get("/").status_code == 200


def test_token_flow_and_valid_endpoint(auth_client: TestClient) -> None:
    response = auth_client.post("/auth/token", data={"username": "anna", "password": PASSWORDS["anna"]})
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "bearer" and token["expires_in"] == 600 and token["access_token"].count(".") == 2
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    valid = auth_client.get("/auth/token/valid", headers=headers)
    assert valid.status_code == 200
    assert valid.json() == {"username": "anna", "email": None, "name": "anna", "roles": ["annotator", "user"]}
    assert auth_client.get("/info/", headers=headers).json()["labels"] == ["kidney", "tumor"]
    # 3D Slicer sends `<token_type> <token>`: the scheme is case-insensitive
    lower = {"Authorization": f"bearer {token['access_token']}"}
    assert auth_client.get("/info/", headers=lower).status_code == 200
    assert auth_client.get("/auth/token/valid").status_code == 401


@pytest.mark.slow
def test_wrong_password_and_unknown_user_get_the_same_clear_401(auth_client: TestClient) -> None:
    wrong = auth_client.post("/auth/token", data={"username": "anna", "password": "not-her-password"})
    unknown = auth_client.post("/auth/token", data={"username": "nobody", "password": "whatever-123"})
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert "wrong user name or password" in response.json()["detail"]
    assert wrong.json() == unknown.json()  # no hint which user names exist
    other_grant = auth_client.post(
        "/auth/token", data={"username": "anna", "password": PASSWORDS["anna"], "grant_type": "client_credentials"}
    )
    assert other_grant.status_code == 400 and "grant_type=password" in other_grant.json()["detail"]
    assert auth_client.post("/auth/token", data={"username": "anna"}).status_code == 422


@pytest.mark.slow
def test_next_sample_reserves_per_logged_in_user_even_with_slicers_fixed_client_id(auth_client: TestClient) -> None:
    anna, root = _login(auth_client, "anna"), _login(auth_client, "root")
    slicer = {"client_id": "user-xyz"}  # 3D Slicer's default: the same for everyone
    first = auth_client.post("/activelearning/first", json=slicer, headers=anna).json()
    second = auth_client.post("/activelearning/first", json=slicer, headers=root).json()
    assert first["id"] != second["id"]
    assert first["strategy"]["first"]["reserved_for"] == "anna"


@pytest.mark.slow
def test_repeated_wrong_passwords_make_that_user_wait_with_429_from_that_address_only(auth_client: TestClient) -> None:
    for _ in range(4):  # three free failures, the fourth starts the growing delay
        wrong = auth_client.post("/auth/token", data={"username": "anna", "password": "guess-123456"})
        assert wrong.status_code == 401
    blocked = auth_client.post("/auth/token", data={"username": "anna", "password": PASSWORDS["anna"]})
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    assert "4 failed logins for user 'anna' from testclient" in blocked.json()["detail"]
    _login(auth_client, "root")  # another user behind the same address is not blocked


@pytest.mark.slow
def test_roles_per_route(auth_client: TestClient) -> None:
    user, annotator, reviewer, admin = (_login(auth_client, name) for name in ("ursula", "anna", "rev", "root"))
    infer = "/infer/threshold?image=phantom_a&output=json"

    refused = auth_client.post(infer, headers=user)
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith('Role "annotator" is required for POST /infer/{model}')
    assert "annotate-server users role ursula annotator" in refused.json()["detail"]
    assert auth_client.get("/datastore/?output=all", headers=user).status_code == 200

    assert auth_client.post(infer, headers=annotator).status_code == 200
    assert auth_client.post("/activelearning/first", headers=annotator).json()["id"]
    for method, path, role in (
        ("POST", "/train/threshold", "admin"),
        ("DELETE", "/datastore/image?id=phantom_b", "admin"),
        ("GET", "/logs/", "admin"),
        ("POST", "/fl/queue/1/approve", "reviewer"),
    ):
        response = auth_client.request(method, path, headers=annotator)
        assert response.status_code == 403, (method, path, response.text)
        assert f'Role "{role}" is required' in response.json()["detail"]

    # a reviewer gets past the guard (the entry itself does not exist: 404 from the queue, not 403)
    assert auth_client.post("/fl/queue/999/approve", headers=reviewer).status_code == 404
    assert auth_client.request("DELETE", "/datastore/image?id=phantom_b", headers=reviewer).status_code == 403

    assert auth_client.request("DELETE", "/datastore/image?id=phantom_b", headers=admin).status_code == 200
    assert auth_client.get("/logs/", headers=admin).status_code == 200
    assert "phantom_b" not in auth_client.get("/datastore/?output=all", headers=admin).json()["objects"]


@pytest.mark.slow
def test_logged_in_user_is_the_author_and_the_reviewer(auth_client: TestClient) -> None:
    annotator, reviewer = _login(auth_client, "anna"), _login(auth_client, "rev")
    saved = auth_client.put(
        "/datastore/label",
        params={"image": "phantom_a"},
        data={"params": '{"client_id": "user-xyz"}'},  # Slicer's fixed default id: a claim, not proof
        files={"label": ("phantom_a.nii", _label_bytes())},
        headers=annotator,
    )
    assert saved.status_code == 200, saved.text
    history = auth_client.get(
        "/datastore/label/versions", params={"image": "phantom_a", "tag": "final"}, headers=annotator
    ).json()
    assert history["versions"][-1]["author"] == "anna"

    opened = auth_client.post("/interactive/sessions", json={"image": "phantom_a", "model": "cube"}, headers=annotator)
    assert opened.status_code == 200, opened.text
    session_id = opened.json()["session_id"]
    prompt = {"prompt": {"type": "point", "point": [8, 7, 5]}}
    assert auth_client.post(f"/interactive/sessions/{session_id}/prompt", json=prompt, headers=annotator).is_success
    saved = auth_client.post(
        f"/interactive/sessions/{session_id}/save", json={"client_id": "someone-else"}, headers=annotator
    )
    assert saved.status_code == 200, saved.text
    history = auth_client.get(
        "/datastore/label/versions", params={"image": "phantom_a", "tag": "final"}, headers=annotator
    ).json()
    assert [v["author"] for v in history["versions"]] == ["anna", "anna"]

    entry = auth_client.get("/fl/queue", headers=reviewer).json()["entries"][0]
    assert entry["annotator"] == "anna"
    excluded = auth_client.post(
        f"/fl/queue/{entry['id']}/exclude", json={"reason": "boundary wrong", "reviewer": "dr_who"}, headers=reviewer
    )
    assert excluded.status_code == 200, excluded.text
    assert excluded.json()["reviewer"] == "rev"


@pytest.mark.slow
def test_expired_tampered_and_foreign_tokens_are_401(auth_client: TestClient, data_dir: Path) -> None:
    good = _login(auth_client, "anna")["Authorization"].split()[1]
    header, payload, signature = good.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    secret = (data_dir / "auth" / "token_secret").read_text()
    expired = TokenSigner(secret, 60).issue("anna", ["annotator"], 1, now=time.time() - 3600)
    foreign = TokenSigner("x" * 40, 600).issue("anna", ["admin"], 1)
    for token, reason in (
        (f"{header}.{payload}.{flipped}", "signature"),
        (expired, "expired"),
        (foreign, "signature"),
        ("not-a-jwt", "not accepted"),
    ):
        response = auth_client.get("/info/", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, reason
        assert reason in response.json()["detail"] and "POST /auth/token" in response.json()["detail"]
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert auth_client.get("/info/", headers={"Authorization": f"Bearer {good}"}).status_code == 200


@pytest.mark.slow
def test_secret_file_is_private_and_store_changes_apply_to_open_tokens(auth_client: TestClient, data_dir: Path) -> None:
    assert (data_dir / "auth" / "token_secret").stat().st_mode & 0o777 == 0o600
    assert (data_dir / "auth").stat().st_mode & 0o777 == 0o700
    anna, ursula = _login(auth_client, "anna"), _login(auth_client, "ursula")
    store = UserStore(users_path(data_dir))  # what the `users` CLI does while the server runs
    store.set_role("ursula", "annotator")
    assert auth_client.post("/infer/threshold?image=phantom_a&output=json", headers=ursula).status_code == 200
    store.set_password("anna", "a-brand-new-password")
    changed = auth_client.get("/info/", headers=anna)
    assert changed.status_code == 401 and "password changed" in changed.json()["detail"]
    store.remove("ursula")
    gone = auth_client.get("/info/", headers=ursula)
    assert gone.status_code == 401 and "no longer exists" in gone.json()["detail"]
    store.close()


def test_a_given_secret_is_used_instead_of_the_file(studies: Path, data_dir: Path) -> None:
    secret = "s" * 40
    with _app(studies, data_dir, auth_enabled=True, auth_secret=secret) as client:
        token = TokenSigner(secret, 600).issue("root", ["admin"], 1)
        assert client.get("/logs/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert not (data_dir / "auth" / "token_secret").exists()


# --------------------------------------------------------------------------------------------- units
def test_passwords_are_salted_scrypt_hashes(data_dir: Path) -> None:
    from annotation_server.auth.passwords import hash_password, verify_password

    first, second = hash_password("same-password"), hash_password("same-password")
    assert first != second and first.startswith("scrypt$")  # per-user salt
    assert verify_password("same-password", first) and not verify_password("same-passwore", first)
    assert not verify_password("same-password", "garbage")
    stored = (data_dir / "auth" / "users.sqlite").read_bytes()
    assert b"annotator-pass-1" not in stored


def test_store_refuses_bad_input_with_actionable_messages(tmp_path: Path) -> None:
    from annotation_server.errors import ConflictError, InvalidRequestError, NotFoundError

    store = UserStore(tmp_path / "auth" / "users.sqlite")
    store.add("alice", "monailabel-reviewer", "long-enough")  # MONAI Label's role names are accepted
    assert store.get("alice").role is Role.reviewer  # type: ignore[union-attr]
    with pytest.raises(ConflictError, match="already exists"):
        store.add("alice", "user", "long-enough")
    with pytest.raises(InvalidRequestError, match="at least 8"):
        store.add("bob", "user", "short")
    with pytest.raises(InvalidRequestError, match="unknown role 'boss'"):
        store.add("bob", "boss", "long-enough")
    with pytest.raises(InvalidRequestError, match="invalid user name"):
        store.add("../bob", "user", "long-enough")
    with pytest.raises(NotFoundError, match="users list"):
        store.remove("carol")
    store.close()


# ----------------------------------------------------------------------------------------------- CLI
def _users(data_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (as an admin runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "annotation_server", "users", *args, "--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _users_here(data_dir: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The same command in this process (a new interpreter per call costs seconds on a small machine)."""
    from typer.testing import CliRunner

    from annotation_server.cli import cli

    result = CliRunner().invoke(cli, ["users", *args, "--data-dir", str(data_dir)], input=stdin)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


@pytest.mark.slow
def test_users_cli(tmp_path: Path) -> None:
    import json

    data = tmp_path / "data"
    added = _users(data, "add", "alice", "--role", "reviewer", "--password-stdin", stdin="secret-pass-1\n")
    assert added.returncode == 0, added.stderr
    assert "alice" in added.stdout and "secret-pass-1" not in added.stdout + added.stderr
    again = _users_here(data, "add", "alice", "--password-stdin", stdin="secret-pass-1\n")
    assert again.returncode == 2 and "already exists" in again.stderr
    short = _users_here(data, "add", "bob", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    bad_role = _users_here(data, "add", "bob", "--role", "boss", "--password-stdin", stdin="secret-pass-2\n")
    assert bad_role.returncode == 2
    assert _users_here(data, "add", "bob", "--password-stdin", stdin="secret-pass-2\n").returncode == 0

    rows = json.loads(_users_here(data, "list", "--json").stdout)
    assert [(r["username"], r["role"]) for r in rows] == [("alice", "reviewer"), ("bob", "annotator")]
    assert _users_here(data, "role", "bob", "admin").returncode == 0
    assert _users_here(data, "passwd", "bob", "--password-stdin", stdin="secret-pass-3\n").returncode == 0
    missing = _users_here(data, "passwd", "carol", "--password-stdin", stdin="secret-pass-3\n")
    assert missing.returncode == 2 and "no user named 'carol'" in missing.stderr
    assert _users_here(data, "remove", "alice").returncode == 0
    assert _users_here(data, "remove", "alice").returncode == 2

    store = UserStore(users_path(data))
    assert [(u.username, u.role) for u in store.list()] == [("bob", Role.admin)]
    assert store.authenticate("bob", "secret-pass-3") is not None and store.authenticate("bob", "secret-pass-2") is None
    store.close()


# ------------------------------------------------------------------ MONAI Label's client, real server
@pytest.mark.slow
def test_monailabel_client_logs_in_against_a_live_server(live_server, studies: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client_module = pytest.importorskip(
        "monailabel.client", reason="install the real client: pip install --no-deps monailabel==0.8.5"
    )
    data = tmp_path / "server-data"  # the live_server fixture's data dir
    assert _users(data, "add", "anna", "--password-stdin", stdin="annotator-pass-1\n").returncode == 0
    server = live_server(
        "--app",
        "kidney",
        "--studies",
        str(studies),
        env={"ANNOTATE_AUTH_ENABLED": "true", "ANNOTATE_LOG_LEVEL": "info"},
    )
    errors = client_module.client.MONAILabelClientException
    client = client_module.MONAILabelClient(server.url, tmpdir=str(tmp_path), client_id="user-xyz")

    assert client.auth_enabled() is True
    with pytest.raises(errors) as refused:
        client.info()  # no token yet
    assert refused.value.status_code == 401
    with pytest.raises(errors) as wrong:
        client.auth_token("anna", "not-the-password")
    assert wrong.value.status_code == 401 and "wrong user name or password" in wrong.value.msg
    assert client.auth_valid_token() is False

    client.update_auth(client.auth_token("anna", "annotator-pass-1"))
    assert client.auth_valid_token() is True
    assert client.info()["labels"] == ["kidney", "tumor", "cyst"]
    assert set(client.datastore()["objects"]) == {"phantom_a", "phantom_b", "sample_ct"}
    label = tmp_path / "label.nii"
    label.write_bytes(_label_bytes())
    assert client.save_label("phantom_a", str(label))["image"] == "phantom_a"
    info = client.datastore()["objects"]["phantom_a"]["labels"]["final"]["info"]
    assert info["client_id"] == "user-xyz"  # kept as the client sent it; the version's author is the login
    history = httpx.get(
        f"{server.url}/datastore/label/versions",
        params={"image": "phantom_a", "tag": "final"},
        headers={"Authorization": client._headers["Authorization"]},
    )
    assert history.json()["versions"][-1]["author"] == "anna"
    with pytest.raises(errors) as forbidden:
        client.train_start("kidney_seg", {"max_epochs": 1})
    assert "Status: 403" in forbidden.value.msg and 'Role \\"admin\\" is required' in forbidden.value.msg
    output = server.stop()
    assert "auth:    on (1 users, 0 admins)" in output
