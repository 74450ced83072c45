"""A thin, checked wrapper around `dicomweb-client` for one PACS (QIDO, WADO-RS, STOW-RS).

Why a wrapper: PACS failures must reach the annotator as a message saying what to fix (502/503), never
as a bare 500 with a `requests` traceback; and STOW must be verified, because a PACS such as Orthanc
answers 200 while silently dropping instances it could not store. The wrapper is the only module that
imports `dicomweb_client` or `requests`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from annotation_server.errors import UpstreamError, UpstreamUnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Ask for instances in the transfer syntax they are stored in: a PACS without a JPEG 2000 transcoder
# (Orthanc without its GDCM plugin) answers 500 when asked to decompress, and pydicom decodes them anyway.
AS_STORED = (("application/dicom", "*"),)


@dataclass(frozen=True)
class PacsAuth:
    """Credentials for the PACS: HTTP basic (username + password) or a bearer token, or none."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def apply(self, session: requests.Session) -> None:
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.username:
            session.auth = (self.username, self.password or "")


def _series_uid(item: dict[str, Any]) -> str:
    value = item.get("0020000E", {}).get("Value", [""])
    return str(value[0]) if value else ""


class PacsClient:
    """One DICOMweb endpoint (e.g. `http://pacs:8042/dicom-web`), with errors translated for the API."""

    def __init__(self, url: str, auth: PacsAuth | None = None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        session = requests.Session()
        (auth or PacsAuth()).apply(session)
        self._session = session
        self._timeout_s = timeout_s
        self._client = DICOMwebClient(url=self.url, session=session)
        self._client.set_http_retry_params(retry=False)
        # dicomweb-client has no timeout of its own; a hung PACS must not hang a request thread forever.
        original = session.request

        def request_with_timeout(*args: Any, **kwargs: Any) -> requests.Response:
            kwargs.setdefault("timeout", self._timeout_s)
            return original(*args, **kwargs)

        session.request = request_with_timeout  # type: ignore[method-assign]

    def close(self) -> None:
        self._session.close()

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run one DICOMweb call, turning transport and HTTP failures into messages with a next step."""
        try:
            return action()
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise UpstreamUnavailableError(
                f"the PACS at {self.url} cannot be reached ({what}: {type(exc).__name__}); check that it is running "
                "and that ANNOTATE_DICOMWEB_URL is right, then retry"
            ) from exc
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status in (401, 403):
                hint = "set ANNOTATE_DICOMWEB_USERNAME/PASSWORD or ANNOTATE_DICOMWEB_TOKEN to credentials it accepts"
            elif status == 404:
                hint = "the study or series may have been deleted from the PACS; POST /datastore/rescan"
            else:
                hint = "see the PACS log for the cause"
            raise UpstreamError(f"the PACS at {self.url} answered HTTP {status} to {what}; {hint}") from exc
        except requests.RequestException as exc:
            raise UpstreamError(f"the PACS at {self.url} failed on {what}: {exc}") from exc

    # ------------------------------------------------------------------------------------------ QIDO
    def search_series(self, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every series (DICOM JSON) matching `filters`, following the PACS's paging."""
        fields = [
            "StudyDate",
            "StudyTime",
            "StudyDescription",
            "PatientID",
            "SeriesDescription",
            "SeriesNumber",
            "Modality",
            "BodyPartExamined",
            "NumberOfSeriesRelatedInstances",
        ]
        return self._call(
            "a series search (QIDO-RS)",
            lambda: self._client.search_for_series(search_filters=filters or {}, fields=fields, get_remaining=True),
        )

    def search_instances(self, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
        return self._call(
            "an instance search (QIDO-RS)",
            lambda: self._client.search_for_instances(study_instance_uid=study_uid, series_instance_uid=series_uid),
        )

    # ------------------------------------------------------------------------------------------ WADO
    def iter_series(self, study_uid: str, series_uid: str) -> Iterator[pydicom.Dataset]:
        """The series' instances one at a time, as stored (so a large series never sits whole in memory)."""
        iterator = self._call(
            "a series download (WADO-RS)",
            lambda: self._client.iter_series(study_uid, series_uid, media_types=AS_STORED),
        )
        while True:
            item = self._call("a series download (WADO-RS)", lambda: next(iterator, None))
            if item is None:
                return
            yield item

    # ------------------------------------------------------------------------------------------ STOW
    def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """STOW `datasets` and check that every one was stored (a 200 alone proves nothing)."""
        if not datasets:
            return
        response = self._call("a store (STOW-RS)", lambda: self._client.store_instances(list(datasets)))
        stored = len(response.get("ReferencedSOPSequence", []) or []) if response is not None else 0
        failed = len(response.get("FailedSOPSequence", []) or []) if response is not None else 0
        if stored != len(datasets) or failed:
            raise UpstreamError(
                f"the PACS at {self.url} stored {stored} of {len(datasets)} instances ({failed} reported failed) "
                "while answering success; see the PACS log (often missing or invalid UIDs)"
            )
        logger.debug("stored %d instances in %s", stored, self.url)

    def series_uids(self, filters: dict[str, Any] | None = None) -> list[str]:
        return [uid for uid in (_series_uid(s) for s in self.search_series(filters)) if uid]
