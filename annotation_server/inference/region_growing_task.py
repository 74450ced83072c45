"""The classic click tool as a MONAI Label `deepgrow` model: clicks in, binary mask (value 1) out."""

from __future__ import annotations

from typing import Any

from annotation_server.errors import InvalidRequestError
from annotation_server.imaging import Volume
from annotation_server.inference.params import InferParams, check_points
from annotation_server.inference.task import InferResult, InferTask
from annotation_server.tools.region_growing import RegionGrowingConfig, grow_region


class RegionGrowingTask(InferTask):
    """Seeded region growing (SimpleITK) limited by background clicks. Needs no weights and no GPU."""

    def __init__(
        self,
        name: str,
        labels: dict[str, int],
        config: RegionGrowingConfig | None = None,
        description: str = "Region growing from foreground clicks, limited by background clicks",
    ) -> None:
        super().__init__(name=name, type="deepgrow", labels=labels, description=description, version="1")
        self.tool_config = config or RegionGrowingConfig()

    def config(self) -> dict[str, Any]:
        return {"device": ["cpu"]}

    def infer(self, volume: Volume, params: InferParams) -> InferResult:
        if not params.foreground:
            raise InvalidRequestError(
                f"model '{self.name}' needs at least one foreground click: params {{\"foreground\": [[i, j, k]]}}"
            )
        shape = volume.array.shape
        check_points(params.foreground, shape, "foreground")
        check_points(params.background, shape, "background")
        mask = grow_region(
            volume.array, volume.geometry.spacing, params.foreground, params.background, self.tool_config
        )
        segment = params.label or next(iter(self.labels), "object")
        return InferResult(mask=mask, label_names={segment: 1})
