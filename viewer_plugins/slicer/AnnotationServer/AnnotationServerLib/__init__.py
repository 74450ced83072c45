"""What the AnnotationServer Slicer module needs that does not need Qt or MRML.

Standard library, numpy and requests only (what 3D Slicer bundles), so it runs and is tested outside Slicer.
"""

from AnnotationServerLib.client import AnnotationServerClient, ServerError
from AnnotationServerLib.delta import Delta, apply_delta, decode_delta
from AnnotationServerLib.prompts import box_prompt, lasso_prompt, point_prompt, ras_to_ijk, scribble_prompt
from AnnotationServerLib.session import EffortClock, SessionBook

__all__ = [
    "AnnotationServerClient",
    "Delta",
    "EffortClock",
    "ServerError",
    "SessionBook",
    "apply_delta",
    "box_prompt",
    "decode_delta",
    "lasso_prompt",
    "point_prompt",
    "ras_to_ijk",
    "scribble_prompt",
]
