"""A simulated multi-reader project on a live server, through the REST API (issue #15).

Cases: the real CT (TotalSegmentator's example_ct_sm, truth = its kidney labels on the same grid) and
phantoms with a tumor and a cyst (annotation_server.phantoms). Three simulated readers with known error models
read every case: `over` draws every structure one voxel too large and `under` one voxel too small, each along
about half of the boundary (smooth random patches, independent between readers), `missed` misses the cyst
(draws it as kidney) and adds boundary noise (each boundary voxel flipped with probability 0.3).

It checks that blinding holds on every route, compares STAPLE's consensus and the majority vote with the best
single reader (Dice against the truth), checks that agreement flags the reader with the missed cyst, and that
only the adjudicated labels reach the federated queue. Prints one JSON document.

    python benchmarks/multireader.py [--phantoms 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Server

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CT = REPO / "annotation_server" / "sample_data" / "example_ct_sm.nii.gz"
SAMPLE_KIDNEYS = REPO / "tests" / "slicer_extension" / "data" / "example_kidneys.nii.gz"
LABELS = {"kidney": 1, "tumor": 2, "cyst": 3}
READERS = ("over", "under", "missed")
PASSWORD = "simulated-pass-1"


# ---------------------------------------------------------------------------------------------- cases
def write_cases(studies: Path, phantoms: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write the images; return image id -> (truth label, affine)."""
    studies.mkdir(parents=True, exist_ok=True)
    truths: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ct = nib.load(str(SAMPLE_CT))
    kidneys = nib.load(str(SAMPLE_KIDNEYS))
    if kidneys.shape != ct.shape or not np.allclose(kidneys.affine, ct.affine):
        raise RuntimeError("the kidney labels are not on the sample CT's grid")
    shutil.copy(SAMPLE_CT, studies / "real_ct.nii.gz")
    truths["real_ct"] = (np.isin(np.asarray(kidneys.dataobj), (2, 3)).astype(np.uint8), ct.affine)
    from annotation_server.phantoms.config import PhantomConfig
    from annotation_server.phantoms.generator import generate_phantom

    config = PhantomConfig.easy().model_copy(
        update={"cyst_prob": 1.0, "tumor_prob": 1.0, "cyst_radius_mm": (10.0, 15.0), "tumor_radius_mm": (12.0, 20.0)}
    )
    seed = 0
    while sum(k.startswith("phantom") for k in truths) < phantoms:
        seed += 1
        phantom = generate_phantom(seed, config)
        counts = np.bincount(phantom.label.ravel(), minlength=4)
        if counts[2] < 200 or counts[3] < 200:  # each phantom case has a visible tumor and cyst
            continue
        name = f"phantom_{seed:03d}"
        nib.save(nib.Nifti1Image(phantom.image, phantom.affine), str(studies / f"{name}.nii.gz"))
        truths[name] = (phantom.label.astype(np.uint8), phantom.affine)
    return truths


def patches(shape: tuple[int, ...], rng: np.random.Generator, fraction: float = 0.5) -> np.ndarray:
    """Smooth random regions covering about `fraction` of the grid: where along the boundary a reader errs.
    A reader's errors come in patches (a stretch of boundary drawn too wide), independent between readers."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=3)
    return field > np.quantile(field, 1 - fraction)


def simulate(reader: str, truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A reader's label from the truth with the reader's known error model."""
    if reader == "over":  # structures one voxel too large (into the background) along half their boundary
        grown = ndimage.grey_dilation(truth, size=(3, 3, 3))
        return np.where((truth == 0) & patches(truth.shape, rng), grown, truth).astype(np.uint8)
    if reader == "under":  # structures one voxel too small along half their boundary
        out = truth.copy()
        where = patches(truth.shape, rng)
        for value in LABELS.values():
            mask = truth == value
            out[mask & ~ndimage.binary_erosion(mask) & where] = 0
        return out
    out = np.where(truth == 3, 1, truth).astype(np.uint8)  # missed the cyst: drawn as kidney
    foreground = out > 0
    shell = ndimage.binary_dilation(foreground) & ~ndimage.binary_erosion(foreground)
    flip = shell & (rng.random(out.shape) < 0.3)  # boundary noise: 30% of boundary voxels flipped
    grown = ndimage.grey_dilation(out, size=(3, 3, 3))
    return np.where(flip, np.where(foreground, 0, grown), out).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def per_label_dice(label: np.ndarray, truth: np.ndarray) -> dict[str, float | None]:
    return {name: dice(label == value, truth == value) for name, value in LABELS.items()}


def mean_dice(scores: dict[str, float | None]) -> float:
    values = [v for v in scores.values() if v is not None]
    return float(np.mean(values))


