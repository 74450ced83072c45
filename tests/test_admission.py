"""Fair admission of clicks (issue #12, finding 10): the least recently served user goes first, per-user and
total caps (a newcomer served longer ago takes the place of one served recently), a bounded wait ending in
503 + Retry-After. Deterministic: turns are counted and the order and refusals are checked, never how long
anything took."""

from __future__ import annotations

import asyncio
import json

import pytest

from annotation_server.errors import BusyError
from annotation_server.inference.admission import FairAdmission, FairQueue


def _drain(queue: FairQueue[str]) -> list[str]:
    order = []
    while (turn := queue.pop()) is not None:
        user, item = turn
        queue.served(user)
        order.append(item)
    return order


def test_least_recently_served_user_goes_first() -> None:
    queue: FairQueue[str] = FairQueue(capacity=100, per_user=10)
    for i in range(4):
        assert queue.push("busy", f"busy-{i}") == (None, None)
    queue.push("anna", "anna-0")
    queue.push("bob", "bob-0")
    queue.push("anna", "anna-1")
    assert _drain(queue) == ["busy-0", "anna-0", "bob-0", "busy-1", "anna-1", "busy-2", "busy-3"]
    assert queue.pop() is None and len(queue) == 0


def test_a_user_who_just_had_a_turn_waits_behind_those_who_have_not() -> None:
    """The case a plain rotation gets wrong: the queue empties between turns, and the non-stop clicker is
    always the first to ask again. Remembered turns put them behind."""
    queue: FairQueue[str] = FairQueue(capacity=16, per_user=2)
    queue.served("busy")  # busy just clicked (fast path) ...
    queue.push("busy", "busy-again")  # ... and asks again at once
    queue.push("anna", "anna-0")  # anna, who has not had a turn for a while, asks a moment later
    assert _drain(queue) == ["anna-0", "busy-again"]
    assert queue.ahead_of("carol") == 0  # a newcomer never served goes first


def test_caps_and_a_newcomer_bumping_someone_served_more_recently() -> None:
    queue: FairQueue[str] = FairQueue(capacity=3, per_user=2)
    queue.served("anna")
    queue.served("busy")  # busy's turn is the most recent
    assert queue.push("busy", "b1") == (None, None) and queue.push("busy", "b2") == (None, None)
    refusal, _ = queue.push("busy", "b3")
    assert refusal is not None and "you already have 2 clicks waiting" in refusal
    assert queue.push("anna", "a1") == (None, None)  # the queue is now full
    assert queue.push("carol", "c1") == (None, "b2")  # never served: takes busy's newest place
    assert queue.push("anna", "a2") == (None, "b1")  # anna's turn is older than busy's: busy's last place
    refusal, bumped = queue.push("busy", "b4")  # everyone waiting was served longer ago than busy
    assert refusal is not None and "served longer ago" in refusal and bumped is None
    assert queue.remove("anna", "a2") and not queue.remove("anna", "a2")
    assert _drain(queue) == ["c1", "a1"]


def test_forgets_the_users_longest_without_a_turn() -> None:
    queue: FairQueue[str] = FairQueue(capacity=4, per_user=1, remembered_users=10)
    for i in range(25):
        queue.served(f"user-{i}")
    assert len(queue._last_turn) <= 10 and queue.last_turn("user-24") == 25 and queue.last_turn("user-0") == -1


async def _turns(admission: FairAdmission, users: list[str]) -> list[str]:
    """Queue a click for each of `users` (in order) while the slot is held, then let them through one by one;
    returns who got each turn."""
    served: list[str] = []

    async def click(user: str) -> None:
        async with admission.slot(user):
            served.append(user)
            await asyncio.sleep(0)

    await admission.acquire("holder")
    tasks = []
    for user in users:
        tasks.append(asyncio.create_task(click(user)))
        await asyncio.sleep(0)  # let it reach the queue, in this order
    admission.release()
    await asyncio.gather(*tasks)
    return served


def test_a_busy_user_does_not_starve_the_others() -> None:
    admission = FairAdmission(slots=1, capacity=16, per_user=3, wait_s=30)
    served = asyncio.run(_turns(admission, ["busy", "busy", "busy", "anna", "bob"]))
    assert served == ["busy", "anna", "bob", "busy", "busy"]  # first come, first served would be 3 x busy first
    assert admission.running == 0 and len(admission.queues) == 0


def test_fast_path_takes_the_free_slot_without_waiting() -> None:
    async def run() -> tuple[int, int, int]:
        admission = FairAdmission(slots=1)
        await admission.acquire("anna")  # returns at once: no future was made
        held = admission.running
        admission.release()
        return held, admission.running, admission.queues.last_turn("anna")

    assert asyncio.run(run()) == (1, 0, 1)


