"""Interactive click latency through the HTTP session API, against the raw forward pass of the same model.

Runs with no arguments on the embedded sample CT: starts a real `annotate-server --app kidney` on
127.0.0.1, opens a session, clicks inside the kidneys, and prints JSON:

- click_p50_s / click_p95_s: warm click round trips (HTTP in, delta out);
- raw_forward_p50_s: the click model's forward pass on the same ROI, measured in this run; ratio = p50 / raw;
  stock_forward_p50_s: the same with PyTorch's stock convolution dispatch (what a plain `network(x)` costs);
- first_click_s after server start, and its ratio to the warm p50;
- delta_bytes vs full_label_bytes for a local edit (and on the full-body CT when ../shared is present);
- fine_grid: new-object and corrective clicks on the same CT resampled to 0.75 x 0.75 x 1 mm;
- info_p99_during_infer_s: GET /info/ while clicks run;
- with --clients N: N annotators clicking at once, each pausing --think-s seconds on average (uniform, from
  half to one and a half times it) between clicks, as a person looks at the result before the next click:
  errors and p95 against the single-client p95. The same N clients are also run back to back with no pause
  (`saturated`): that measures the server's throughput, not annotators.

    python benchmarks/interactive.py [--model kidney_click] [--clicks 40] [--clients 8] [--think-s 1.0]
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from common import Server

REPO = Path(__file__).resolve().parents[1]
# Voxels inside the two kidneys of the embedded sample CT (example_ct_sm), in (i, j, k).
EDGE_CLICK = (88, 38, 8)  # just inside the lateral edge of the right kidney
KIDNEY_CLICKS = [(81, 38, 8), (34, 37, 9), (78, 40, 12), (36, 35, 6), (84, 36, 5), (31, 39, 12)]


def delta_size(answer: dict) -> int:
    return len(base64.b64decode(answer["delta"]["data"])) if answer.get("delta") else 0


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


class Annotator:
    def __init__(self, client: httpx.Client, model: str, image: str = "example_ct_sm") -> None:
        self.client = client
        response = client.post("/interactive/sessions", json={"image": image, "model": model})
        response.raise_for_status()
        self.id = response.json()["session_id"]

    def click(self, point: tuple[int, int, int], new_object: bool, positive: bool = True) -> tuple[float, dict]:
        started = time.perf_counter()
        response = self.client.post(
            f"/interactive/sessions/{self.id}/prompt",
            json={"prompt": {"type": "point", "point": list(point), "positive": positive}, "new_object": new_object},
        )

        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed, response.json()


def clicking(
    client: httpx.Client, model: str, clicks: int, think_s: float = 0.0, answers: list[dict] | None = None
) -> list[float]:
    """One annotator's clicks: their round trips (and, into `answers`, what the server said of each)."""
    annotator = Annotator(client, model)
    times = []
    for index in range(clicks):
        if think_s:  # before the first click too: annotators do not start in lockstep
            time.sleep(random.uniform(0.5, 1.5) * think_s)
        elapsed, answer = annotator.click(KIDNEY_CLICKS[index % len(KIDNEY_CLICKS)], new_object=index % 2 == 0)
        times.append(elapsed)
        if answers is not None:
            answers.append(answer)
    return times


def where_the_time_goes(times: list[float], answers: list[dict]) -> dict[str, float]:
    """Medians of a click's parts: the forward pass, the rest of the server's work, and HTTP (client side)."""
    forward = statistics.median(a["timing"]["forward_s"] for a in answers)
    server = statistics.median(a["seconds"] for a in answers)
    return {
        "server_forward_p50_s": round(forward, 4),
        "server_other_p50_s": round(server - forward, 4),
        "http_and_client_p50_s": round(statistics.median(times) - server, 4),
    }


def many_annotators(client: httpx.Client, model: str, clients: int, clicks: int, think_s: float) -> dict[str, object]:
    """`clients` annotators clicking at once; every click's round trip, and errors counted (not raised)."""
    errors: list[str] = []
    all_times: list[float] = []
    lock = threading.Lock()

    def annotator() -> None:
        try:
            times = clicking(client, model, clicks, think_s)
            with lock:
                all_times.extend(times)
        except Exception as exc:  # counted, not raised: the number of errors is the result
            with lock:
                errors.append(repr(exc))

    started = time.perf_counter()
    threads = [threading.Thread(target=annotator) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "errors": len(errors),
        "error_samples": errors[:3],
        "p50_s": round(statistics.median(all_times), 4) if all_times else None,
        "p95_s": round(percentile(all_times, 95), 4) if all_times else None,
        "clicks_per_s": round(len(all_times) / wall, 2),
    }


