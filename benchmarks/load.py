"""Load: N annotators at once, mixing reads and clicks, against a real server on loopback.

Starts `annotate-server --app kidney` (the embedded sample CT, the real click model) on 127.0.0.1 with a
fresh data folder, opens one interactive session per user, then runs a bounded asyncio client (httpx):
each user loops until the deadline, sending a click (`--click-share` of requests) or a read (GET /info/,
GET /datastore/?output=all, GET /interactive/sessions/{id}), pausing `--think-s` on average in between
(uniform from half to one and a half times it; 0 = back to back). It prints JSON: per endpoint the count,
p50/p95/p99 of the answered (2xx) requests, errors by status; clicks' 503 share; server RSS (MB: start,
peak, end, sampled every 0.5 s from /proc); answered clicks per user (min/median/max). `--greedy-users N`:
the first N users click non-stop, several at once, and their answered clicks are reported apart. After a
503 a client waits the Retry-After it was given (`--ignore-retry-after`: asks again at once).

    python benchmarks/load.py [--users 50] [--duration-s 45] [--think-s 1.0] [--click-share 0.5]
    python benchmarks/load.py --repo /path/to/other/checkout   # the same load against another version

Traffic goes to 127.0.0.1 only; every loop is bounded by the deadline and a per-request timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
from common import Server

REPO = Path(__file__).resolve().parents[1]
# Voxels inside the two kidneys of the embedded sample CT (example_ct_sm), in (i, j, k).
KIDNEY_CLICKS = [(81, 38, 8), (34, 37, 9), (78, 40, 12), (36, 35, 6), (84, 36, 5), (31, 39, 12)]
READS = ("GET /info/", "GET /datastore/?output=all", "GET /interactive/sessions/{id}")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Recorder:
    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.clicks_ok: Counter[int] = Counter()  # answered clicks per user: how evenly the model was shared

    def add(self, endpoint: str, status: str, seconds: float) -> None:
        self.statuses[endpoint][status] += 1
        if status.startswith("2"):
            self.times[endpoint].append(seconds)

    def report(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for endpoint in sorted(self.statuses):
            times = self.times[endpoint]
            statuses = self.statuses[endpoint]
            total = sum(statuses.values())
            out[endpoint] = {
                "requests": total,
                "ok": len(times),
                **{f"p{q}_s": round(float(np.percentile(times, q)), 4) if times else None for q in (50, 95, 99)},
                "errors": {s: n for s, n in sorted(statuses.items()) if not s.startswith("2")},
                "error_share": round(1 - len(times) / total, 4) if total else None,
            }
        return out


async def user(
    client: httpx.AsyncClient, index: int, deadline: float, args: argparse.Namespace, recorder: Recorder
) -> None:
    opened = await client.post("/interactive/sessions", json={"image": "example_ct_sm", "model": args.model})
    opened.raise_for_status()
    session = opened.json()["session_id"]
    if index < args.greedy_users:  # clicks only, `greedy_concurrency` at a time, no pause: a user hogging the model
        greedy = argparse.Namespace(**{**vars(args), "click_share": 1.0, "think_s": 0.0})
        loops = [
            requests(client, index, n, session, deadline, greedy, recorder) for n in range(args.greedy_concurrency)
        ]
        await asyncio.gather(*loops)
    else:
        await requests(client, index, 0, session, deadline, args, recorder)


async def requests(
    client: httpx.AsyncClient,
    index: int,
    lane: int,
    session: str,
    deadline: float,
    args: argparse.Namespace,
    recorder: Recorder,
) -> None:
    """One user's request loop until the deadline (a greedy user runs several at once)."""
    rng = random.Random(index * 100 + lane)
    clicks = 0
    if args.think_s:  # users do not start in lockstep
        await asyncio.sleep(rng.uniform(0, args.think_s))
    while time.monotonic() < deadline:
        if rng.random() < args.click_share:
            endpoint = "POST /interactive/sessions/{id}/prompt"
            point = KIDNEY_CLICKS[(index + clicks) % len(KIDNEY_CLICKS)]
            body = {"prompt": {"type": "point", "point": list(point)}, "new_object": clicks % 4 == 0}
            request = client.build_request("POST", f"/interactive/sessions/{session}/prompt", json=body)
            clicks += 1
        else:
            endpoint = rng.choice(READS)
            method, path = endpoint.split(" ")
            request = client.build_request(method, path.replace("{id}", session))
        started = time.perf_counter()
        retry_after = 0.0
        try:
            response = await client.send(request)
            status = str(response.status_code)
            if response.status_code == 503 and not args.ignore_retry_after:
                retry_after = float(response.headers.get("retry-after", 1))
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        recorder.add(endpoint, status, time.perf_counter() - started)
        if endpoint.endswith("/prompt"):
            recorder.clicks_ok[index] += status.startswith("2")
        if retry_after:  # a well-behaved client waits as told before asking again
            await asyncio.sleep(retry_after)
        elif args.think_s:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * args.think_s)


