"""The /projects/ family: multi-reader projects, a reader's queue and reads, agreement reports, consensus and
adjudication. Thin: the rules live in `projects.service` (docs/projects.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, File, Form, Query, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from annotation_server.api.deps import get_services
from annotation_server.api.routing import CompatRouter
from annotation_server.api.schemas import LabelSaved
from annotation_server.api.uploads import parse_json_object, save_upload, upload_name
from annotation_server.audit.context import Audit, request_audit
from annotation_server.auth.dependencies import current_principal
from annotation_server.auth.roles import Principal
from annotation_server.errors import NotFoundError
from annotation_server.projects.agreement import CaseAgreement
from annotation_server.projects.consensus import ConsensusMethod
from annotation_server.projects.models import Project, ProjectCreate, ProjectStatus
from annotation_server.projects.report import report_csv, report_png
from annotation_server.projects.service import ProjectService
from annotation_server.services import Services

router = CompatRouter(tags=["projects"])


def _projects(services: Services = Depends(get_services)) -> ProjectService:
    if services.projects is None:
        raise NotFoundError("multi-reader projects need a folder datastore (not a PACS)")
    return services.projects


def _saved(label: Any) -> LabelSaved:
    return LabelSaved(image=label.image_id, label=label.image_id, tag=label.tag, version=label.version)


@router.post("/projects", response_model=Project, summary="Create a project and its balanced, seeded assignments")
def create_project(
    body: ProjectCreate,
    projects: ProjectService = Depends(_projects),
    principal: Principal = Depends(current_principal),
    audit: Audit = Depends(request_audit),
) -> Project:
    project = projects.create(body, principal.username)
    audit.record("project.create", str(project.id), name=project.name, readers=project.readers)
    return project


@router.get("/projects", response_model=list[Project], summary="Every project")
def list_projects(projects: ProjectService = Depends(_projects)) -> list[Project]:
    return projects.store.list()


@router.get("/projects/mine", summary="The caller's assignments in every project (their queue)")
def my_queue(
    projects: ProjectService = Depends(_projects), principal: Principal = Depends(current_principal)
) -> list[dict[str, Any]]:
    return projects.my_queue(principal.username)


@router.get("/projects/{project_id}", response_model=ProjectStatus, summary="A project and its progress")
def project_status(project_id: int, projects: ProjectService = Depends(_projects)) -> ProjectStatus:
    return projects.status(project_id)


@router.post("/projects/{project_id}/next", summary="The caller's next assigned, unfinished case ({} when done)")
def next_case(
    project_id: int,
    projects: ProjectService = Depends(_projects),
    principal: Principal = Depends(current_principal),
    audit: Audit = Depends(request_audit),
) -> dict[str, Any]:
    picked = projects.next_case(project_id, principal.username)
    if picked:
        audit.record("project.next", picked["id"], project=project_id)
    return picked


async def _save_uploaded_label(
    services: Services,
    label: UploadFile,
    params: str | None,
    save: Callable[..., Any],
    project_id: int,
    image_id: str,
    principal: Principal,
) -> Any:
    """Stage an uploaded label (size-capped), hand it to `save` (a read or the adjudication), remove the copy."""
    info = parse_json_object(params)
    name = upload_name(label)
    target = services.datastore.new_upload_path(name)
    await save_upload(label, target, services.settings.max_upload_mb << 20)
    try:
        return await run_in_threadpool(save, project_id, image_id, principal.username, target, name, info)
    finally:
        target.unlink(missing_ok=True)


@router.put("/projects/{project_id}/cases/{image_id}/label", response_model=LabelSaved, summary="Save your read")
async def save_read(
    project_id: int,
    image_id: str,
    params: str | None = Form("{}"),
    label: UploadFile = File(...),
    services: Services = Depends(get_services),
    projects: ProjectService = Depends(_projects),
    principal: Principal = Depends(current_principal),
    audit: Audit = Depends(request_audit),
) -> LabelSaved:
    saved = await _save_uploaded_label(services, label, params, projects.save_read, project_id, image_id, principal)
    await audit.arecord("project.read", image_id, project=project_id, tag=saved.tag, version=saved.version)
    return _saved(saved)


@router.get("/projects/{project_id}/cases/{image_id}/agreement", response_model=CaseAgreement)
def case_agreement(
    project_id: int,
    image_id: str,
    projects: ProjectService = Depends(_projects),
    principal: Principal = Depends(current_principal),
) -> CaseAgreement:
    """Agreement between the case's readers (adjudicators and leads: it reveals the reads)."""
    projects.check_read(image_id, None, principal)
    return projects.agreement(project_id, image_id)