def raw_forward_p50(model: str, repeats: int, stock: bool = False) -> float:
    """The same model's forward pass on the patch a click at KIDNEY_CLICKS[0] produces, in this process.

    `stock`: with PyTorch's own convolution dispatch, as a plain `network(x)` runs, instead of the oneDNN
    path the server uses for one-patch 3-D inference (annotation_server.inference.onednn).
    """
    import torch

    from annotation_models import bundle_path
    from annotation_server.imaging import read_volume
    from annotation_server.inference.click_task import BundleClickTask
    from annotation_server.inference.onednn import OneDNNConv3d

    task = BundleClickTask(bundle_path(model))
    task.load("cpu")
    if stock:
        for module in task._runtime().network.modules():
            if type(module) is OneDNNConv3d:
                module.__class__ = torch.nn.Conv3d
    volume = read_volume(REPO / "annotation_server" / "sample_data" / "example_ct_sm.nii.gz")
    network_input, _, _ = task.network_patch(volume, [KIDNEY_CLICKS[0]], [])
    runtime = task._runtime()
    runtime.forward_patch(network_input)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.forward_patch(network_input)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def kidney_clicks(seg: Path) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A click at the right kidney's centre and one just inside its lateral edge, from TotalSegmentator's labels."""
    from scipy import ndimage

    from annotation_server.imaging import read_volume

    kidney = read_volume(seg).array == 2  # TotalSegmentator: 2 = kidney_right
    centre = np.argwhere(kidney)[len(np.argwhere(kidney)) // 2]
    inside = ndimage.binary_erosion(kidney, iterations=2) & ~ndimage.binary_erosion(kidney, iterations=3)
    ring = np.argwhere(inside[:, :, centre[2]])
    edge = ring[np.argmax(np.abs(ring[:, 0] - centre[0]))]
    return tuple(int(v) for v in centre), (int(edge[0]), int(edge[1]), int(centre[2]))  # type: ignore[return-value]


def fine_grid_clicks(client: httpx.Client, model: str, folder: Path, clicks: int = 12) -> dict[str, object]:
    """Clicks on the embedded CT resampled to a clinical grid (0.75 x 0.75 x 1 mm, 488 x 404 x 90): the model's
    patch is the same, so a click should cost about the same as on the 3 mm crop; this shows whether it does."""
    import nibabel as nib
    from scipy import ndimage

    source = nib.load(REPO / "annotation_server" / "sample_data" / "example_ct_sm.nii.gz")
    factors = (4, 4, 3)
    array = ndimage.zoom(np.asarray(source.dataobj).astype(np.int16), factors, order=1).astype(np.int16)
    affine = source.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([1 / f for f in factors])
    path = folder / "fine_ct.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), path)
    client.put(
        "/datastore/image", params={"image": "fine_ct"}, files={"file": (path.name, path.read_bytes())}
    ).raise_for_status()
    annotator = Annotator(client, model, image="fine_ct")
    right_kidney = tuple(v * f for v, f in zip(KIDNEY_CLICKS[0], factors, strict=True))
    edge = tuple(v * f for v, f in zip(EDGE_CLICK, factors, strict=True))
    firsts: list[tuple[float, dict]] = []
    corrections: list[tuple[float, dict]] = []
    for index in range(clicks):
        if index % 2 == 0:
            firsts.append(annotator.click(right_kidney, new_object=True))
        else:
            corrections.append(annotator.click(edge, new_object=False, positive=False))

    def summary(rows: list[tuple[float, dict]]) -> dict[str, float]:
        rows = rows[1:]  # the first of each kind warms the image's caches
        return {
            "click_p50_s": round(statistics.median(r[0] for r in rows), 4),
            "server_forward_p50_s": round(statistics.median(r[1]["timing"]["forward_s"] for r in rows), 4),
        }

    return {"shape": list(array.shape), "new_object": summary(firsts), "correction": summary(corrections)}


def full_ct_edit(client: httpx.Client, model: str, folder: Path) -> dict[str, object]:
    """The same local edit on the full-body CT (112 slices instead of the embedded crop's 30)."""
    upload = client.put(
        "/datastore/image",
        params={"image": "full_ct"},
        files={"file": ("full_ct.nii.gz", (folder / "example_ct.nii.gz").read_bytes())},
    )
    upload.raise_for_status()
    centre, edge = kidney_clicks(folder / "example_seg_fast_force_split.nii.gz")
    response = client.post("/interactive/sessions", json={"image": "full_ct", "model": model})
    response.raise_for_status()
    session = response.json()["session_id"]

    def click(point: tuple[int, int, int], positive: bool) -> dict:
        prompt = {"type": "point", "point": list(point), "positive": positive}
        answer = client.post(f"/interactive/sessions/{session}/prompt", json={"prompt": prompt, "new_object": positive})
        answer.raise_for_status()
        return answer.json()

    click(centre, True)
    edit = click(edge, False)
    full = client.get(f"/interactive/sessions/{session}/mask")
    return {
        "delta_bytes": delta_size(edit),
        "full_label_bytes": len(full.content),
        "delta_vs_full": round(delta_size(edit) / max(len(full.content), 1), 4),
    }


def default_full_ct() -> Path | None:
    for parent in REPO.parents:
        candidate = parent / "shared" / "data" / "totalsegmentator"
        if (candidate / "example_ct.nii.gz").is_file():
            return candidate
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kidney_click")
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--clients", type=int, default=0, help="also run N annotators at once")
    parser.add_argument(
        "--think-s", type=float, default=1.0, help="with --clients: mean pause between one annotator's clicks"
    )
    parser.add_argument(
        "--full-ct",
        type=Path,
        default=default_full_ct(),
        help="folder with TotalSegmentator's example_ct.nii.gz (default: ../shared/data/totalsegmentator if present): "
        "also measure the local edit's delta on the full-body CT",
    )
    args = parser.parse_args()
    report: dict[str, object] = {"benchmark": "interactive", "model": args.model, "clicks": args.clicks}
    with tempfile.TemporaryDirectory(prefix="interactive-bench-") as tmp:
        server = Server(["--app", "kidney", "--data-dir", str(Path(tmp))])
        url, startup_s = server.url, server.startup_s
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                report["server_start_s"] = round(startup_s, 2)
                first = Annotator(client, args.model)
                first_click_s, answer = first.click(KIDNEY_CLICKS[1], new_object=True)  # left kidney
                first.click(KIDNEY_CLICKS[0], new_object=True)  # right kidney: the object now refined
                # A local edit: a background click at the edge of the right kidney's mask.
                _, edit = first.click(EDGE_CLICK, new_object=False, positive=False)
                full = client.get(f"/interactive/sessions/{first.id}/mask")  # what a client would fetch instead
                report["first_click_delta_bytes"] = delta_size(answer)
                report["delta_bytes"] = delta_size(edit)
                report["full_label_bytes"] = len(full.content)
                report["delta_vs_full"] = round(delta_size(edit) / max(len(full.content), 1), 4)
                if args.full_ct is not None:
                    report["full_ct"] = full_ct_edit(client, args.model, args.full_ct)
                report["fine_grid"] = fine_grid_clicks(client, args.model, Path(tmp))

                answers: list[dict] = []
                warm = clicking(client, args.model, args.clicks, answers=answers)
                report["click_parts"] = where_the_time_goes(warm, answers)
                p50, p95 = statistics.median(warm), percentile(warm, 95)
                raw = raw_forward_p50(args.model, repeats=max(10, args.clicks // 2))
                stock = raw_forward_p50(args.model, repeats=max(10, args.clicks // 2), stock=True)
                report.update(
                    {
                        "click_p50_s": round(p50, 4),
                        "click_p95_s": round(p95, 4),
                        "raw_forward_p50_s": round(raw, 4),
                        "ratio": round(p50 / raw, 3),
                        "stock_forward_p50_s": round(stock, 4),
                        "ratio_vs_stock_forward": round(p50 / stock, 3),
                        "first_click_s": round(first_click_s, 4),
                        "first_click_vs_warm_p50": round(first_click_s / p50, 3),
                    }
                )

                info_times: list[float] = []
                stop = threading.Event()

                def keep_clicking() -> None:
                    while not stop.is_set():
                        clicking(client, args.model, 4)

                worker = threading.Thread(target=keep_clicking)
                worker.start()
                time.sleep(0.2)
                for _ in range(100):
                    started = time.perf_counter()
                    client.get("/info/").raise_for_status()
                    info_times.append(time.perf_counter() - started)
                    time.sleep(0.01)
                stop.set()
                worker.join()
                report["info_p99_during_infer_s"] = round(percentile(info_times, 99), 4)

                if args.clients:
                    clicks = max(5, args.clicks // 4)
                    paced = many_annotators(client, args.model, args.clients, 2 * clicks, args.think_s)
                    saturated = many_annotators(client, args.model, args.clients, clicks, 0.0)
                    report.update(
                        {
                            "clients": args.clients,
                            "think_s": args.think_s,
                            "errors": paced["errors"] + saturated["errors"],
                            "error_samples": paced["error_samples"] + saturated["error_samples"],
                            "multi_p95_s": paced["p95_s"],
                            "multi_p95_vs_single_p95": round(paced["p95_s"] / p95, 3) if paced["p95_s"] else None,
                            "paced": paced,
                            "saturated": {
                                **saturated,
                                "p95_vs_single_p95": round(saturated["p95_s"] / p95, 3) if saturated["p95_s"] else None,
                            },
                        }
                    )
        finally:
            server.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
