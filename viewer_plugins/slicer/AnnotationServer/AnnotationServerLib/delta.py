"""The server's delta answers (`annotation_server/interactive/delta.py`) decoded into numpy boxes.

A delta is `{offset, shape, dtype: "uint8", order: "C (i, j, k)", codec: "zlib", data: base64}`: the label
values of the box of voxels an interaction changed, indexed (i, j, k) like the image as stored (which is
Slicer's IJK). Anything else is refused loudly: a silently misread delta would paint the wrong voxels.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np


class DeltaError(ValueError):
    """A delta this client cannot decode (a newer server's codec, a truncated answer)."""


@dataclass(frozen=True)
class Delta:
    offset: tuple[int, int, int]
    values: np.ndarray  # uint8, shape (ni, nj, nk), C order over (i, j, k)

    @property
    def box(self) -> tuple[slice, slice, slice]:
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.values.shape, strict=False))  # type: ignore[return-value]

    @property
    def extent(self) -> tuple[int, int, int, int, int, int]:
        """The box as a VTK extent (inclusive ends, i then j then k)."""
        (i, j, k), (ni, nj, nk) = self.offset, self.values.shape
        return (i, i + ni - 1, j, j + nj - 1, k, k + nk - 1)


def decode_delta(delta: dict[str, Any] | None) -> Delta | None:
    """The delta as a numpy box, or None when the interaction changed nothing."""
    if not delta:
        return None
    if delta.get("codec") != "zlib":
        raise DeltaError(f"delta codec '{delta.get('codec')}' is not supported: update the Slicer extension")
    if delta.get("dtype", "uint8") != "uint8" or not str(delta.get("order", "C")).startswith("C"):
        raise DeltaError(
            f"delta layout {delta.get('dtype')}/{delta.get('order')} is not supported: update the extension"
        )
    shape = tuple(int(n) for n in delta["shape"])
    offset = tuple(int(o) for o in delta["offset"])
    if len(shape) != 3 or len(offset) != 3:
        raise DeltaError(f"delta box must be 3-D, got offset {offset} shape {shape}")
    try:
        raw = zlib.decompress(base64.b64decode(delta["data"]))
    except (ValueError, zlib.error) as exc:
        raise DeltaError(f"delta data is not base64 zlib ({exc}): the answer was cut short; try again") from exc
    if len(raw) != int(np.prod(shape)):
        raise DeltaError(f"delta holds {len(raw)} voxels, shape {list(shape)} needs {int(np.prod(shape))}")
    values = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    return Delta(offset=offset, values=values)  # type: ignore[arg-type]


def apply_delta(mask: np.ndarray, delta: dict[str, Any] | Delta | None) -> np.ndarray:
    """Write a delta into a client-side (i, j, k) label map, in place, inside its box only."""
    decoded = delta if isinstance(delta, Delta) or delta is None else decode_delta(delta)
    if decoded is not None:
        mask[decoded.box] = decoded.values
    return mask
