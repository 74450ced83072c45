"""Post-processing that encodes kidney anatomy, as bundle transforms (referenced from inference.json).

`PeelSurfaceFatd`: fat-density voxels on the OUTER surface of the predicted kidney are perirenal fat, not
kidney, whatever the contrast phase (fat is fat: about -100 to -50 HU; the threshold -30 HU keeps partial
volume of parenchyma). Only the surface is peeled, a few voxels deep, so the renal sinus fat enclosed by
the parenchyma stays kidney (the reference convention, see `annotation_server/phantoms/kidney.py`).
Issue 17: once the phantoms labelled the sinus as kidney, the retrained model also took a rim of
perirenal fat; the measured effect of this step is in `docs/kidney_anatomy.md`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

from annotation_server.imaging.boxes import grow_box, mask_box


class PeelSurfaceFatd(MapTransform):
    """Clear labelled voxels on the label's outer surface whose image value is below `threshold`, `iterations`
    times. `threshold` is in the units of `image_key` after preprocessing (the bundle's scaled window)."""

    def __init__(self, keys: Any, image_key: str = "image", threshold: float = 0.0, iterations: int = 3) -> None:
        super().__init__(keys)
        self.image_key = image_key
        self.threshold = threshold
        self.iterations = iterations

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        image = np.asarray(torch.as_tensor(out[self.image_key]).detach().cpu())[0]
        for key in self.key_iterator(out):
            pred = out[key]
            labels = np.asarray(torch.as_tensor(pred).detach().cpu())
            channel = labels[0].copy()
            # Only the label's box plus one voxel: erosion there equals erosion of the whole array (the label
            # touches no new border), and a click patch or a scan is mostly background.
            box = mask_box(channel)
            if box is not None:
                box = grow_box(box, 1, channel.shape)
                fat = image[box] < self.threshold
                mask = channel[box] > 0
                for _ in range(self.iterations):
                    surface = mask & ~ndimage.binary_erosion(mask)
                    peel = surface & fat
                    if not peel.any():
                        break
                    mask &= ~peel
                channel[box][~mask] = 0
            pred[0] = torch.as_tensor(channel, dtype=pred.dtype)  # in place: keeps the MetaTensor's records
            out[key] = pred
        return out


class DropSmallMassesd(MapTransform):
    """Relabel tumor/cyst components smaller than `min_cm3` as kidney (they lie inside the kidney label).

    Radiology calls renal lesions under about 1 cm "too small to characterize" (ACR incidental findings
    white paper, Herts et al., J Am Coll Radiol 2018); a mass prediction of that size is far more often a
    partial-volume or sinus artefact than a lesion. 0.5 cm3 is a sphere of 9.8 mm. The voxel volume comes
    from the prediction's affine (model space), so the rule holds whatever the bundle's spacing."""

    def __init__(self, keys: Any, mass_labels: tuple[int, ...] = (2, 3), kidney_label: int = 1, min_cm3: float = 0.5):
        super().__init__(keys)
        self.mass_labels = tuple(mass_labels)
        self.kidney_label = kidney_label
        self.min_cm3 = min_cm3

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            pred = out[key]
            affine = np.asarray(torch.as_tensor(getattr(pred, "affine", torch.eye(4))).detach().cpu(), dtype=float)
            voxel_cm3 = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
            channel = np.asarray(torch.as_tensor(pred).detach().cpu())[0].copy()
            for code in self.mass_labels:
                parts, count = ndimage.label(channel == code)
                if not count:
                    continue
                sizes = ndimage.sum(np.ones(parts.shape, np.float32), parts, range(1, count + 1)) * voxel_cm3
                small = np.flatnonzero(sizes < self.min_cm3) + 1
                channel[np.isin(parts, small)] = self.kidney_label
            pred[0] = torch.as_tensor(channel, dtype=pred.dtype)
            out[key] = pred
        return out
