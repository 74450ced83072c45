"""Visual and numeric check of the phantom generator against the real CT in ../shared.

    python benchmarks/phantom_preview.py                      # montage PNG + JSON stats on stdout
    python benchmarks/phantom_preview.py --out /tmp/p.png --shared /path/to/shared --seeds 3

Writes one PNG: the first row is the real CT (axial slice through the kidney hila, coronal slice through the
kidneys, TotalSegmentator kidney contours), the other rows are phantoms for every contrast phase and every
preset, shown the same way (red kidney, yellow tumor, cyan cyst). Prints JSON with per-tissue HU statistics
of the phantoms (per phase) next to the real CT, and the generation time per phantom.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from scipy import ndimage

from annotation_server.phantoms import Phantom, PhantomConfig, Phase, Tissue, generate_phantom

WINDOW = (-160, 240)
REAL_TISSUES = {  # TotalSegmentator ids -> comparison name
    "kidney": (2, 3),
    "liver": (5,),
    "spleen": (1,),
    "aorta": (52,),
    "ivc": (63,),
    "psoas": (88, 89),
    "paraspinal": (86, 87),
    "vertebra": (26, 27, 28, 29, 30, 31, 32, 33),
}
PHANTOM_TISSUES = {
    "kidney": (Tissue.KIDNEY_CORTEX, Tissue.KIDNEY_MEDULLA),
    "liver": (Tissue.LIVER,),
    "spleen": (Tissue.SPLEEN,),
    "aorta": (Tissue.ARTERY,),
    "ivc": (Tissue.VEIN,),
    "psoas": (Tissue.PSOAS,),
    "paraspinal": (Tissue.PARASPINAL,),
    "vertebra": (Tissue.BONE_CORTICAL, Tissue.BONE_CANCELLOUS),
    "fat": (Tissue.SUBCUT_FAT, Tissue.VISCERAL_FAT, Tissue.PERIRENAL_FAT),
    "tumor": (Tissue.TUMOR,),
    "cyst": (Tissue.CYST,),
}


def find_shared(explicit: Path | None) -> Path | None:
    """The shared data folder (holding totalsegmentator/), like tests/conftest.py looks for it."""
    candidates = [explicit] if explicit else []
    if os.environ.get("ANNOTATE_SHARED_DIR"):
        candidates.append(Path(os.environ["ANNOTATE_SHARED_DIR"]))
    candidates += [parent / "shared" for parent in Path(__file__).resolve().parents]
    for candidate in candidates:
        if candidate is None:
            continue
        data = candidate / "data" if (candidate / "data").is_dir() else candidate
        if (data / "totalsegmentator").is_dir():
            return data
    return None


def canonical(image: np.ndarray, label: np.ndarray, affine: np.ndarray, extra: list[np.ndarray] | None = None):
    """Arrays in RAS order (for display and statistics independent of the stored orientation)."""
    ornt = nib.orientations.io_orientation(affine)
    out = [nib.orientations.apply_orientation(a, ornt) for a in [image, label, *(extra or [])]]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[np.argsort(ornt[:, 0])]
    return out, spacing


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {
        "n": int(values.size),
        "median": round(float(np.median(values)), 1),
        "mean": round(float(values.mean()), 1),
        "std": round(float(values.std()), 1),
        "p5": round(float(np.percentile(values, 5)), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
    }


def _interior(mask: np.ndarray) -> np.ndarray:
    """Eroded mask (avoids partial volume at the borders) unless that leaves too little."""
    eroded = ndimage.binary_erosion(mask)
    return eroded if eroded.sum() >= 20 else mask


def _noise(image: np.ndarray, mask: np.ndarray) -> float:
    """Noise estimate: std of the Laplacian-like residual inside a homogeneous organ."""
    residual = image - ndimage.uniform_filter(image.astype(np.float32), 3)
    core = ndimage.binary_erosion(mask, iterations=2)
    return round(float(residual[core].std() * 3 / np.sqrt(8)), 1) if core.sum() > 50 else float("nan")


def real_stats(shared: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    folder = shared / "totalsegmentator"
    img = nib.load(folder / "example_ct.nii.gz")
    image = np.asarray(img.dataobj).astype(np.float32)
    seg = np.asarray(nib.load(folder / "example_seg_fast_force_split.nii.gz").dataobj)
    stats: dict[str, Any] = {}
    for name, ids in REAL_TISSUES.items():
        stats[name] = _stats(image[_interior(np.isin(seg, ids))])
    body = ndimage.binary_fill_holes(image > -300)
    fat = body & (image > -190) & (image < -30) & (seg == 0)
    stats["fat"] = _stats(image[fat])
    stats["noise_liver"] = _noise(image, seg == 5)
    kidney = np.isin(seg, (2, 3)).astype(np.uint8)
    return stats, {"image": image, "label": kidney, "affine": img.affine}


def phantom_stats(phantom: Phantom) -> dict[str, Any]:
    (image, _, tissue), _ = canonical(phantom.image, phantom.label, phantom.affine, [phantom.tissue])
    image = image.astype(np.float32)
    out: dict[str, Any] = {}
    for name, ids in PHANTOM_TISSUES.items():
        mask = np.isin(tissue, [int(t) for t in ids])
        if mask.any():
            out[name] = _stats(image[_interior(mask)])
    out["noise_liver"] = _noise(image, tissue == int(Tissue.LIVER))
    return out


def _views(image: np.ndarray, label: np.ndarray, spacing: np.ndarray) -> tuple:
    """Axial slice through the kidney hila and a coronal slice through both kidneys."""
    kidney = label > 0
    if kidney.any():
        _, cj, ck = (round(v) for v in ndimage.center_of_mass(kidney))
    else:
        _, cj, ck = (s // 2 for s in image.shape)
    axial = (image[:, :, ck].T, label[:, :, ck].T, spacing[1] / spacing[0])
    coronal = (image[:, cj, :].T, label[:, cj, :].T, spacing[2] / spacing[0])
    return axial, coronal


def _show(ax: Any, view: tuple, title: str) -> None:
    image, label, aspect = view
    ax.imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], origin="lower", aspect=aspect)
    for value, color in ((1, "red"), (2, "yellow"), (3, "cyan")):
        if (label == value).any():
            ax.contour(label == value, levels=[0.5], colors=color, linewidths=0.7)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=None, help="shared data dir (default: ../shared near the repo)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "phantom_preview.png")
    parser.add_argument("--seeds", type=int, default=5, help="phantoms per contrast phase for the HU statistics")
    parser.add_argument("--preset-seeds", type=int, default=2, help="phantoms per preset for the timings")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {}
    panels: list[tuple[str, tuple, tuple]] = []
    shared = find_shared(args.shared)
    if shared is not None:
        stats, real = real_stats(shared)
        report["real_ct_noncontrast"] = stats
        spacing = np.linalg.norm(real["affine"][:3, :3], axis=0)
        axial, coronal = _views(real["image"], real["label"], spacing)
        panels.append(("REAL example_ct (non-contrast)", axial, coronal))
    else:
        print("shared data not found: showing phantoms only", file=sys.stderr)

    timings: dict[str, list[float]] = {}
    phase_stats: dict[str, list[dict[str, Any]]] = {}
    base = PhantomConfig.default().with_(orientations=("RAS", "LPS", "LAS"))
    jobs: list[tuple[str, PhantomConfig]] = [
        (f"phase={phase.value}", base.with_(phase_weights={phase: 1.0})) for phase in Phase
    ]
    jobs += [("easy", PhantomConfig.easy()), ("default", PhantomConfig.default()), ("hard", PhantomConfig.hard())]
    jobs += [(f"site_variant({k})", PhantomConfig.site_variant(k)) for k in range(4)]
    for name, config in jobs:
        for seed in range(args.seeds if name.startswith("phase=") else args.preset_seeds):
            start = time.perf_counter()
            phantom = generate_phantom(seed, config)
            timings.setdefault(name, []).append(time.perf_counter() - start)
            if name.startswith("phase="):
                phase_stats.setdefault(phantom.meta["phase"], []).append(phantom_stats(phantom))
            if seed == 0:
                (image, label), spacing = canonical(phantom.image, phantom.label, phantom.affine)
                axial, coronal = _views(image, label, spacing)
                m = phantom.meta
                title = (
                    f"{name} seed0 {m['phase']} {m['orientation']} {'x'.join(f'{v:.1f}' for v in m['spacing'])}mm "
                    f"noise{m['noise_std_hu']:.0f} T{m['tumor_count']} C{m['cyst_count']}"
                    + (f" OOD:{m['ood'][0]['kind']}" if m["ood"] else "")
                )
                panels.append((title, axial, coronal))

    rows = len(panels)
    cols = 4
    fig, axes = plt.subplots((rows + 1) // 2, cols, figsize=(cols * 4.2, ((rows + 1) // 2) * 3.9))
    axes = np.atleast_2d(axes)
    for ax in axes.flat:
        ax.axis("off")
    for n, (title, axial, coronal) in enumerate(panels):
        r, c = divmod(n, 2)
        _show(axes[r, 2 * c], axial, title + " | axial")
        _show(axes[r, 2 * c + 1], coronal, "coronal")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    plt.close(fig)

    report["phantoms_by_phase"] = {
        phase: {
            tissue: {
                key: round(float(np.mean([s[tissue][key] for s in items if tissue in s and key in s[tissue]])), 1)
                for key in ("median", "std", "p5", "p95")
            }
            for tissue in sorted({t for s in items for t in s if t != "noise_liver"})
        }
        | {"noise_liver": round(float(np.nanmean([s["noise_liver"] for s in items])), 1)}
        for phase, items in phase_stats.items()
    }
    report["generation_s"] = {
        name: {"mean": round(float(np.mean(v)), 3), "max": round(float(np.max(v)), 3)} for name, v in timings.items()
    }
    report["montage"] = str(args.out)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
