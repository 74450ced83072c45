"""The /datastore/ family: listing, images, labels (versioned), their info, and a dataset export.

Paths, params and answers follow MONAI Label (including the deprecated forms 3D Slicer still uses);
versions, history and rescan are our additions beside them.
"""

from __future__ import annotations

import io
import json
import zipfile
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastapi import Depends, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.api.schemas import ImageAdded, LabelHistory, LabelSaved, ScanResult
from annotation_server.api.strict_json import MAX_INT
from annotation_server.api.uploads import parse_json_object, save_upload, upload_name
from annotation_server.audit.context import Audit, request_audit
from annotation_server.auth.dependencies import acting_user, current_principal
from annotation_server.auth.roles import Principal, Role
from annotation_server.checksums import file_digest
from annotation_server.datastore import FINAL_TAG, LabelSource
from annotation_server.errors import InvalidRequestError, NotFoundError
from annotation_server.services import Services

router = CompatRouter(tags=["datastore"])

OCTET = "application/octet-stream"


class ListingOutput(StrEnum):
    stats = "stats"
    all = "all"
    train = "train"


def _author(params: dict[str, Any], default: str = "user") -> str:
    for key in ("client_id", "user", "author"):
        value = params.get(key)
        if isinstance(value, str) and value:
            return value
    return default


def _source(params: dict[str, Any]) -> LabelSource | None:
    """Which model made the pre-annotation this label was corrected from (Slicer sends `model`)."""
    model = params.get("model") or params.get("source_model")
    version = params.get("model_version")
    if not model:
        return None
    return LabelSource(model=str(model), model_version=str(version) if version is not None else None)


# ------------------------------------------------------------------------------------------- listing
@router.get("/datastore/", summary="Datastore listing: stats (default), all (MONAI Label document) or train pairs")
def datastore_listing(
    output: ListingOutput = Query(ListingOutput.stats),
    services: Services = Depends(get_services),
    principal: Principal = Depends(current_principal),
) -> Any:
    ds = services.datastore
    if output is ListingOutput.all:
        dump = ds.dump()  # without other readers' labels of blinded multi-reader cases
        return services.projects.redact_listing(dump, principal) if services.projects else dump
    if output is ListingOutput.train:
        pairs = ds.train_pairs()
        if principal.has(Role.admin):
            return pairs
        return [{key: Path(value).name for key, value in pair.items()} for pair in pairs]  # no server paths
    return ds.stats()


@router.post("/datastore/rescan", response_model=ScanResult, summary="Pick up studies added or removed on disk")
def rescan(services: Services = Depends(get_services)) -> ScanResult:
    return ScanResult(**services.datastore.rescan().model_dump())


# -------------------------------------------------------------------------------------------- images
async def _add_image(image: str | None, params: str | None, file: UploadFile, services: Services) -> ImageAdded:
    info = parse_json_object(params)
    name = upload_name(file)
    target = services.datastore.new_upload_path(name)
    await save_upload(file, target, services.settings.max_upload_mb << 20)
    try:
        record = await run_in_threadpool(services.datastore.add_image, target, name, image or None, info, _author(info))
    finally:
        target.unlink(missing_ok=True)
    return ImageAdded(image=record.id)


@router.put("/datastore/image", response_model=ImageAdded, summary="Upload an image (id defaults to the file stem)")
async def upload_image(
    image: str | None = Query(None, description="image id; default: uploaded file name without extension"),
    params: str | None = Form("{}"),
    file: UploadFile = File(...),
    services: Services = Depends(get_services),
    audit: Audit = Depends(request_audit),
) -> ImageAdded:
    added = await _add_image(image, params, file, services)
    await audit.arecord("image.add", added.image)
    return added


@router.put("/datastore/", response_model=ImageAdded, include_in_schema=False)
async def upload_image_deprecated(
    image: str | None = Query(None),
    params: str | None = Form("{}"),
    file: UploadFile = File(...),
    services: Services = Depends(get_services),
    audit: Audit = Depends(request_audit),
) -> ImageAdded:
    """MONAI Label's deprecated upload path, still used by 3D Slicer and the Python client."""
    added = await _add_image(image, params, file, services)
    await audit.arecord("image.add", added.image)
    return added


