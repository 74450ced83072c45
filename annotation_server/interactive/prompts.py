"""What an annotator can do in a session: point, box, scribble, lasso (pydantic, validated at the edge).

All coordinates are voxel indices [i, j, k] into the image as stored (the MONAI Label convention).
`positive=False` means background: a background point or scribble, or a lasso that erases.
"""

from __future__ import annotations

import base64
import math
import zlib
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from annotation_server.errors import InvalidRequestError

Voxel = tuple[int, int, int]
MAX_SCRIBBLE_VOXELS = 1024**3 // 2  # the default image budget; the image's own shape is checked too
NonNegative = Annotated[int, Field(ge=0, le=2**31)]
Positive = Annotated[int, Field(ge=1, le=2**31)]


class _Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, description="label to annotate (default: the session's current label)")
    model: str | None = Field(None, description="model to run (default: the session's model)")
    positive: bool = Field(True, description="foreground (true) or background (false)")
    locked_labels: list[str] = Field(
        default_factory=list,
        description="labels whose voxels this prompt must leave as they are (segments the annotator accepted)",
    )


class PointPrompt(_Prompt):
    type: Literal["point"] = "point"
    point: Voxel
    scope: Literal["local", "object"] = Field(
        "local",
        description="for a click on an existing object: 'local' keeps only the change connected to the clicked "
        "voxel, so a correction never moves the boundary far away; 'object' takes the model's whole new answer",
    )


class BoxPrompt(_Prompt):
    """A 3-D box (two opposite corners, inclusive); a 2-D box is one whose corners share a slice."""

    type: Literal["box"] = "box"
    corners: tuple[Voxel, Voxel]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        a, b = np.asarray(self.corners[0]), np.asarray(self.corners[1])
        return np.minimum(a, b), np.maximum(a, b)


class ScribblePrompt(_Prompt):
    """Voxels the annotator painted: a sparse mask sent as its bounding box, zlib-compressed uint8, base64."""

    type: Literal["scribble"] = "scribble"
    offset: tuple[NonNegative, NonNegative, NonNegative]
    shape: tuple[Positive, Positive, Positive] = Field(description="size of the painted box; each axis at least 1")
    data: str = Field(description="base64 of zlib-compressed uint8 (C order over i, j, k); non-zero = painted")

    def voxels(self, within: tuple[int, ...] | None = None) -> np.ndarray:
        """The painted voxels. The box is checked against the image (`within`) before anything is inflated,
        and inflation stops one byte past the box's size, so a small bomb never grows past the box."""
        expected = math.prod(self.shape)
        if expected > MAX_SCRIBBLE_VOXELS:
            raise InvalidRequestError(
                f"scribble box of shape {list(self.shape)} is larger than {MAX_SCRIBBLE_VOXELS} voxels; send the "
                "painted voxels' bounding box only"
            )
        if within is not None and any(o + n > w for o, n, w in zip(self.offset, self.shape, within, strict=True)):
            raise InvalidRequestError(
                f"scribble box at {list(self.offset)} of shape {list(self.shape)} reaches outside the image "
                f"{list(within)}"
            )
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(base64.b64decode(self.data, validate=True), expected + 1)
        except (ValueError, zlib.error) as exc:
            raise InvalidRequestError(f"scribble data is not base64 zlib: {exc}") from exc
        if len(raw) > expected or inflater.unconsumed_tail:
            raise InvalidRequestError(f"scribble data holds more than {expected} voxels, shape {list(self.shape)}")
        if not inflater.eof:
            raise InvalidRequestError("scribble data is not base64 zlib: the compressed stream is incomplete")
        if len(raw) != expected:
            raise InvalidRequestError(
                f"scribble data holds {len(raw)} voxels, shape {list(self.shape)} needs {expected}"
            )
        painted = np.argwhere(np.frombuffer(raw, dtype=np.uint8).reshape(self.shape) > 0)
        return painted + np.asarray(self.offset)


class LassoPrompt(_Prompt):
    """A filled polygon on one slice: `axis` is the axis held fixed (2 = an axial slice k), `index` the slice."""

    type: Literal["lasso"] = "lasso"
    axis: int = Field(2, ge=0, le=2)
    index: int = Field(ge=0)
    polygon: list[tuple[float, float]] = Field(min_length=3, description="vertices in the two other axes' order")

    @model_validator(mode="after")
    def _finite(self) -> LassoPrompt:
        if not all(np.isfinite(v).all() for v in self.polygon):
            raise ValueError("lasso polygon has non-finite vertices")
        return self


Prompt = Annotated[PointPrompt | BoxPrompt | ScribblePrompt | LassoPrompt, Field(discriminator="type")]