# --------------------------------------------------------------------------------------------- server
def add_users(data_dir: Path) -> None:
    from annotation_server.auth.service import users_path
    from annotation_server.auth.users import UserStore

    store = UserStore(users_path(data_dir))
    for name in READERS:
        store.add(name, "annotator", PASSWORD)
    store.add("judge", "adjudicator", PASSWORD)
    store.add("boss", "lead", PASSWORD)
    store.close()


def ok(response: httpx.Response) -> httpx.Response:
    """The response, or an error that carries the server's `detail` (raise_for_status drops it)."""
    if response.is_error:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.status_code} {response.text}")
    return response


def login(client: httpx.Client, name: str) -> dict[str, str]:
    response = client.post("/auth/token", data={"username": name, "password": PASSWORD})
    ok(response)
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def nifti(array: np.ndarray, affine: np.ndarray) -> bytes:
    return nib.Nifti1Image(array.astype(np.uint8), affine).to_bytes()


def read_nifti(content: bytes) -> np.ndarray:
    content = gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content  # .nii.gz or .nii
    return np.asarray(nib.Nifti1Image.from_bytes(content).dataobj).astype(np.uint8)


def blinding_probes(client: httpx.Client, headers: dict[str, str], image: str, other_tag: str) -> dict[str, int]:
    """Every route through which one reader could see another's read: the status codes it answers."""
    probes = {
        "GET /datastore/label": client.get(
            "/datastore/label", params={"label": image, "tag": other_tag}, headers=headers
        ),
        "HEAD /datastore/label": client.head(
            "/datastore/label", params={"image": image, "tag": other_tag}, headers=headers
        ),
        "GET /datastore/label/info": client.get(
            "/datastore/label/info", params={"label": image, "tag": other_tag}, headers=headers
        ),
        "GET /datastore/label/versions": client.get(
            "/datastore/label/versions", params={"image": image}, headers=headers
        ),
        "POST /interactive/sessions from_label": client.post(
            "/interactive/sessions", json={"image": image, "from_label": other_tag}, headers=headers
        ),
        "GET /projects/.../agreement": client.get("/projects/1/cases/" + image + "/agreement", headers=headers),
        "GET /projects/.../report": client.get("/projects/1/report", headers=headers),
    }
    codes = {name: r.status_code for name, r in probes.items()}
    listing = client.get("/datastore/", params={"output": "all"}, headers=headers).json()
    codes["GET /datastore/?output=all lists it"] = int(other_tag in listing["objects"][image]["labels"])
    return codes


def run(phantoms: int, work: Path) -> dict[str, Any]:
    studies, data_dir = work / "studies", work / "data"
    truths = write_cases(studies, phantoms)
    add_users(data_dir)
    rng = np.random.default_rng(15)
    server = Server(
        ["--app", "kidney", "--studies", str(studies), "--data-dir", str(data_dir)],
        env={"ANNOTATE_AUTH_ENABLED": "true", "ANNOTATE_RESCAN_INTERVAL_S": "0"},
    )
    try:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            return simulate_project(client, truths, rng) | {"server_startup_s": round(server.startup_s, 1)}
    finally:
        server.stop()