@router.delete("/datastore/image", summary="Remove an image (moved to the store's trash; labels kept)")
def delete_image(
    id: str = Query(...), services: Services = Depends(get_services), audit: Audit = Depends(request_audit)
) -> dict[str, Any]:
    services.datastore.delete_image(id)
    audit.record("image.delete", id)
    return {}


@router.delete("/datastore/", include_in_schema=False)
def delete_image_deprecated(
    id: str = Query(...), services: Services = Depends(get_services), audit: Audit = Depends(request_audit)
) -> dict[str, Any]:
    services.datastore.delete_image(id)
    audit.record("image.delete", id)
    return {}


@router.get("/datastore/image", summary="Download an image (DICOM series as NIfTI on the same grid)")
def download_image(image: str = Query(...), services: Services = Depends(get_services)) -> FileResponse:
    path, filename = services.datastore.image_download(image)
    return FileResponse(path, media_type=OCTET, filename=filename)


def _checksum_matches(path: Path, check_sum: str) -> bool:
    algo, _, expected = check_sum.rpartition(":")
    algo = (algo or "SHA256").lower()
    if algo not in ("sha256", "sha512", "md5"):
        raise InvalidRequestError(f"check_sum algorithm '{algo}' is not supported; use SHA256, SHA512 or MD5")
    return file_digest(path, algo) == expected.lower()


@router.head("/datastore/image", summary="Does the image exist (and match check_sum)?")
def head_image(
    image: str = Query(...), check_sum: str | None = Query(None), services: Services = Depends(get_services)
) -> Response:
    path, _ = services.datastore.image_download(image)
    if check_sum and not _checksum_matches(path, check_sum):
        raise NotFoundError(f"image '{image}' exists but its checksum differs")
    return Response(status_code=200)


@router.get("/datastore/image/info", summary="Image info (plus its server path, for admins)")
def get_image_info(
    image: str = Query(...),
    services: Services = Depends(get_services),
    principal: Principal = Depends(current_principal),
) -> dict[str, Any]:
    info = services.datastore.image_info(image)
    if not principal.has(Role.admin):
        info.pop("path", None)  # where the data lives on the server is an admin's business
    return info


@router.put("/datastore/image/info", summary="Merge keys into the image info")
def put_image_info(
    image: str = Query(...), info: str = Form("{}"), services: Services = Depends(get_services)
) -> JSONResponse:
    services.datastore.update_image_info(image, parse_json_object(info, "info"))
    return JSONResponse(None)


# -------------------------------------------------------------------------------------------- labels
@router.put(
    "/datastore/label",
    response_model=LabelSaved,
    response_model_exclude_none=True,
    summary="Save a label as a new version (tag: final)",
)
async def save_label(
    image: str = Query(..., description="image id the label belongs to"),
    tag: str = Query(FINAL_TAG, description="final (default), original, or any tag"),
    params: str | None = Form("{}"),
    label: UploadFile = File(..., description="labelmap on the image's grid (.nii.gz, .nrrd, .seg.nrrd, ...)"),
    services: Services = Depends(get_services),
    principal: Principal = Depends(current_principal),
    audit: Audit = Depends(request_audit),
) -> LabelSaved:
    info = parse_json_object(params)
    ds = services.datastore
    await run_in_threadpool(ds.get_image, image)  # unknown image: 404 before storing the upload
    name = upload_name(label)
    target = ds.new_upload_path(name)
    await save_upload(label, target, services.settings.max_upload_mb << 20)
    author = acting_user(principal, _author(info))  # with auth on, the logged-in user
    try:
        saved = await run_in_threadpool(
            ds.save_label, image, target, name, tag or FINAL_TAG, author, info, _source(info)
        )
    finally:
        target.unlink(missing_ok=True)
    await audit.arecord("label.save", saved.image_id, tag=saved.tag, version=saved.version, author=author)
    return LabelSaved(
        image=saved.image_id,
        label=saved.image_id,
        tag=saved.tag,
        version=saved.version,
        dicom_seg=saved.info.get("dicom_seg"),
    )