async def sample_rss(pid: int, stop: asyncio.Event, samples: list[float]) -> None:
    while not stop.is_set():
        value = rss_mb(pid)
        if value is not None:
            samples.append(value)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def run_load(url: str, pid: int, args: argparse.Namespace) -> dict[str, object]:
    recorder = Recorder()
    samples: list[float] = []
    limits = httpx.Limits(max_connections=args.users, max_keepalive_connections=args.users)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout_s, limits=limits) as client:
        start_rss = rss_mb(pid)
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample_rss(pid, stop, samples))
        started = time.monotonic()
        deadline = started + args.duration_s
        results = await asyncio.gather(
            *(user(client, i, deadline, args, recorder) for i in range(args.users)), return_exceptions=True
        )
        wall = time.monotonic() - started
        stop.set()
        await sampler
    failed_users = [repr(r) for r in results if isinstance(r, BaseException)]
    clicks = recorder.statuses.get("POST /interactive/sessions/{id}/prompt", Counter())
    total_clicks = sum(clicks.values())
    per_user = [recorder.clicks_ok[i] for i in range(args.greedy_users, args.users)]
    greedy = [recorder.clicks_ok[i] for i in range(args.greedy_users)]
    return {
        "wall_s": round(wall, 1),
        "requests": sum(sum(c.values()) for c in recorder.statuses.values()),
        "requests_per_s": round(sum(sum(c.values()) for c in recorder.statuses.values()) / wall, 1),
        "clicks_answered_per_s": round(sum(n for s, n in clicks.items() if s.startswith("2")) / wall, 2),
        "click_503_share": round(clicks.get("503", 0) / total_clicks, 4) if total_clicks else None,
        "endpoints": recorder.report(),
        "clicks_answered_per_user": {
            "min": min(per_user),
            "median": float(np.median(per_user)),
            "max": max(per_user),
            "users_with_none": sum(1 for n in per_user if n == 0),
        },
        "greedy_users_clicks_answered": greedy,
        "users_failed": len(failed_users),
        "user_failures": failed_users[:3],
        "server_rss_mb": {
            "start": round(start_rss, 1) if start_rss else None,
            "peak": round(max(samples), 1) if samples else None,
            "end": round(samples[-1], 1) if samples else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--duration-s", type=float, default=45.0)
    parser.add_argument("--think-s", type=float, default=1.0, help="mean pause between one user's requests")
    parser.add_argument("--click-share", type=float, default=0.5, help="share of requests that are clicks")
    parser.add_argument("--model", default="kidney_click")
    parser.add_argument("--greedy-users", type=int, default=0, help="of the users, how many click non-stop")
    parser.add_argument("--greedy-concurrency", type=int, default=4, help="clicks a greedy user keeps in flight")
    parser.add_argument(
        "--ignore-retry-after", action="store_true", help="ask again at once after a 503 (default: wait as told)"
    )
    parser.add_argument("--timeout-s", type=float, default=30.0, help="per-request client timeout")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose server to run (default: this one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data:
        env = {"PYTHONPATH": str(args.repo), "ANNOTATE_RESCAN_INTERVAL_S": "0"}
        server = Server(["--app", "kidney", "--data-dir", data], env=env, cwd=args.repo)
        try:
            result = asyncio.run(run_load(server.url, server.process.pid, args))
        finally:
            server.stop()
    commit = os.popen(f"git -C {args.repo} rev-parse --short HEAD 2>/dev/null").read().strip() or None
    print(
        json.dumps(
            {
                "benchmark": "load",
                "server": str(args.repo),
                "commit": commit,
                "users": args.users,
                "duration_s": args.duration_s,
                "think_s": args.think_s,
                "click_share": args.click_share,
                "greedy_users": args.greedy_users,
                "greedy_concurrency": args.greedy_concurrency,
                "honors_retry_after": not args.ignore_retry_after,
                "cpus": os.cpu_count(),
                **result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
