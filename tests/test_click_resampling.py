"""The click model's answer mapped from its network patch back onto the image grid (`_back_to_input`).

The fast axis-aligned path (three 1-D interpolations over the object's box only) must equal a plain trilinear
sampling of the whole patch for every flip and axis order, and interpolating the probability must put the
boundary closer to the true object than copying the nearest network voxel's label.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from annotation_server.inference.click_task import _back_to_input

PATCH = 32
BOX = (slice(10, 10 + PATCH), slice(5, 5 + PATCH), slice(7, 7 + PATCH))  # the patch inside the network grid


def _reference(probability: np.ndarray, to_network: np.ndarray, input_box: tuple[slice, ...]) -> np.ndarray:
    """Trilinear sampling of the whole patch at every input voxel of the box, 0 beyond half a voxel outside."""
    lo = np.array([s.start for s in input_box])
    shape = tuple(s.stop - s.start for s in input_box)
    grid = np.indices(shape).reshape(3, -1) + lo[:, None]
    coords = to_network[:3, :3] @ grid + to_network[:3, 3:4] - np.array([b.start for b in BOX])[:, None]
    values = ndimage.map_coordinates(probability, coords, order=1, mode="nearest")
    values[np.any((coords < -0.5) | (coords > PATCH - 0.5), axis=0)] = 0.0
    return (values >= 0.5).reshape(shape)


def _axis_aligned(order: tuple[int, ...], flips: tuple[bool, ...], scale: float) -> tuple[np.ndarray, tuple]:
    """Input index -> network index for an input stored in `order` with `flips`, voxels `scale` x the network's."""
    shape = (70, 60, 50)
    to_network = np.zeros((4, 4))
    to_network[3, 3] = 1.0
    for axis, row in enumerate(order):
        sign = -1.0 if flips[axis] else 1.0
        to_network[row, axis] = sign * scale
        to_network[row, 3] = (PATCH + 12.0) if flips[axis] else 3.0  # keeps the patch inside the input
    return to_network, shape


def _smooth_blob(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random((PATCH, PATCH, PATCH)).astype(np.float32), 3)
    centre = np.linalg.norm(np.indices((PATCH,) * 3) - PATCH / 2 + rng.uniform(-3, 3, (3, 1, 1, 1)), axis=0)
    return np.clip(1.5 - centre / 8.0 + (noise - noise.mean()) * 8, 0, 1).astype(np.float32)


@pytest.mark.parametrize("scale", [0.6, 1.0, 1.5])
def test_the_fast_path_equals_trilinear_sampling_for_every_axis_order_and_flip(scale: float) -> None:
    probability = _smooth_blob(1)
    assert 0 < (probability >= 0.5).mean() < 0.5
    for order in itertools.permutations(range(3)):
        for flips in itertools.product([False, True], repeat=3):
            to_network, shape = _axis_aligned(order, flips, scale)
            input_box, mask = _back_to_input(probability, BOX, to_network, shape)
            expected = _reference(probability, to_network, input_box)
            assert expected.sum() > 0, (order, flips)
            assert np.array_equal(mask.astype(bool), expected), (order, flips, int((mask != expected).sum()))


def test_an_oblique_mapping_samples_trilinearly_too() -> None:
    probability = _smooth_blob(2)
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    to_network = np.eye(4)
    to_network[:3, :3] = 0.8 * rotation
    to_network[:3, 3] = [25.0, 0.0, 5.0]
    input_box, mask = _back_to_input(probability, BOX, to_network, (90, 90, 60))
    assert np.array_equal(mask.astype(bool), _reference(probability, to_network, input_box))


@pytest.mark.parametrize("input_mm", [3.0, 0.7])
def test_interpolating_the_probability_lands_closer_to_the_object_than_the_nearest_label(input_mm: float) -> None:
    """A 40 mm ball seen by a 2 mm network (its soft answer: the partial volume of each network voxel) and
    mapped onto a 3 mm and a 0.7 mm image grid: trilinear on the probability beats the nearest label's copy,
    measured against the ball on the image grid itself (voxel centres inside it)."""
    network_mm, radius = 2.0, 20.0
    centre_mm = np.array([33.3, 31.7, 32.9])
    fine = 6  # sub-voxel samples per axis for the network's partial volume
    offsets = (np.arange(fine) + 0.5) / fine - 0.5
    sub = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), -1).reshape(-1, 3)

    def partial_volume(shape: tuple[int, ...], spacing: float, origin: float) -> np.ndarray:
        idx = np.indices(shape).reshape(3, -1).T.astype(float)
        inside = np.zeros(len(idx))
        for offset in sub:
            inside += np.linalg.norm((idx + offset) * spacing + origin - centre_mm, axis=1) <= radius
        return (inside / len(sub)).reshape(shape).astype(np.float32)

    probability = partial_volume((PATCH,) * 3, network_mm, 0.0)  # network voxel centres at 0, 2, 4 ... mm
    input_shape = tuple(int(70 / input_mm) for _ in range(3))
    to_network = np.diag([input_mm / network_mm] * 3 + [1.0])  # both grids start at 0 mm
    to_network[:3, 3] = [b.start for b in BOX]  # the patch sits at BOX on the network grid
    truth = np.linalg.norm(np.moveaxis(np.indices(input_shape), 0, -1) * input_mm - centre_mm, axis=-1) <= radius
    input_box, soft = _back_to_input(probability, BOX, to_network, input_shape)
    nearest_index = np.floor(np.indices(input_shape).reshape(3, -1) * input_mm / network_mm + 0.5).astype(int)
    valid = np.all(nearest_index < PATCH, axis=0)
    nearest = np.zeros(nearest_index.shape[1], bool)
    nearest[valid] = probability[tuple(nearest_index[:, valid])] >= 0.5
    nearest = nearest.reshape(input_shape)
    soft_full = np.zeros(input_shape, bool)
    soft_full[input_box] = soft.astype(bool)

    def errors(mask: np.ndarray) -> int:
        return int((mask != truth).sum())

    assert errors(soft_full) < errors(nearest), (errors(soft_full), errors(nearest))
