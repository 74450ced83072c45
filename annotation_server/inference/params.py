"""The `params` JSON of an infer request, as MONAI Label clients send it.

Known keys are typed and validated (a bad click is a 422 with the key named, not a crash deep in a
model); unknown keys, such as per-label DeepEdit click lists or a client's `client_id`, are kept.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from annotation_server.errors import InvalidRequestError

Point = tuple[int, int, int]


def _as_points(value: Any, key: str) -> list[Point]:
    """Accept [[i,j,k], ...] with ints or whole floats (Slicer rounds, MITK truncates, some send floats)."""
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ValueError(f"'{key}' must be a list of [i, j, k] voxel indices")
    points: list[Point] = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise ValueError(f"each point in '{key}' must be [i, j, k] (3 voxel indices), got {item!r}")
        try:
            coords = tuple(round(float(c)) for c in item)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"point {item!r} in '{key}' has a non-numeric coordinate") from exc
        points.append(coords)  # type: ignore[arg-type]
    return points


class InferParams(BaseModel):
    """Validated infer params; extra keys pass through to the model."""

    model_config = ConfigDict(extra="allow")

    foreground: list[Point] = Field(default_factory=list)
    background: list[Point] = Field(default_factory=list)
    label: str | None = None
    result_extension: str | None = None
    result_dtype: str | None = None
    result_compress: bool = False
    restore_label_idx: bool = False
    save_label: bool = False
    label_tag: str = "original"
    client_id: str | None = None
    click_scope: Literal["local", "object"] = Field(
        "local",
        description="click models: 'local' makes the newest click change only what it asks for (the answer to the "
        "same clicks minus that one, remembered per image, model, label and user, keeps the rest), as interactive "
        "sessions do; 'object' returns the model's whole new answer",
    )

    @field_validator("foreground", "background", mode="before")
    @classmethod
    def _points(cls, value: Any, info: Any) -> list[Point]:
        return _as_points(value, info.field_name)

    @field_validator("result_extension")
    @classmethod
    def _extension(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        return value if value.startswith(".") else f".{value}"

    @field_validator("result_dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        allowed = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}
        if value not in allowed:
            raise ValueError(f"result_dtype must be one of {sorted(allowed)}")
        return value

    def extra_points(self, key: str) -> list[Point]:
        """Click list stored under an arbitrary key (DeepEdit sends one list per label name)."""
        return _as_points((self.model_extra or {}).get(key), key)


def check_points(points: list[Point], shape: tuple[int, ...], key: str) -> None:
    """Refuse clicks outside the volume with the volume's size in the message (clients mix up axes)."""
    for point in points:
        if any(c < 0 or c >= n for c, n in zip(point, shape, strict=True)):
            raise InvalidRequestError(
                f"{key} click {list(point)} lies outside the image (size {list(shape)}); clicks are voxel indices "
                "[i, j, k] into the image as stored"
            )
