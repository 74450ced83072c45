"""Where a site's data is, told to the site's job by the site itself (never by the job).

A federated job is written once by the coordinator and runs unchanged at every hospital, so it must not
carry paths. Each site says where its studies are in its own environment, in this order:

1. `ANNOTATE_FL_SITE_CONFIG=/etc/annotate/fl_site.json`: a JSON file `{"studies": "/data/kidney-ct"}`;
   a file holding several sites (`{"sites": {"hospital-a": {...}, ...}}`, used by the simulator where all
   sites share one machine) is looked up by the NVFlare site name.
2. `ANNOTATE_FL_STUDIES=/data/kidney-ct` (and optionally `ANNOTATE_FL_DEVICE`, `ANNOTATE_FL_THREADS`).

Set them where the site's NVFlare client starts (its environment, or `startup/sub_start.sh`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from annotation_server.errors import InvalidRequestError

SITE_CONFIG_ENV = "ANNOTATE_FL_SITE_CONFIG"
STUDIES_ENV = "ANNOTATE_FL_STUDIES"
DEVICE_ENV = "ANNOTATE_FL_DEVICE"
THREADS_ENV = "ANNOTATE_FL_THREADS"


class SiteSettings(BaseModel):
    """What the site's job needs to know about the site: its studies folder (datastore + queue), its hardware."""

    studies: Path = Field(description="the studies folder the annotation server serves (holds the queue)")
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    threads: int | None = Field(None, ge=1, description="torch CPU threads for local training")


def _missing(site: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"site '{site}' does not say where its studies are: set {STUDIES_ENV}=/path/to/studies (or "
        f'{SITE_CONFIG_ENV}=/path/to/site.json holding {{"studies": ...}}) in the environment of the site\'s '
        "NVFlare client; a job never carries site paths"
    )


def _from_file(path: Path, site: str) -> SiteSettings:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"site config {path} ({SITE_CONFIG_ENV}) cannot be read: {exc}") from exc
    if isinstance(data, Mapping) and "sites" in data:
        sites = data["sites"]
        if site not in sites:
            raise InvalidRequestError(f"site config {path} has no entry for site '{site}' (it has: {sorted(sites)})")
        data = sites[site]
    try:
        return SiteSettings.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequestError(f"site config {path} is invalid for site '{site}': {exc}") from exc


def load_site_settings(site: str, environ: Mapping[str, str] | None = None) -> SiteSettings:
    """The settings of `site` from its environment; a clear error when the site has not configured any."""
    env = os.environ if environ is None else environ
    if env.get(SITE_CONFIG_ENV):
        settings = _from_file(Path(env[SITE_CONFIG_ENV]).expanduser(), site)
    elif env.get(STUDIES_ENV):
        settings = SiteSettings(
            studies=Path(env[STUDIES_ENV]),
            device=env.get(DEVICE_ENV, "cpu"),
            threads=int(env[THREADS_ENV]) if env.get(THREADS_ENV) else None,
        )
    else:
        raise _missing(site)
    studies = settings.studies.expanduser()
    if not studies.is_dir():
        raise InvalidRequestError(f"site '{site}': studies folder {studies} does not exist")
    return settings.model_copy(update={"studies": studies})