def test_refusals_and_bounded_wait_give_busy_with_retry_after() -> None:
    async def run() -> None:
        admission = FairAdmission(slots=1, capacity=2, per_user=1, wait_s=0.05)
        await admission.acquire("holder")
        waiting = asyncio.create_task(admission.acquire("anna"))
        await asyncio.sleep(0)
        with pytest.raises(BusyError, match="you already have 1 clicks waiting") as over_share:
            await admission.acquire("anna")
        assert over_share.value.retry_after_s == 1
        with pytest.raises(BusyError, match=r"no turn within 0\.05 s"):
            await waiting  # the holder never lets go: the wait ends, it does not pile up
        assert admission.timed_out == 1 and len(admission.queues) == 0
        admission.release()
        assert admission.running == 0  # the slot was not handed to the click that gave up

    asyncio.run(run())


def test_a_bumped_click_gets_busy_and_the_newcomer_its_turn() -> None:
    async def run() -> None:
        admission = FairAdmission(slots=1, capacity=1, per_user=2, wait_s=30)
        await admission.acquire("busy")  # busy holds the model ...
        busy_next = asyncio.create_task(admission.acquire("busy"))  # ... and queues the next click
        await asyncio.sleep(0)
        anna = asyncio.create_task(admission.acquire("anna"))  # never served: takes busy's place
        await asyncio.sleep(0)
        with pytest.raises(BusyError, match="your place went to an annotator served longer ago"):
            await busy_next
        admission.release()
        await anna
        assert admission.running == 1 and admission.queues.last_turn("anna") > admission.queues.last_turn("busy")

    asyncio.run(run())


def test_a_cancelled_waiter_does_not_leak_the_slot() -> None:
    async def run() -> None:
        admission = FairAdmission(slots=1, wait_s=30)
        await admission.acquire("holder")
        gone = asyncio.create_task(admission.acquire("anna"))
        await asyncio.sleep(0)
        gone.cancel()  # the client hung up
        await asyncio.gather(gone, return_exceptions=True)
        admission.release()
        assert admission.running == 0 and len(admission.queues) == 0
        await admission.acquire("bob")  # the slot is free again
        assert admission.running == 1

    asyncio.run(run())


def test_a_click_that_could_not_get_its_turn_in_time_is_refused_at_once() -> None:
    async def run() -> None:
        admission = FairAdmission(slots=1, capacity=16, per_user=4, wait_s=2.0)
        await admission.acquire("holder")
        admission.hold_s = 0.6  # clicks have recently held the model for 0.6 s each
        assert admission.expected_wait_s("anna") == pytest.approx(0.6)
        first = [asyncio.create_task(admission.acquire(u)) for u in ("anna", "bob")]
        await asyncio.sleep(0)
        assert admission.expected_wait_s("carol") == pytest.approx(1.8)  # behind anna and bob, then her turn
        carol = asyncio.create_task(admission.acquire("carol"))
        await asyncio.sleep(0)
        with pytest.raises(BusyError, match=r"about 2\.4 s until your turn, more than 2 s") as refused:
            await admission.acquire("dave")  # refused now, not after waiting 2 s for nothing
        assert refused.value.retry_after_s == 2 and admission.refused == 1
        for _ in range(3):
            admission.release(0.6)
        await asyncio.gather(*first, carol)
        admission.release(0.6)
        assert admission.running == 0 and admission.hold_s == pytest.approx(0.6)

    asyncio.run(run())


def test_clicks_over_http_get_503_with_retry_after_when_the_user_has_too_many_waiting(client) -> None:  # type: ignore[no-untyped-def]
    """Through the real route: the admission the server built refuses a user's extra click with 503."""
    services = client.app.state.services
    admission = services.interactive.admission
    opened = client.post("/interactive/sessions", json={"image": "phantom_a", "model": "cube"}).json()
    prompt = {"prompt": {"type": "point", "point": [8, 7, 5]}}
    assert client.post(f"/interactive/sessions/{opened['session_id']}/prompt", json=prompt).status_code == 200
    admission.queues.per_user = 0  # nobody may wait: with the slot taken, every click is refused at once
    admission.running = admission.slots
    try:
        busy = client.post(f"/interactive/sessions/{opened['session_id']}/prompt", json=prompt)
    finally:
        admission.running = 0
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
    assert "the click model is busy" in busy.json()["detail"]


def test_monai_label_infer_clicks_take_turns_with_the_sessions_clicks(client) -> None:  # type: ignore[no-untyped-def]
    """A click through MONAI Label's /infer (3D Slicer's MONAILabel module) goes through the same admission:
    refused with 503 + Retry-After when the thread is taken and nobody may wait; an automatic model is not."""
    admission = client.app.state.services.interactive.admission
    click = {"params": json.dumps({"foreground": [[8, 7, 5]], "client_id": "slicer-user"})}
    assert client.post("/infer/cube?image=phantom_a&output=json", data=click).status_code == 200
    admission.queues.per_user = 0
    admission.running = admission.slots
    try:
        busy = client.post("/infer/cube?image=phantom_a&output=json", data=click)
        automatic = client.post("/infer/threshold?image=phantom_a&output=json", data={"params": "{}"})
    finally:
        admission.running = 0
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
    assert "the click model is busy" in busy.json()["detail"]
    assert automatic.status_code == 200
    assert client.post("/infer/cube?image=phantom_a&output=json", data=click).status_code == 200
