"""Auth design findings of issue #12 (item 9) and logout: throttling per (user, address) with growing delays
instead of a name locked out from everywhere, interactive sessions that belong to their creator, the
four-eyes rule in the federated review queue, and revocable tokens."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from annotation_server.auth.throttle import LoginThrottle, TooManyAttemptsError
from tests.test_auth import PASSWORDS, _label_bytes, _login, auth_client, data_dir  # noqa: F401 (fixtures)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fail_until_blocked(throttle: LoginThrottle, clock: Clock, user: str, address: str, times: int) -> None:
    """`times` wrong passwords from one pair, each one as soon as the throttle lets it through."""
    for _ in range(times):
        try:
            throttle.check(user, address)
        except TooManyAttemptsError as exc:
            clock.now += exc.retry_after_s
            throttle.check(user, address)
        throttle.failed(user, address)


def test_delays_grow_per_pair_and_cap() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_failures=3, base_delay_s=1, max_delay_s=60, clock=clock)
    waits = []
    for _ in range(10):
        throttle.failed("anna", "10.0.0.1")
        try:
            throttle.check("anna", "10.0.0.1")
            waits.append(0)
        except TooManyAttemptsError as exc:
            waits.append(exc.retry_after_s)
            clock.now += exc.retry_after_s
    assert waits == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60]


def test_nat_address_and_a_stranger_cannot_lock_out_the_admin() -> None:
    """The finding: 20 failures from one NAT address locked the admin (right password) out; 5 failures for a
    name locked it out from anywhere. Now only the guessing (name, address) pair waits."""
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for name in ("anna", "bob", "carol", "dave", "eve"):  # 20 failures behind one NAT address
        _fail_until_blocked(throttle, clock, name, "192.0.2.7", 4)
    throttle.check("root", "192.0.2.7")  # the admin behind the same NAT logs in
    _fail_until_blocked(throttle, clock, "root", "203.0.113.9", 12)  # a stranger guesses the admin's password
    with pytest.raises(TooManyAttemptsError, match=r"user 'root' from 203\.0\.113\.9"):
        throttle.check("root", "203.0.113.9")
    throttle.check("root", "192.0.2.7")  # the admin's own address is not affected
    throttle.succeeded("anna", "192.0.2.7")
    throttle.check("anna", "192.0.2.7")  # a good login clears the pair


def test_pairs_are_forgotten_and_bounded() -> None:
    clock = Clock()
    throttle = LoginThrottle(free_failures=0, forget_after_s=100, max_pairs=3, clock=clock)
    throttle.failed("anna", "a")
    with pytest.raises(TooManyAttemptsError):
        throttle.check("anna", "a")
    clock.now += 101
    throttle.check("anna", "a")  # forgotten
    for i in range(10):
        throttle.failed(f"made-up-{i}", "a")
    assert len(throttle._pairs) == 3  # a flood of made-up names cannot grow memory without bound


# ----------------------------------------------------------------------------------- sessions' owners
def _open(client: TestClient, name: str, headers: dict[str, str]) -> str:
    opened = client.post("/interactive/sessions", json={"image": "phantom_a", "model": "cube"}, headers=headers)
    assert opened.status_code == 200, opened.text
    assert opened.json()["owner"] == name
    return opened.json()["session_id"]


def test_sessions_belong_to_their_creator(auth_client: TestClient) -> None:  # noqa: F811
    anna, rev, root = (_login(auth_client, name) for name in ("anna", "rev", "root"))
    mine = _open(auth_client, "anna", anna)
    theirs = _open(auth_client, "rev", rev)
    prompt = {"prompt": {"type": "point", "point": [8, 7, 5]}}
    assert auth_client.post(f"/interactive/sessions/{mine}/prompt", json=prompt, headers=anna).status_code == 200

    for method, suffix, body in (
        ("GET", "", None),
        ("POST", "/prompt", prompt),
        ("POST", "/undo", None),
        ("POST", "/reset", None),
        ("GET", "/mask", None),
        ("POST", "/save", {}),
        ("DELETE", "", None),
    ):
        refused = auth_client.request(method, f"/interactive/sessions/{mine}{suffix}", json=body, headers=rev)
        assert refused.status_code == 403, (method, suffix, refused.text)
        assert "belongs to 'anna'" in refused.json()["detail"]
    # an admin may close another user's session but not drive it
    assert auth_client.post(f"/interactive/sessions/{theirs}/prompt", json=prompt, headers=root).status_code == 403
    assert [s["session_id"] for s in auth_client.get("/interactive/sessions", headers=anna).json()] == [mine]
    assert {s["session_id"] for s in auth_client.get("/interactive/sessions", headers=root).json()} == {mine, theirs}
    assert auth_client.delete(f"/interactive/sessions/{theirs}", headers=root).status_code == 200
    assert auth_client.get(f"/interactive/sessions/{theirs}", headers=rev).status_code == 404
    # the owner still has everything: the work was not touched by the refused calls
    state = auth_client.get(f"/interactive/sessions/{mine}", headers=anna).json()
    assert state["version"] == 1 and state["can_undo"]
    assert auth_client.post(f"/interactive/sessions/{mine}/save", json={}, headers=anna).status_code == 200
    assert auth_client.delete(f"/interactive/sessions/{mine}", headers=anna).status_code == 200


def test_sessions_with_auth_off_work_as_before(client) -> None:  # type: ignore[no-untyped-def]
    opened = client.post("/interactive/sessions", json={"image": "phantom_a", "model": "cube"}).json()
    assert opened["owner"] is None
    sid = opened["session_id"]
    prompt = {"prompt": {"type": "point", "point": [8, 7, 5]}}
    assert client.post(f"/interactive/sessions/{sid}/prompt", json=prompt).status_code == 200
    assert [s["session_id"] for s in client.get("/interactive/sessions").json()] == [sid]
    assert client.delete(f"/interactive/sessions/{sid}").status_code == 200


# --------------------------------------------------------------------------------------------- four eyes
def _save_label(client: TestClient, headers: dict[str, str]) -> None:
    saved = client.put(
        "/datastore/label",
        params={"image": "phantom_a"},
        files={"label": ("phantom_a.nii", _label_bytes())},
        headers=headers,
    )
    assert saved.status_code == 200, saved.text


def test_a_reviewer_cannot_approve_their_own_label(auth_client: TestClient) -> None:  # noqa: F811
    rev, other = _login(auth_client, "rev"), _login(auth_client, "root")
    _save_label(auth_client, rev)  # a reviewer annotates too
    entry = auth_client.get("/fl/queue", headers=rev).json()["entries"][0]
    assert entry["annotator"] == "rev"
    excluded = {"reason": "second look needed"}
    assert auth_client.post(f"/fl/queue/{entry['id']}/exclude", json=excluded, headers=other).status_code == 200
    own = auth_client.post(f"/fl/queue/{entry['id']}/approve", json={"reviewer": "someone-else"}, headers=rev)
    assert own.status_code == 403
    assert "nobody approves their own" in own.json()["detail"] and "another reviewer" in own.json()["detail"]
    assert auth_client.get(f"/fl/queue/{entry['id']}", headers=rev).json()["status"] == "excluded"
    approved = auth_client.post(f"/fl/queue/{entry['id']}/approve", headers=other)
    assert approved.status_code == 200 and approved.json()["reviewer"] == "root"


def test_four_eyes_is_not_applied_with_auth_off(client) -> None:  # type: ignore[no-untyped-def]
    saved = client.put(
        "/datastore/label",
        params={"image": "phantom_a"},
        data={"params": '{"client_id": "anna"}'},
        files={"label": ("phantom_a.nii", _label_bytes())},
    )
    assert saved.status_code == 200, saved.text
    entry = client.get("/fl/queue").json()["entries"][0]
    approved = client.post(f"/fl/queue/{entry['id']}/approve", json={"reviewer": entry["annotator"]})
    assert approved.status_code == 200, approved.text


# ----------------------------------------------------------------------------------------------- logout
def test_logout_revokes_that_token_only(auth_client: TestClient) -> None:  # noqa: F811
    first, second = _login(auth_client, "anna"), _login(auth_client, "anna")
    assert auth_client.get("/info/", headers=first).status_code == 200
    out = auth_client.post("/auth/logout", headers=first)
    assert out.status_code == 200 and out.json() == {"username": "anna", "revoked": True}
    after = auth_client.get("/info/", headers=first)
    assert after.status_code == 401 and "logged out" in after.json()["detail"]
    assert auth_client.get("/auth/token/valid", headers=first).status_code == 401
    assert auth_client.post("/auth/logout", headers=first).status_code == 401  # not twice
    assert auth_client.post("/auth/logout").status_code == 401  # no token
    assert auth_client.get("/info/", headers=second).status_code == 200  # the other login still works


@pytest.mark.slow
def test_nat_scenario_against_a_real_server(live_server, studies, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The finding, replayed over HTTP: many failures from one NAT address, and a stranger guessing the admin's
    password, no longer lock the admin out. Addresses come from X-Forwarded-For, which the server trusts from
    127.0.0.1 only (a proxy on the same machine, see docs/security.md); the audit trail records them."""
    import time

    import httpx

    from annotation_server.auth.service import users_path
    from annotation_server.auth.users import UserStore

    store = UserStore(users_path(tmp_path / "server-data"))
    for name in ("root", "anna", "bob", "carol", "dave", "eve"):
        store.add(name, "admin" if name == "root" else "annotator", f"{name}-pass-123")
    store.close()
    server = live_server("--app", "kidney", "--studies", str(studies), env={"ANNOTATE_AUTH_ENABLED": "true"})

    def login(name: str, password: str, address: str) -> httpx.Response:
        return httpx.post(
            f"{server.url}/auth/token",
            data={"username": name, "password": password},
            headers={"X-Forwarded-For": address},
            timeout=30,
        )

    def fail(name: str, address: str, times: int) -> None:
        """`times` wrong passwords, each as soon as the server lets that pair try again."""
        for _ in range(times):
            answer = login(name, "wrong-password", address)
            if answer.status_code == 429:
                time.sleep(int(answer.headers["retry-after"]))
                answer = login(name, "wrong-password", address)
            assert answer.status_code == 401, answer.text

    nat, stranger = "192.0.2.7", "203.0.113.9"
    for name in ("anna", "bob", "carol", "dave", "eve"):  # 20 failures behind one NAT address
        fail(name, nat, 4)
    fail("root", stranger, 6)  # a stranger guesses the admin's password: that pair now waits 4 s
    refused = login("root", "root-pass-123", stranger)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    admin = login("root", "root-pass-123", nat)  # the admin, behind the busy NAT address, right password
    assert admin.status_code == 200, admin.text
    token = {"Authorization": f"Bearer {admin.json()['access_token']}"}
    failures = httpx.get(f"{server.url}/audit", params={"action": "auth", "limit": 1000}, headers=token).json()
    addresses = {(r["action"], r["address"]) for r in failures["records"]}
    assert ("auth.login_failed", nat) in addresses and ("auth.login_failed", stranger) in addresses
    assert ("auth.login_throttled", stranger) in addresses and ("auth.login", nat) in addresses
    actions = [r["action"] for r in failures["records"]]
    assert actions.count("auth.login_failed") == 26 and actions.count("auth.login") == 1