@router.delete("/datastore/label", summary="Retire a label tag (every version stays in the history)")
def delete_label(
    id: str = Query(...),
    tag: str = Query(...),
    services: Services = Depends(get_services),
    audit: Audit = Depends(request_audit),
) -> dict:
    services.datastore.delete_label(id, tag)
    audit.record("label.retire", id, tag=tag)
    return {}


@router.head("/datastore/label", summary="Does a label with this tag exist?")
def head_label(image: str = Query(...), tag: str = Query(FINAL_TAG), services: Services = Depends(get_services)):
    services.datastore.label_head(image, tag)
    return Response(status_code=200)


@router.get("/datastore/label", summary="Download the latest label of a tag, or a given version")
def download_label(
    label: str = Query(..., description="image id"),
    tag: str = Query(FINAL_TAG),
    version: int | None = Query(None, ge=1, le=MAX_INT, description="a version number from /datastore/label/versions"),
    services: Services = Depends(get_services),
) -> FileResponse:
    ds = services.datastore
    found = ds.label_version(label, tag or FINAL_TAG, version)
    return FileResponse(
        ds.label_file(found),
        media_type=OCTET,
        filename=f"{found.image_id}{found.ext}",
        headers={"X-Label-Version": str(found.version)},
    )


@router.get("/datastore/label/versions", response_model=LabelHistory, summary="Every saved version of a label")
def label_versions(
    image: str = Query(...), tag: str | None = Query(None), services: Services = Depends(get_services)
) -> LabelHistory:
    services.datastore.get_image(image)
    return LabelHistory(image=image, versions=services.datastore.label_versions(image, tag or None))


@router.get("/datastore/label/info", summary="Info of the latest label of a tag")
def get_label_info(
    label: str = Query(...), tag: str = Query(FINAL_TAG), services: Services = Depends(get_services)
) -> dict[str, Any]:
    head = services.datastore.label_head(label, tag or FINAL_TAG)
    return {**head.info, "version": head.version, "author": head.author, "source": head.source.model_dump()}


@router.put("/datastore/label/info", summary="Merge keys into the latest label's info")
def put_label_info(
    label: str = Query(...),
    tag: str = Query(FINAL_TAG),
    info: str = Form("{}"),
    services: Services = Depends(get_services),
) -> JSONResponse:
    services.datastore.update_label_info(label, tag or FINAL_TAG, parse_json_object(info, "info"))
    return JSONResponse(None)


@router.put("/datastore/updatelabelinfo", include_in_schema=False)
def update_label_info_deprecated(
    label: str = Query(...),
    tag: str = Query(FINAL_TAG),
    params: str = Form("{}"),
    services: Services = Depends(get_services),
) -> JSONResponse:
    """The deprecated form of PUT /datastore/label/info (3D Slicer's reviewer sends `params`)."""
    services.datastore.update_label_info(label, tag or FINAL_TAG, parse_json_object(params))
    return JSONResponse(None)


# ------------------------------------------------------------------------------------------- dataset
@router.get("/datastore/dataset", summary="Zip of labeled images with their final labels and metadata.json")
def dataset(
    limit_cases: int | None = Query(None, ge=1, le=MAX_INT),
    services: Services = Depends(get_services),
    audit: Audit = Depends(request_audit),
) -> Response:
    ds = services.datastore
    buffer = io.BytesIO()
    metadata: dict[str, Any] = {}
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        pairs = 0
        for record in ds.list_images():
            try:
                head = ds.label_head(record.id, FINAL_TAG)
            except NotFoundError:
                continue
            image_path, image_name = ds.image_download(record.id)
            archive.write(image_path, f"image/{image_name}")
            archive.write(ds.label_file(head), f"label/{record.id}{head.ext}")
            metadata[record.id] = {"image": record.info, "label": {**head.info, "version": head.version}}
            pairs += 1
            if limit_cases is not None and pairs >= limit_cases:
                break
        archive.writestr("metadata.json", json.dumps(metadata, indent=2))
    audit.record("dataset.export", None, cases=pairs, images=sorted(metadata))
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": 'attachment; filename="dataset.zip"'},
    )
