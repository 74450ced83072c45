"""Our warm click against MONAI Label 0.8.5's /infer on the same weights and the same volume, side by side.

MONAI Label 0.8.5 only runs here with pins (monai 1.4.0, pydicom 2.4.4, pynetdicom < 3, dicomweb-client
0.59.x, CPU torch 2.13.0), so it gets its own virtualenv, created on first use (``--venv``, default
``benchmarks/.venv-monailabel``). The script writes a minimal MONAI Label app that serves the shipped
`kidney_click` weights with the same preprocessing (RAS, 2 mm, HU window, Gaussian click guidance), starts
both servers on 127.0.0.1, and alternates requests: MONAI Label `POST /infer/kidney_click?image=` with
the clicks, ours a prompt in an open interactive session. Prints both medians and the ratio (JSON).

    python benchmarks/vs_monailabel.py [--image example_ct] [--rounds 15] [--venv DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
from common import Server

REPO = Path(__file__).resolve().parents[1]
PINS = [
    "torch==2.13.0",
    "monai==1.4.0",
    "monailabel==0.8.5",
    "pydicom==2.4.4",
    "pynetdicom<3",
    "dicomweb-client[gcp]>=0.59.1,<0.60",
]
CLICKS = {"example_ct": [(81, 38, 90), (34, 37, 91)], "example_ct_sm": [(81, 38, 8), (34, 37, 9)]}

APP_SOURCE = '''
"""A minimal MONAI Label app serving annotation-server's kidney_click weights (benchmark only)."""
import json, os
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet
from monai.transforms import (Activationsd, AsDiscreted, ConcatItemsd, EnsureChannelFirstd, EnsureTyped,
                              LoadImaged, MapTransform, Orientationd, ScaleIntensityRanged, Spacingd)
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monai.transforms import Orientation, Resize

# monailabel.transform.post imports torchvision, which fails beside this torch build: restore here instead,
# the way its Restored does (resize back to the input's shape, then undo the orientation).


class Restored(MapTransform):
    def __init__(self, keys, ref_image):
        super().__init__(keys)
        self.ref_image = ref_image

    def __call__(self, data):
        d = dict(data)
        meta = d[self.ref_image].meta
        result = d["pred"]
        shape = [int(v) for v in meta["spatial_shape"]]
        if list(result.shape[1:]) != shape:
            result = Resize(spatial_size=shape, mode="nearest")(result)
        axcodes = "".join(__import__("nibabel").orientations.aff2axcodes(np.asarray(meta["original_affine"])))
        with Orientation(axcodes=axcodes).trace_transform(False):
            result = Orientation(axcodes=axcodes)(result)
        d["pred"] = np.asarray(result[0]).astype(np.uint8)
        return d

RECIPE = json.load(open(os.path.join(os.path.dirname(__file__), "recipe.json")))


class AddGuidanced(MapTransform):
    """Gaussian blobs (sigma in mm) at the clicks, drawn on the image's own grid, as annotation-server does."""

    def __init__(self, sigma_mm):
        super().__init__(keys="image")
        self.sigma_mm = sigma_mm

    def __call__(self, data):
        d = dict(data)
        image = d["image"]
        shape = tuple(image.shape[1:])
        spacing = np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)
        guidance = np.zeros((2, *shape), dtype=np.float32)
        for channel, key in enumerate(("foreground", "background")):
            for point in d.get(key, []):  # a box of 3 sigma around each click: the same cost as ours
                lo = [max(0, int(p - 3 * self.sigma_mm / s)) for p, s in zip(point, spacing)]
                hi = [min(n, int(p + 3 * self.sigma_mm / s) + 1) for p, s, n in zip(point, spacing, shape)]
                axes = [(np.arange(a, b) - p) * s for a, b, p, s in zip(lo, hi, point, spacing)]
                d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
                box = guidance[channel, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
                np.maximum(box, np.exp(-d2 / (2 * self.sigma_mm ** 2)), out=box)
        d["guidance"] = MetaTensor(torch.from_numpy(guidance), meta=dict(image.meta))
        return d


class KidneyClick(BasicInferTask):
    def __init__(self, path):
        network = UNet(**{k: v for k, v in RECIPE["network_def"].items() if k != "_target_"})
        super().__init__(path=path, network=network, type=InferType.DEEPGROW, labels=["kidney"], dimension=3,
                         description="annotation-server kidney_click weights", config={"cache_transforms": False})

    def pre_transforms(self, data=None):
        keys = ["image", "guidance"]
        return [LoadImaged(keys="image", image_only=True), EnsureChannelFirstd(keys="image"),
                AddGuidanced(RECIPE["sigma_mm"]), Orientationd(keys=keys, axcodes="RAS"),
                Spacingd(keys=keys, pixdim=RECIPE["spacing"], mode=("bilinear", "bilinear")),
                ScaleIntensityRanged(keys="image", a_min=RECIPE["window"][0], a_max=RECIPE["window"][1],
                                     b_min=0.0, b_max=1.0, clip=True),
                ConcatItemsd(keys=keys, name="image", dim=0), EnsureTyped(keys="image")]

    def inferer(self, data=None):
        return SlidingWindowInferer(roi_size=RECIPE["patch"], sw_batch_size=1, overlap=0.25, mode="gaussian")

    def post_transforms(self, data=None):
        return [EnsureTyped(keys="pred", device="cpu"), Activationsd(keys="pred", softmax=True),
                AsDiscreted(keys="pred", argmax=True), Restored(keys="pred", ref_image="image")]


class BenchApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="bench",
                         description="kidney_click in MONAI Label", version="0.8.5")

    def init_infers(self):
        return {"kidney_click": KidneyClick(os.path.join(self.app_dir, "model", "kidney_click.pt"))}

    def init_trainers(self):
        return {}

    def init_strategies(self):
        return {"random": Random()}
