"""Kidney app: kidney, tumor and cyst in abdominal CT (the KiTS classes).

Models:
- `region_growing` (deepgrow): a classic click tool that needs no weights; clicks on a kidney grow a
  mask, background clicks cut leaks into neighbouring organs.
- `kidney_seg` (segmentation): automatic kidney / tumor / cyst segmentation, bundle `models/kidney_seg`.
- `kidney_click` (deepgrow): foreground/background clicks -> the clicked kidney or lesion, bundle
  `models/kidney_click`.
"""

from annotation_models import bundle_path
from annotation_server.app_spec import AppSpec
from annotation_server.inference.model_sources import BundleModel
from annotation_server.inference.region_growing_task import RegionGrowingTask
from annotation_server.preannotation import PreannotationRules
from annotation_server.tools.region_growing import RegionGrowingConfig

from .fine_tune import KidneyClickFineTune, KidneySegFineTune
from .recipes import LABELS

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
        BundleModel(
            path=bundle_path("kidney_seg"),
            name="kidney_seg",
            kind="segmentation",
            labels=LABELS,
            description="Automatic kidney, tumor and cyst segmentation (3D UNet)",
        ),
        BundleModel(
            path=bundle_path("kidney_click"),
            name="kidney_click",
            kind="click",
            labels=LABELS,
            description="Clicks on a kidney, tumor or cyst segment that object (3D UNet with click guidance)",
        ),
    ],
    trainers={"kidney_seg": KidneySegFineTune(), "kidney_click": KidneyClickFineTune()},
    # new CT series in the PACS get kidney_seg's result as a SEG (ANNOTATE_WATCH_PACS=true)
    preannotation=PreannotationRules(model="kidney_seg", modalities=("CT",)),
    # KiTS hierarchy: tumors and cysts lie inside the kidney region; refining a kidney never paints over them
    label_parts={"kidney": ("tumor", "cyst")},
)
