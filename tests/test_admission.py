"""Fair admission of clicks (issue #12, finding 10): per-user queues served round-robin, a per-user and a
total cap, a bounded wait ending in 503 + Retry-After. Deterministic: the order of turns and the refusals
are checked, never how long anything took."""

from __future__ import annotations

import asyncio

import pytest

from annotation_server.errors import BusyError
from annotation_server.inference.admission import FairAdmission, RoundRobinQueues


def test_round_robin_order_between_users() -> None:
    queues: RoundRobinQueues[str] = RoundRobinQueues(capacity=100, per_user=10)
    for i in range(5):
        assert queues.push("busy", f"busy-{i}") is None
    assert queues.push("anna", "anna-0") is None
    assert queues.push("bob", "bob-0") is None
    assert queues.push("anna", "anna-1") is None
    order = [queues.pop() for _ in range(len(queues))]
    assert order == ["busy-0", "anna-0", "bob-0", "busy-1", "anna-1", "busy-2", "busy-3", "busy-4"]
    assert queues.pop() is None and len(queues) == 0


def test_one_user_cannot_hold_more_than_their_share() -> None:
    queues: RoundRobinQueues[int] = RoundRobinQueues(capacity=4, per_user=2)
    assert queues.push("busy", 1) is None and queues.push("busy", 2) is None
    assert "you already have 2 clicks waiting" in (queues.push("busy", 3) or "")
    assert queues.push("anna", 4) is None and queues.push("bob", 5) is None
    assert "5" not in (queues.push("carol", 6) or "") and queues.push("carol", 6) is not None  # total cap
    assert queues.remove("busy", 2) and not queues.remove("busy", 2)
    assert queues.push("carol", 6) is None and len(queues) == 4


async def _grants(admission: FairAdmission, users: list[str]) -> list[str]:
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
    served = asyncio.run(_grants(admission, ["busy", "busy", "busy", "anna", "bob"]))
    assert served == ["busy", "anna", "bob", "busy", "busy"]  # first come, first served would be 3 x busy first
    assert admission.running == 0 and len(admission.queues) == 0


def test_fast_path_takes_the_free_slot_without_waiting() -> None:
    async def run() -> tuple[int, int]:
        admission = FairAdmission(slots=1)
        await admission.acquire("anna")  # returns at once: no future was made
        held = admission.running
        admission.release()
        return held, admission.running

    assert asyncio.run(run()) == (1, 0)


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
        with pytest.raises(BusyError, match=r"about 2\.4 s for your turn, more than 2 s") as refused:
            await admission.acquire("dave")  # refused now, not after waiting 2 s for nothing
        assert refused.value.retry_after_s == 2 and admission.refused == 1
        assert admission.expected_wait_s("anna") == pytest.approx(2.4)  # anna's second click: all 3 ahead
        for _ in range(3):
            admission.release(0.6)
        await asyncio.gather(*first, carol)
        admission.release(0.6)
        assert admission.running == 0 and admission.hold_s == pytest.approx(0.6)

    asyncio.run(run())
