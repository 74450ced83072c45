"""A site-side record of every update that leaves the site, taken after all other output filters.

Added to the job as the last client output filter, it sees exactly what NVFlare is about to send: it
writes a summary (parameter names, shapes and dtypes; meta values that are numbers) to
`<site workspace>/<job id>/outgoing_updates.jsonl` and blocks a result carrying anything but numeric arrays
and numeric meta, so a bug in a site script cannot leak strings (paths, ids, names) to the server.
Imported only inside an NVFlare client process.
"""

from __future__ import annotations

import json
import os
import re
import time
from numbers import Real
from typing import Any

import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import ContentBlockedException, Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from annotation_server.federated.site_training import ALLOWED_METRICS

AUDIT_LOG = "outgoing_updates.jsonl"
# NVFlare's own bookkeeping: the DXO filters a result went through, by class name (e.g. "ExcludeVars").
FILTER_HISTORY = "filter_history"
_CLASS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _numeric_array(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return False
    try:
        return np.dtype(str(dtype).replace("torch.", "")).kind in "fiub"
    except TypeError:
        return False


def summarize(data_kind: str, data: dict[str, Any], meta: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(what is recorded, what is wrong with it). Meta strings are recorded only by type, never by value."""
    problems = [f"'{name}' is not a numeric array" for name, value in data.items() if not _numeric_array(value)]
    shown_meta: dict[str, Any] = {}
    for key, value in meta.items():
        if _number(value):
            shown_meta[key] = value
        elif isinstance(value, dict) and set(value) <= ALLOWED_METRICS and all(_number(v) for v in value.values()):
            shown_meta[key] = value  # e.g. the metrics: {"dice": 0.9}; other keys could be ids or names
        elif key == FILTER_HISTORY and isinstance(value, list) and all(_CLASS_NAME.match(str(v)) for v in value):
            shown_meta[key] = [str(v) for v in value]
        elif value is not None:
            shown_meta[key] = f"<{type(value).__name__}>"  # recorded by type only: its value must not be shown
            problems.append(f"meta '{key}' is a {type(value).__name__}, not a number")
    summary = {
        "data_kind": data_kind,
        "params": {name: [list(getattr(v, "shape", ())), str(getattr(v, "dtype", ""))] for name, v in data.items()},
        "meta": shown_meta,
    }
    return summary, problems


class OutgoingUpdateAudit(Filter):
    """Records and checks each outgoing task result (see module doc)."""

    def __init__(self, enforce: bool = True) -> None:
        super().__init__()
        self.enforce = enforce

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return shareable  # an error reply carries no data
        kind = str(getattr(dxo.data_kind, "value", dxo.data_kind))
        summary, problems = summarize(kind, dict(dxo.data or {}), dict(dxo.meta or {}))
        record = {
            "ts": time.time(),
            "site": fl_ctx.get_identity_name(),
            "round": shareable.get_header(AppConstants.CURRENT_ROUND),
            **summary,
            "problems": problems,
        }
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        with open(os.path.join(run_dir, AUDIT_LOG), "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if problems and self.enforce:
            raise ContentBlockedException(f"outgoing update blocked: {'; '.join(problems)}")
        return shareable