def simulate_project(
    client: httpx.Client, truths: dict[str, tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
) -> dict[str, Any]:
    h = {name: login(client, name) for name in (*READERS, "judge", "boss")}
    spec = {"name": "simulated kidney truth", "app": "kidney", "images": sorted(truths), "readers": list(READERS)}
    project = client.post("/projects", json={**spec, "readers_per_image": 3, "seed": 15}, headers=h["boss"])
    ok(project)
    pid = project.json()["id"]
    reads: dict[str, dict[str, np.ndarray]] = {image: {} for image in truths}
    started = time.perf_counter()
    for reader in READERS:
        while nxt := client.post(f"/projects/{pid}/next", headers=h[reader]).json():
            image = nxt["id"]
            truth, affine = truths[image]
            label = simulate(reader, truth, rng)
            saved = client.put(
                f"/projects/{pid}/cases/{image}/label",
                data={"params": json.dumps({"seconds": 60})},
                files={"label": (f"{image}.nii", nifti(label, affine))},
                headers=h[reader],
            )
            ok(saved)
            reads[image][reader] = label
    reading_s = time.perf_counter() - started
    # blinding: every reader probes every other reader's read of every case, on every route
    blinding: dict[str, dict[str, int]] = {}
    for image in truths:
        for reader in READERS:
            for other in READERS:
                if other != reader:
                    for route, code in blinding_probes(client, h[reader], image, f"reader-p{pid}-{other}").items():
                        blinding.setdefault(route, {}).setdefault(str(code), 0)
                        blinding[route][str(code)] += 1
    blinding_holds = all(set(codes) == ({"0"} if "lists it" in route else {"403"}) for route, codes in blinding.items())
    started = time.perf_counter()
    report = client.get(f"/projects/{pid}/report", headers=h["judge"]).json()
    report_s = time.perf_counter() - started
    csv_rows = len(client.get(f"/projects/{pid}/report.csv", headers=h["judge"]).text.strip().splitlines()) - 1
    # a lead saving a final directly (not adjudicated): held out of the training queue
    first = sorted(truths)[0]
    client.put(
        "/datastore/label",
        params={"image": first},
        files={"label": ("x.nii", nifti(truths[first][0], truths[first][1]))},
        headers=h["boss"],
    ).is_error and sys.exit("the lead's direct final was refused")
    cases: dict[str, Any] = {}
    adjudicated: dict[str, int] = {}
    consensus_s = 0.0
    for image, (truth, affine) in sorted(truths.items()):
        started = time.perf_counter()
        made = client.post(f"/projects/{pid}/cases/{image}/consensus", params={"method": "staple"}, headers=h["judge"])
        ok(made)
        consensus_s += time.perf_counter() - started
        tag = made.json()["tag"]
        staple = read_nifti(
            client.get("/datastore/label", params={"label": image, "tag": tag}, headers=h["judge"]).content
        )
        info = client.get("/datastore/label/info", params={"label": image, "tag": tag}, headers=h["judge"]).json()
        from annotation_server.projects.agreement import majority_vote

        majority = majority_vote([reads[image][r] for r in READERS])
        readers = {r: per_label_dice(reads[image][r], truth) for r in READERS}
        best = max(READERS, key=lambda r: mean_dice(readers[r]))
        cases[image] = {
            "dice_vs_truth": {
                "staple": per_label_dice(staple, truth),
                "majority": per_label_dice(majority, truth),
                **readers,
            },
            "best_reader": best,
            "staple_mean_dice": round(mean_dice(per_label_dice(staple, truth)), 4),
            "best_reader_mean_dice": round(mean_dice(readers[best]), 4),
            "staple_sensitivity": {
                label: {r: round(v["sensitivity"], 3) for r, v in per_reader.items()}
                for label, per_reader in info["consensus"]["staple"].items()
            },
        }
        # the adjudicator corrects the consensus (here: accepts it as drawn) and saves the final
        final = client.post(
            f"/projects/{pid}/cases/{image}/adjudicate",
            data={"params": json.dumps({"seconds": 90})},
            files={"label": (f"{image}.nii", nifti(staple, affine))},
            headers=h["judge"],
        )
        ok(final)
        adjudicated[image] = final.json()["version"]
    queue = client.get("/fl/queue", params={"limit": 1000}, headers=h["boss"]).json()["entries"]
    eligible = {(e["image_id"], e["label_version"]) for e in queue if e["status"] == "eligible"}
    held = [e for e in queue if e["status"] == "excluded" and "adjudication" in (e["reason"] or "")]
    missed = report["missed_structures"]
    phantoms = [i for i in truths if i.startswith("phantom")]
    return {
        "cases": len(truths),
        "readers": list(READERS),
        "reads": sum(len(r) for r in reads.values()),
        "blinding": blinding,
        "blinding_holds": blinding_holds,
        "per_case": cases,
        "staple_beats_best_reader": {i: c["staple_mean_dice"] > c["best_reader_mean_dice"] for i, c in cases.items()},
        "flagged_cases": report["flagged_cases"],
        "readers_below_threshold": report["flagged_readers"],
        "missed_structures": missed,
        "missed_cyst_reader_flagged_on_every_phantom": all(missed.get(i) == {"missed": ["cyst"]} for i in phantoms),
        "missed_structures_on_real_ct": missed.get("real_ct", {}),
        "report_csv_rows": csv_rows,
        "queue": {
            "eligible": sorted(f"{i} v{v}" for i, v in eligible),
            "adjudicated": sorted(f"{i} v{v}" for i, v in adjudicated.items()),
            "only_adjudicated_eligible": eligible == set(adjudicated.items()),
            "direct_finals_held": len(held),
            "reader_tags_in_queue": sum(e["label_tag"] != "final" for e in queue),
        },
        "timings_s": {
            "reading_all_reads": round(reading_s, 2),
            "report": round(report_s, 2),
            "consensus_all_cases": round(consensus_s, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=2, help="phantom cases besides the real CT")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    if args.keep:
        result = run(args.phantoms, args.keep)
    else:
        with tempfile.TemporaryDirectory() as work:
            result = run(args.phantoms, Path(work))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
