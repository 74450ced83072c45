"""Server settings, read once from the command line, `ANNOTATE_*` environment variables or `.env`.

One `Settings` object is built at start and passed down explicitly; nothing reads the environment later,
so tests can run several differently configured servers in one process.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from platformdirs import user_data_path
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def default_data_dir() -> Path:
    """The per-user root (never inside the installed package); each deployment gets its own folder below it."""
    return user_data_path("annotation-server", appauthor=False)


def deployment_data_dir(studies: Path | str | None, dicomweb_url: str | None = None) -> Path:
    """The data folder of one deployment when `--data-dir` is not given: `<root>/deployments/<name>-<hash>`.

    The registry, sessions, logs and users in it belong to the studies they were made for: two servers of
    the same user with different `--studies` must never share a model registry (a model trained and promoted
    for one set would be hot-swapped into the other). The hash is of the resolved folder (or the DICOMweb
    URL), so the same studies reached by another path find the same folder; the name keeps it readable.
    """
    root = default_data_dir() / "deployments"
    if dicomweb_url:
        key = re.sub(r"^(https?):/+", r"\1://", dicomweb_url.strip()).rstrip("/")
        name = urlsplit(key).hostname or "pacs"
    elif studies is not None:
        folder = Path(studies).expanduser().resolve()
        key, name = str(folder), folder.name
    else:
        return root / "sample"  # the embedded sample study set
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:40] or "studies"
    return root / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


class Settings(BaseSettings):
    """Everything a site admin can configure. Field docs double as `--help` text and README material."""

    model_config = SettingsConfigDict(env_prefix="ANNOTATE_", env_file=".env", extra="ignore")

    app: str = Field("kidney", description="App name (from apps/ or an installed entry point) or path to an app folder")
    studies: Path | None = Field(
        None, description="Folder of studies to serve; default: the embedded sample study set in the data dir"
    )
    model_dirs: list[Path] = Field(default_factory=list, description="Extra MONAI bundle folders to serve by path")
    host: str = Field("127.0.0.1", description="Interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="This deployment's data: model registry, users, sessions, logs; default: "
        "<user data dir>/deployments/<studies name>-<hash of the studies folder or DICOMweb URL>",
    )
    log_level: str = Field("info", description="Logging level: debug, info, warning, error")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API from other sites (comma-separated, e.g. "
        "https://ohif.example.org); default none: same-origin only. '*' allows any origin but never with credentials",
    )
    session_expiry_s: int = Field(3600, ge=1, description="Longest a MONAI Label session lives after its last use")
    next_sample_reservation_s: int = Field(
        1800,
        ge=1,
        description="How long an image offered by next sample stays reserved for the annotator it was offered to",
    )
    max_upload_mb: int = Field(2048, ge=1, description="Largest accepted upload (image, label or session), in MB")
    infer_workers: int = Field(1, ge=1, description="Inference threads (one model instance is shared between them)")
    infer_queue_size: int = Field(
        16, ge=1, description="Inference requests allowed to wait; more get 503 + Retry-After"
    )
    cache_mb: int = Field(2048, ge=16, description="Memory for decoded volumes kept between requests")
    session_memory_mb: int = Field(
        2048, ge=1, description="Memory for interactive sessions; least recently used ones beyond it go to disk"
    )
    rescan_interval_s: float = Field(30.0, ge=0, description="Seconds between scans for new studies (0 = off)")
    model_sync_interval_s: float = Field(
        5.0, ge=0, description="Seconds between checks for a new serving model version (promoted by CLI; 0 = off)"
    )
    scoring_model: str | None = Field(
        None, description="Model the epistemic/tta strategies score with (default: the first segmentation bundle)"
    )
    scoring_samples: int = Field(8, ge=1, le=64, description="Monte-Carlo dropout passes per image (epistemic)")
    scoring_threads: int = Field(1, ge=1, description="Torch threads of the background scoring thread")
    ssl_certfile: Path | None = Field(None, description="TLS certificate (MITK only speaks HTTPS)")
    ssl_keyfile: Path | None = Field(None, description="TLS private key")
    dicomweb_url: str | None = Field(
        None,
        description="DICOMweb root of a PACS to serve instead of a folder (e.g. http://pacs:8042/dicom-web); "
        "`--studies http://...` sets it too",
    )
    dicomweb_username: str | None = Field(None, description="PACS user for HTTP basic auth")
    dicomweb_password: SecretStr | None = Field(None, description="PACS password for HTTP basic auth")
    dicomweb_token: SecretStr | None = Field(None, description="PACS bearer token (instead of basic auth)")
    dicomweb_timeout_s: float = Field(30.0, gt=0, description="Seconds to wait for one PACS request")
    dicomweb_cache_dir: Path | None = Field(
        None, description="Local copy of fetched series and the label versions; default: <data dir>/dicomweb/<host>"
    )
    auth_enabled: bool = Field(
        False, description="Require logins (users from `annotate-server users add`); off: every request is admin"
    )
    auth_token_expiry_s: int = Field(
        8 * 3600, ge=60, description="Lifetime of a login token; clients log in again after it (default: a shift)"
    )
    auth_secret: SecretStr | None = Field(
        None,
        min_length=32,
        description="Token signing secret (32+ chars); default: one generated once in <data dir>/auth/token_secret",
    )

    max_image_voxels: int = Field(
        1024**3 // 2,
        ge=1,
        description="Largest volume read (voxels, from the header, before any decompression); bytes are capped "
        "at 4 per voxel of it",
    )

    max_json_kb: int = Field(
        1024, ge=1, description="Largest JSON or url-encoded request body, in KB (bigger: 413 before parsing)"
    )
    body_timeout_s: float = Field(
        300.0, gt=0, description="Seconds a request's whole body may take to arrive (slower: 408)"
    )

    ohif: bool = Field(
        False,
        description="Serve OHIF v3 (from the installed monailabel package) at /ohif/ and proxy its DICOMweb "
        "reads to the PACS at /proxy/dicom/qido and /proxy/dicom/wado",
    )

    watch_pacs: bool = Field(
        False,
        description="Pre-annotate series new in the PACS (DICOMweb datastore) with the app's automatic model, "
        "written back as SEGs; series already there at the first start are left alone",
    )
    watch_interval_s: float = Field(30.0, gt=0, description="Seconds between polls of the PACS for new series")
    watch_concurrency: int = Field(1, ge=1, description="Series pre-annotated at once (fetch, model, SEG)")
    watch_max_attempts: int = Field(5, ge=1, description="Tries per series before it is reported as failed")
    watch_retry_s: float = Field(
        60.0, gt=0, description="Wait before the first retry of a failed series; doubled on each further failure"
    )
    watch_settle_s: float = Field(
        60.0,
        ge=0,
        description="A new series is pre-annotated once its instance count has not changed for this many seconds",
    )
    insecure_no_auth: bool = Field(
        False,
        description="Allow listening on a non-loopback address with auth off (everyone who can reach it is admin)",
    )
    click_wait_s: float = Field(
        2.0, gt=0, le=60, description="Longest a click waits for the inference thread before 503 + Retry-After"
    )
    click_queue_per_user: int = Field(
        2, ge=1, description="Clicks one user may have waiting (users are served round-robin); more get 503"
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated_origins(cls, value: Any) -> Any:
        """`ANNOTATE_CORS_ORIGINS=https://a,https://b` (or a JSON list) becomes a list of origins."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="before")
    @classmethod
    def _studies_url_and_data_dir(cls, data: Any) -> Any:
        """`--studies http(s)://...` (MONAI Label's way to name a PACS) selects the DICOMweb datastore; then,
        with no `data_dir` given (option, environment or .env), the data folder is the deployment's own."""
        if not isinstance(data, dict):
            return data
        if data.get("studies") is not None:
            text = re.sub(r"^(https?):/+", r"\1://", str(data["studies"]))
            if text.startswith(("http://", "https://")):
                data = {**data, "studies": None, "dicomweb_url": data.get("dicomweb_url") or text}
        if data.get("data_dir") in (None, ""):
            data = {**data, "data_dir": deployment_data_dir(data.get("studies"), data.get("dicomweb_url"))}
        return data

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def log_file(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def session_dir(self) -> Path:
        return self.data_dir / "sessions"

    def registry_dir(self, app: str) -> Path:
        """Model versions of one app at this site (see annotation_server.registry)."""
        return self.data_dir / "registry" / app

    @property
    def train_jobs_dir(self) -> Path:
        return self.data_dir / "train_jobs"

    @property
    def sample_studies_dir(self) -> Path:
        return self.data_dir / "studies" / "sample"
