"""A real Orthanc PACS with DICOMweb for tests, on 127.0.0.1 only, stopped by its PID.

Orthanc 1.10 (Debian bookworm) has no bind-address option and listens on 0.0.0.0, so it is started
with a tiny LD_PRELOAD shim, compiled here with gcc, that turns wildcard binds into loopback binds.
Tests skip with a reason when Orthanc, its DICOMweb plugin or gcc is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

LOOPBACK_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* Rewrites bind() to a wildcard address into a bind to loopback, so a test server is never exposed. */
typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn real_bind;
    if (!real_bind) real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in v4;
        memcpy(&v4, addr, sizeof v4);
        if (v4.sin_addr.s_addr == htonl(INADDR_ANY)) {
            v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            return real_bind(fd, (const struct sockaddr *)&v4, sizeof v4);
        }
    } else if (addr && addr->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 v6;
        memcpy(&v6, addr, sizeof v6);
        if (IN6_IS_ADDR_UNSPECIFIED(&v6.sin6_addr)) {
            v6.sin6_addr = in6addr_loopback;
            return real_bind(fd, (const struct sockaddr *)&v6, sizeof v6);
        }
    }
    return real_bind(fd, addr, len);
}
"""


def missing_requirement() -> str | None:
    """Why an Orthanc test PACS cannot run here, or None."""
    if not ORTHANC.is_file():
        return f"Orthanc is not installed ({ORTHANC}; apt-get install orthanc orthanc-dicomweb)"
    if not DICOMWEB_PLUGIN.exists():
        return f"the Orthanc DICOMweb plugin is not installed ({DICOMWEB_PLUGIN}; apt-get install orthanc-dicomweb)"
    if shutil.which("gcc") is None:
        return "gcc is needed to build the loopback bind shim for Orthanc"
    return None


def build_shim(folder: Path) -> Path:
    source = folder / "loopback_bind.c"
    source.write_text(LOOPBACK_SHIM)
    library = folder / "libloopback_bind.so"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"],
        check=True,
        capture_output=True,
    )
    return library


class Orthanc:
    """One Orthanc process over a throw-away storage folder; `stop()` and `start()` keep port and data."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.shim = build_shim(folder)
        self.config = folder / "orthanc.json"
        config = {
            "Name": "annotation-server-tests",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "RegisteredUsers": {},
            "DicomServerEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "SaveJobs": False,
            "HttpThreadsCount": 10,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado"},
        }
        self.config.write_text(json.dumps(config, indent=2))
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, timeout_s: float = 20.0) -> None:
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen(
            [str(ORTHANC), str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LD_PRELOAD": str(self.shim)},
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.folder / 'orthanc.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200:
                    return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"Orthanc did not answer within {timeout_s} s")

    def stop(self) -> None:
        """SIGKILL by PID: the storage folder survives (a restart finds every instance), and it takes ms."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    # --------------------------------------------------------------------------------- REST helpers
    def upload(self, datasets: list[pydicom.Dataset]) -> int:
        """Store datasets via Orthanc's REST API (it reports a bad file, unlike STOW); returns how many."""
        stored = 0
        for ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            response = httpx.post(f"{self.url}/instances", content=buffer.getvalue(), timeout=30)
            response.raise_for_status()
            stored += 1
        return stored

    def delete_modality(self, modality: str) -> int:
        """Remove every series of a modality (e.g. the SEGs earlier tests wrote)."""
        found = httpx.post(
            f"{self.url}/tools/find", json={"Level": "Series", "Query": {"Modality": modality}}, timeout=10
        ).json()
        for orthanc_id in found:
            httpx.delete(f"{self.url}/series/{orthanc_id}", timeout=10).raise_for_status()
        return len(found)


def repair_blank_uids(datasets: list[pydicom.Dataset], namespace: str = "annotation-server-tests") -> None:
    """Give an anonymised export (blank UIDs, as in the TotalSegmentator sample) deterministic UIDs."""
    originals = sorted(str(ds.file_meta.get("MediaStorageSOPInstanceUID", "")) for ds in datasets)
    seed = hashlib.sha256("|".join(originals).encode()).hexdigest()
    for ds in datasets:
        meta = ds.file_meta
        if not ds.get("SOPClassUID"):
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
        if not ds.get("SOPInstanceUID"):
            candidate = str(meta.get("MediaStorageSOPInstanceUID", ""))
            ds.SOPInstanceUID = candidate if pydicom.uid.UID(candidate).is_valid else generate_uid()
        group = str(ds.get("FrameOfReferenceUID", ""))
        if not ds.get("StudyInstanceUID"):
            ds.StudyInstanceUID = generate_uid(entropy_srcs=[namespace, seed, "study", group])
        if not ds.get("SeriesInstanceUID"):
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[namespace, seed, "series", group])
        if not ds.get("SeriesNumber"):
            ds.SeriesNumber = 1
        if not ds.get("PatientID"):
            ds.PatientID = f"ANON-{seed[:12]}"
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.MediaStorageSOPClassUID = ds.SOPClassUID


def load_samples(data: Path) -> dict[str, list[pydicom.Dataset]]:
    """The real DICOM samples: the dcmqi 3-slice CT (plus its liver SEG) and the 20-slice JPEG 2000 CT."""
    dcmqi = data / "dcmqi_ct-3slice"
    ct3 = [pydicom.dcmread(dcmqi / f"0{i}.dcm") for i in (1, 2, 3)]
    j2k = [pydicom.dcmread(p) for p in sorted((data / "totalsegmentator" / "example_ct_dicom").iterdir())]
    repair_blank_uids(j2k)
    return {"ct3": ct3, "j2k": j2k, "liver_seg": [pydicom.dcmread(dcmqi / "liver.dcm")]}


def require_orthanc() -> None:
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
