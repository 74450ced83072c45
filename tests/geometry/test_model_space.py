"""model_space.to_stored_grid on small synthetic grids (no real data, no model): fast, runs in a fresh clone.

The "prediction" is the preprocessed image thresholded in model space, so the right answer on the stored
grid is the stored image thresholded: any flip, permutation or resampling left un-inverted shows.
"""

from __future__ import annotations

import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, Orientationd, Spacingd

from annotation_server.imaging import Geometry, Volume
from annotation_server.inference.model_space import GeometryError, to_model_space, to_stored_grid


def _pipeline(pixdim: tuple[float, float, float]) -> Compose:
    return Compose(
        [
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys="image", pixdim=pixdim, mode="nearest"),
        ]
    )


def _volume(affine: np.ndarray, shape: tuple[int, int, int] = (12, 10, 8)) -> Volume:
    array = np.zeros(shape, dtype=np.float32)
    array[1:5, 2:4, 1:3] = 1  # an asymmetric block: any flip or transposition moves it
    array[7, 6:9, 5] = 1
    return Volume(array=array, geometry=Geometry(shape, affine))


AFFINES = {
    "RAS": np.diag([2.0, 2.0, 2.0, 1.0]),
    "LPS": np.diag([-2.0, -2.0, 2.0, 1.0]),
    "RPI": np.diag([2.0, -2.0, -2.0, 1.0]),
    "permuted PSL": np.array([[0, 0, -2.0, 0], [-2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_prediction_returns_to_the_stored_voxels(name: str) -> None:
    volume = _volume(AFFINES[name])
    pipeline = _pipeline((2.0, 2.0, 2.0))  # same spacing: the shape in model space may equal the stored shape
    data = to_model_space(pipeline, volume, {"image": volume.array})
    pred = (data["image"] > 0.5).float()
    back = to_stored_grid(data, pred, volume.geometry, "image", pipeline)
    assert np.array_equal(back, volume.array.astype(np.int16))


def test_resampled_prediction_returns_to_the_stored_voxels() -> None:
    volume = _volume(AFFINES["LPS"])
    pipeline = _pipeline((1.0, 1.0, 1.0))  # 2x finer in model space, nearest neighbour both ways
    data = to_model_space(pipeline, volume, {"image": volume.array})
    back = to_stored_grid(data, (data["image"] > 0.5).float(), volume.geometry, "image", pipeline)
    assert np.array_equal(back, volume.array.astype(np.int16))


def test_a_result_off_the_stored_grid_is_an_error_not_a_misplaced_label() -> None:
    volume = _volume(AFFINES["LPS"])
    pipeline = _pipeline((2.0, 2.0, 2.0))
    data = to_model_space(pipeline, volume, {"image": volume.array})
    # A bundle that claims to invert itself but returns the model-space (RAS) answer: same shape, flipped.
    with pytest.raises(GeometryError, match="not on the image"):
        to_stored_grid(data, data["image"] > 0.5, volume.geometry, "image", pipeline, already_inverted=True)
