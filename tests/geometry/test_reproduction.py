"""Issue 11's reproduction: kidney_seg on the real full-body CT stored LPS / RPI landed mirrored (Dice 0.009).

The prediction was inverted to the stored grid only when its shape differed from the input's; a flip keeps
the shape, so the model-space (RAS) answer was returned on the LPS grid as is. Compared in world space.
"""

from __future__ import annotations

import pytest

from annotation_server.inference.params import InferParams
from geometry.geometry_cases import dice, reorient, to_grid


@pytest.mark.slow
@pytest.mark.parametrize("axcodes", ["LPS", "RPI"])
def test_kidney_seg_full_ct_lands_on_the_kidneys_in_world_space(full_case, kidney_seg, axcodes: str) -> None:
    reference = kidney_seg.infer(full_case.volume, InferParams()).mask > 0
    assert dice(reference, full_case.truth) >= 0.90
    case = reorient(full_case, axcodes)
    mask = kidney_seg.infer(case.volume, InferParams()).mask > 0
    back_in_ras = to_grid(mask, case.geometry, full_case.geometry)
    assert dice(back_in_ras, full_case.truth) >= 0.90, "kidney_seg's kidneys are not on the kidneys"
    assert (back_in_ras == reference).all(), "the answer differs in world space from the RAS image's"