@router.get("/projects/{project_id}/cases/{image_id}/reads", summary="The reads of a case (tag and version per reader)")
def case_reads(
    project_id: int,
    image_id: str,
    projects: ProjectService = Depends(_projects),
    principal: Principal = Depends(current_principal),
) -> dict[str, Any]:
    projects.check_read(image_id, None, principal)
    case = projects.store.case(project_id, image_id)
    reads = {r: {"tag": v.tag, "version": v.version} for r, v in projects.reads(project_id, image_id).items()}
    return {"case": case.model_dump(), "reads": reads, "consensus_tag": f"consensus-p{project_id}"}


@router.post("/projects/{project_id}/cases/{image_id}/consensus", response_model=LabelSaved)
def build_consensus(
    project_id: int,
    image_id: str,
    method: ConsensusMethod = Query(ConsensusMethod.staple),
    projects: ProjectService = Depends(_projects),
    principal: Principal = Depends(current_principal),
    audit: Audit = Depends(request_audit),
) -> LabelSaved:
    """The readers' consensus (STAPLE or majority vote) saved as a version of `consensus-p<project>`."""
    saved = projects.build_consensus(project_id, image_id, method, principal.username)
    audit.record("project.consensus", image_id, project=project_id, method=method.value, version=saved.version)
    return _saved(saved)


@router.post("/projects/{project_id}/cases/{image_id}/adjudicate", response_model=LabelSaved)
async def adjudicate(
    project_id: int,
    image_id: str,
    params: str | None = Form("{}"),
    label: UploadFile = File(...),
    services: Services = Depends(get_services),
    projects: ProjectService = Depends(_projects),
    principal: Principal = Depends(current_principal),
    audit: Audit = Depends(request_audit),
) -> LabelSaved:
    """The adjudicated label becomes the image's `final` and closes the case."""
    saved = await _save_uploaded_label(services, label, params, projects.adjudicate, project_id, image_id, principal)
    await audit.arecord("project.adjudicate", image_id, project=project_id, version=saved.version)
    return _saved(saved)


@router.post("/projects/{project_id}/cases/{image_id}/accept-consensus", response_model=LabelSaved)
def accept_consensus(
    project_id: int,
    image_id: str,
    projects: ProjectService = Depends(_projects),
    principal: Principal = Depends(current_principal),
    audit: Audit = Depends(request_audit),
) -> LabelSaved:
    """The consensus becomes `final` unedited, when the readers agreed above the project's threshold."""
    saved = projects.accept_consensus(project_id, image_id, principal.username)
    audit.record("project.accept_consensus", image_id, project=project_id, version=saved.version)
    return _saved(saved)


@router.get("/projects/{project_id}/report", summary="Agreement report (JSON)")
def report(project_id: int, projects: ProjectService = Depends(_projects)) -> dict[str, Any]:
    return projects.report(project_id)


@router.get("/projects/{project_id}/report.csv", summary="Agreement report: one row per reader pair and label")
def report_as_csv(project_id: int, projects: ProjectService = Depends(_projects)) -> Response:
    return Response(report_csv(projects.report(project_id)), media_type="text/csv")


@router.get("/projects/{project_id}/report.png", summary="Agreement report: Dice distributions per label")
def report_as_png(project_id: int, projects: ProjectService = Depends(_projects)) -> Response:
    return Response(report_png(projects.report(project_id)), media_type="image/png")