'''


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not (venv / "bin" / "monailabel").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PINS], check=True)
    return venv / "bin" / "monailabel"


def write_app(folder: Path) -> None:
    from annotation_apps.kidney import recipes
    from annotation_models import bundle_path

    (folder / "model").mkdir(parents=True)
    (folder / "main.py").write_text(textwrap.dedent(APP_SOURCE))
    recipe = {
        "network_def": recipes.click_network_def(),
        "sigma_mm": recipes.CLICK_SIGMA_MM,
        "spacing": list(recipes.CLICK_SPACING),
        "window": list(recipes.HU_WINDOW),
        "patch": list(recipes.CLICK_PATCH),
    }
    (folder / "recipe.json").write_text(json.dumps(recipe))
    shutil.copy(bundle_path("kidney_click") / "models" / "model.pt", folder / "model" / "kidney_click.pt")


def alternate(
    theirs_url: str, ours_url: str, image: str, clicks: list[tuple[int, int, int]], rounds: int
) -> tuple[list[float], list[float]]:
    """Alternate MONAI Label /infer and our session prompt on the same clicks; round 0 warms up, uncounted."""
    ours_times, theirs_times = [], []
    with httpx.Client(timeout=600) as client:
        session = client.post(f"{ours_url}/interactive/sessions", json={"image": image, "model": "kidney_click"})
        session_id = session.json()["session_id"]
        for round_index in range(rounds + 1):
            point = list(clicks[round_index % len(clicks)])
            params = json.dumps(
                {"foreground": [point], "background": [], "result_extension": ".nii.gz", "result_dtype": "uint8"}
            )
            started = time.perf_counter()
            theirs = client.post(f"{theirs_url}/infer/kidney_click?image={image}", files={"params": (None, params)})
            theirs_s = time.perf_counter() - started
            started = time.perf_counter()
            ours = client.post(
                f"{ours_url}/interactive/sessions/{session_id}/prompt",
                json={"prompt": {"type": "point", "point": point}, "new_object": True},
            )
            ours_s = time.perf_counter() - started
            if theirs.status_code != 200 or ours.status_code != 200:
                raise RuntimeError(
                    f"request failed: MONAI Label {theirs.status_code} {theirs.text[:200]}, "
                    f"ours {ours.status_code} {ours.text[:200]}"
                )
            if round_index:
                theirs_times.append(theirs_s)
                ours_times.append(ours_s)
    return theirs_times, ours_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="example_ct", choices=sorted(CLICKS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--venv", type=Path, default=REPO / "benchmarks" / ".venv-monailabel")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    monailabel = ensure_venv(args.venv)
    source = args.shared / "totalsegmentator" / f"{args.image}.nii.gz"
    if not source.is_file():
        source = REPO / "annotation_server" / "sample_data" / "example_ct_sm.nii.gz"
        args.image = "example_ct_sm"
    clicks = CLICKS[args.image]
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="vs-monailabel-") as tmp:
        root = Path(tmp)
        for name in ("ours", "theirs"):
            (root / name / "studies").mkdir(parents=True)
            shutil.copy(source, root / name / "studies" / source.name)
        write_app(root / "app")
        try:
            theirs = Server(
                ["start_server", "--app", str(root / "app"), "--studies", str(root / "theirs" / "studies")],
                command=[str(monailabel)],
                cwd=root,
                env={
                    "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
                    "PATH": f"{monailabel.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                },
            )
            servers.append(theirs)
            ours = Server(
                [
                    "--app",
                    "kidney",
                    "--studies",
                    str(root / "ours" / "studies"),
                    "--data-dir",
                    str(root / "ours" / "data"),
                ]
            )
            servers.append(ours)
            theirs_times, ours_times = alternate(theirs.url, ours.url, args.image, clicks, args.rounds)
        finally:
            for server in servers:
                server.stop()
    theirs_p50, ours_p50 = statistics.median(theirs_times), statistics.median(ours_times)
    print(
        json.dumps(
            {
                "benchmark": "vs_monailabel",
                "image": args.image,
                "rounds": args.rounds,
                "monailabel_infer_p50_s": round(theirs_p50, 4),
                "ours_click_p50_s": round(ours_p50, 4),
                "speedup": round(theirs_p50 / ours_p50, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
