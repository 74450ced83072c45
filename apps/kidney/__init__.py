"""Kidney app: kidney, tumor and cyst in abdominal CT (the KiTS classes).

Models:
- `region_growing` (type deepgrow): a classic click tool that needs no weights; clicks on a kidney grow
  a mask, background clicks cut leaks into neighbouring organs.
"""

from annotation_server.tools.region_growing import RegionGrowingConfig

from annotation_server.app_spec import AppSpec
from annotation_server.inference.region_growing_task import RegionGrowingTask

LABELS = {"kidney": 1, "tumor": 2, "cyst": 3}

APP = AppSpec(
    name="kidney",
    description="Kidney, tumor and cyst segmentation in CT (KiTS classes)",
    labels=LABELS,
    models=[
        RegionGrowingTask(
            name="region_growing",
            labels=LABELS,
            config=RegionGrowingConfig(),
            description="Click inside a kidney to grow its mask; background clicks stop leaks. No weights needed.",
        ),
    ],
)
