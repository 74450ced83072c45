"""GET /model/{model}: download a model's weights; GET /model/info/{model}: their checksum."""

from __future__ import annotations

from pathlib import Path

from fastapi import Depends
from fastapi.responses import FileResponse

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.api.schemas import ModelChecksum
from annotation_server.checksums import file_sha256
from annotation_server.errors import NotFoundError
from annotation_server.services import Services

router = CompatRouter(tags=["model"])


def _weights(services: Services, model: str) -> Path:
    task = services.inference.task(model)
    path = task.weights_path()
    if path is None or not path.is_file():
        raise NotFoundError(f"Model File NOT Found for {model}: '{model}' has no weights file (a classic tool)")
    return path


@router.get("/model/info/{model}", response_model=ModelChecksum, summary="Checksum and time of the weights file")
def model_info(model: str, services: Services = Depends(get_services)) -> ModelChecksum:
    path = _weights(services, model)
    return ModelChecksum(checksum=f"SHA256:{file_sha256(path)}", modified_time=int(path.stat().st_mtime))


@router.get("/model/{model}", summary="Download the weights the model serves")
def download_model(model: str, services: Services = Depends(get_services)) -> FileResponse:
    path = _weights(services, model)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{model}{''.join(path.suffixes)}")
