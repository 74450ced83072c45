"""create_app(): one FastAPI application with its services, built from Settings and an AppSpec.

Services are built in the lifespan and hung on `app.state`; routers reach them through `api.deps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

from fastapi import Depends, FastAPI, Response

from annotation_server import __version__
from annotation_server.api import (
    activelearning,
    batch,
    datastore,
    federated,
    health,
    infer,
    info,
    interactive,
    logs,
    model,
    preannotation,
    projects,
    scoring,
    session,
    train,
    versions,
)
from annotation_server.api import audit as audit_api
from annotation_server.api.body_limits import BodyLimits
from annotation_server.api.docs import install_offline_docs
from annotation_server.api.errors import install_error_handlers
from annotation_server.api.ohif import mount_ohif
from annotation_server.api.viewer import mount_viewer
from annotation_server.app_spec import AppSpec, build_models, load_app
from annotation_server.audit.log import AuditLog
from annotation_server.auth import routes as auth_routes
from annotation_server.auth.dependencies import authorize
from annotation_server.auth.service import AuthService
from annotation_server.datastore import LocalDatastore
from annotation_server.dicomweb.datastore import DicomWebDatastore, open_dicomweb_datastore
from annotation_server.errors import NotFoundError, UpstreamError
from annotation_server.federated import attach_federated_queue
from annotation_server.imaging import read_volume
from annotation_server.imaging.headers import ReadLimits
from annotation_server.inference.admission import FairAdmission
from annotation_server.inference.batch import BatchInferService
from annotation_server.inference.cache import VolumeCache
from annotation_server.inference.device import detect_device
from annotation_server.inference.engine import InferenceService
from annotation_server.inference.model_sources import BundleModel
from annotation_server.inference.task import InferTask
from annotation_server.interactive.manager import SessionManager
from annotation_server.interactive.service import InteractiveService
from annotation_server.learning.active_learning import ActiveLearningService
from annotation_server.learning.jobs import TrainingJobs
from annotation_server.learning.reservations import Reservations
from annotation_server.learning.score_cache import ScoreCache
from annotation_server.learning.scoring import ScoringService
from annotation_server.learning.strategies import builtin_strategies
from annotation_server.learning.uncertainty import default_scorers
from annotation_server.learning.uncertainty_strategies import uncertainty_strategies
from annotation_server.logging_setup import attach_file_log, detach_file_log
from annotation_server.metrics import Metrics, install_request_metrics
from annotation_server.preannotation.state import WatchState
from annotation_server.preannotation.watcher import PacsWatcher
from annotation_server.projects.blinding import blinding_guard
from annotation_server.projects.service import ProjectService
from annotation_server.projects.store import ProjectStore
from annotation_server.registry import ModelRegistry
from annotation_server.registry.serving import ServingModels, register_sources
from annotation_server.samples import ensure_sample_studies
from annotation_server.security.cors import install_cors
from annotation_server.services import Services
from annotation_server.sessions import SessionStore
from annotation_server.settings import Settings

logger = logging.getLogger(__name__)

ROUTERS = (
    info.router,
    infer.router,
    datastore.router,
    session.router,
    activelearning.router,
    model.router,
    logs.router,
    health.router,
    interactive.router,
    federated.router,
    train.router,
    versions.router,
    scoring.router,
    audit_api.router,
    batch.router,
    preannotation.router,
    projects.router,
)


def resolve_studies(settings: Settings) -> Path:
    """The site's folder, or the embedded sample set copied to the data folder when none is given."""
    if settings.studies is not None:
        return settings.studies.expanduser()
    return ensure_sample_studies(settings.sample_studies_dir)


def load_models(
    settings: Settings, app_spec: AppSpec, device: str, registry: ModelRegistry
) -> tuple[dict[str, InferTask], dict[str, str], dict[str, BundleModel]]:
    """Build and load every model (the app's plus `--model-dir` bundles); a broken one is skipped with its reason.

    Bundles are served at the version the registry says (the shipped one until a site trains or imports a
    better one); the registry-backed sources are returned so the server can swap versions later.
    """
    extra = [BundleModel(path=p, name=Path(p).name) for p in settings.model_dirs]
    declared = [*app_spec.models, *extra]
    bundles, failed = register_sources(registry, [m for m in declared if isinstance(m, BundleModel)])
    models = [bundles.get(m.name, m) for m in declared if m.name not in failed]
    tasks, build_failed = build_models(replace(app_spec, models=models))
    failed.update(build_failed)
    loaded: dict[str, InferTask] = {}
    for task in tasks:
        try:
            if task.name in bundles:
                serving = registry.serving(task.name)
                task.version = str(serving.version) if serving else task.version
            task.load(device)
            task.warmup()
        except Exception as exc:
            failed[task.name] = f"{type(exc).__name__}: {exc}"
            continue
        loaded[task.name] = task
    for name, reason in failed.items():
        logger.error("model %s not served: %s", name, reason)
    return loaded, failed, {name: source for name, source in bundles.items() if name in loaded}


def default_click_model(tasks: dict[str, InferTask]) -> str | None:
    """The click model sessions use unless a prompt names another: a learned one first, else a classic tool."""
    clickers = [t for t in tasks.values() if t.type in ("deepgrow", "deepedit")]
    learned = [t for t in clickers if t.weights_path() is not None]
    chosen = (learned or clickers or [None])[0]
    return chosen.name if chosen is not None else None


def open_datastore(settings: Settings, app_spec: AppSpec) -> LocalDatastore | DicomWebDatastore:
    """A PACS over DICOMweb when `dicomweb_url` (or `--studies http://...`) is set, else a folder of studies."""
    if settings.dicomweb_url:
        return open_dicomweb_datastore(settings, app_spec.labels)
    store = LocalDatastore(resolve_studies(settings), limits=ReadLimits(settings.max_image_voxels))
    store.repair_published_heads()  # a kill between a save's commit and its labels/<tag>/ link update
    store.rescan()
    return store


def restrict_label_values(
    store: LocalDatastore | DicomWebDatastore, app_spec: AppSpec, tasks: dict[str, InferTask]
) -> None:
    """Saved labels may hold 0 and the values of the app's labels and its models' labels, nothing else."""
    allowed = {0, *app_spec.labels.values()}
    for task in tasks.values():
        if isinstance(task.labels, Mapping):
            allowed.update(int(v) for v in task.labels.values())
    local = store.local if isinstance(store, DicomWebDatastore) else store
    local.allowed_label_values = frozenset(allowed)


def build_services(settings: Settings, app_spec: AppSpec) -> Services:
    store = open_datastore(settings, app_spec)
    audit = AuditLog.for_data_dir(settings.data_dir)
    limits = ReadLimits(settings.max_image_voxels)
    device, device_names = detect_device()
    registry = ModelRegistry(settings.registry_dir(app_spec.name))
    inference = InferenceService(
        tasks={},
        cache=VolumeCache(settings.cache_mb << 20, partial(read_volume, limits=limits)),
        datastore=store,
        work_dir=settings.data_dir / "tmp" / "results",
        workers=settings.infer_workers,
        max_pending=settings.infer_queue_size,
    )
    # Loaded and warmed on the inference thread itself, where every later forward pass runs (see `call`).
    tasks, failed, bundle_sources = inference.call(lambda: load_models(settings, app_spec, device, registry))
    inference.tasks.update(tasks)
    restrict_label_values(store, app_spec, tasks)
    project_service = build_projects(store, app_spec, settings)
    hold = project_service.queue_hold if project_service else None
    fl_queue, preannotations = attach_federated_queue(store, app_spec.federated, hold)
    inference.result_observer = preannotations.record  # model outputs become pre-annotations for effort measures
    serving = ServingModels(registry, bundle_sources, inference, device)
    scoring_service = ScoringService(
        store,
        lambda: inference.tasks,  # looked up on every use: a hot-swapped model version is scored afresh
        default_scorers(settings.scoring_samples),
        ScoreCache(store.state_dir / "scores.sqlite"),
        model=settings.scoring_model,
        threads=settings.scoring_threads,
    )
    strategies = {**builtin_strategies(), **uncertainty_strategies(scoring_service), **app_spec.strategies}
    if project_service is not None:
        project_service.strategies = strategies
    interactive = InteractiveService(
        SessionManager(
            settings.data_dir / "interactive" / "spill", settings.session_memory_mb << 20, settings.session_expiry_s
        ),
        inference,
        store,
        dict(app_spec.labels),
        default_click_model(tasks),
        FairAdmission(
            slots=settings.infer_workers,
            capacity=settings.infer_queue_size,
            per_user=settings.click_queue_per_user,
            wait_s=settings.click_wait_s,
        ),
        label_parts={whole: tuple(parts) for whole, parts in app_spec.label_parts.items()},
    )
    return Services(
        settings=settings,
        app=app_spec,
        datastore=store,
        inference=inference,
        sessions=SessionStore(
            settings.session_dir, settings.session_expiry_s, limits, max_extract_bytes=settings.max_upload_mb << 20
        ),
        active_learning=ActiveLearningService(
            strategies, store, interactive.manager.locked_images, Reservations(settings.next_sample_reservation_s)
        ),
        interactive=interactive,
        registry=registry,
        serving=serving,
        training=TrainingJobs(
            settings.train_jobs_dir,
            settings.app,
            registry.root,
            [name for name in app_spec.trainers if name in bundle_sources],
            on_finished=lambda job: serving.sync(job.model),
        ),
        scoring=scoring_service,
        fl_queue=fl_queue,
        preannotations=preannotations,
        device=device,
        device_names=device_names,
        failed_models=failed,
        audit=audit,
        auth=AuthService.from_settings(settings, audit),
        batch=BatchInferService(store, inference),
        watcher=build_watcher(settings, app_spec, store, inference),
        projects=project_service,
    )


def build_projects(
    store: LocalDatastore | DicomWebDatastore, app_spec: AppSpec, settings: Settings
) -> ProjectService | None:
    """Multi-reader projects on a folder datastore (their file lives in its state folder)."""
    if not isinstance(store, LocalDatastore):
        return None
    reservations = Reservations(settings.next_sample_reservation_s)  # a project's Next holds a case as /activelearning
    return ProjectService(ProjectStore.in_state_dir(store.state_dir), store, dict(app_spec.labels), None, reservations)


def build_watcher(
    settings: Settings, app_spec: AppSpec, store: LocalDatastore | DicomWebDatastore, inference: InferenceService
) -> PacsWatcher | None:
    """The PACS watcher when asked for (it needs a DICOMweb datastore and an automatic model)."""
    if not settings.watch_pacs:
        return None
    if not isinstance(store, DicomWebDatastore):
        logger.error("ANNOTATE_WATCH_PACS is on but the studies are not a PACS (DICOMweb URL): no watcher")
        return None
    try:
        return PacsWatcher(
            store,
            inference,
            app_spec.preannotation,
            WatchState(store.state_dir / "preannotation.sqlite"),
            interval_s=settings.watch_interval_s,
            concurrency=settings.watch_concurrency,
            max_attempts=settings.watch_max_attempts,
            retry_s=settings.watch_retry_s,
            settle_s=settings.watch_settle_s,
        )
    except NotFoundError as exc:
        logger.error("PACS watcher off: %s", exc)
        return None


def startup_summary(services: Services) -> str:
    settings = services.settings
    scheme = "https" if settings.ssl_certfile else "http"
    models = ", ".join(f"{t.name} ({t.type}, v{t.version})" for t in services.inference.tasks.values()) or "none"
    store = services.datastore
    if isinstance(store, DicomWebDatastore):
        where = f"the PACS at {store.client.url} (cached in {store.local.root})"
    else:
        where = str(getattr(store, "root", "?"))
    lines = [
        f"annotation-server {__version__} listening on {scheme}://{settings.host}:{settings.port}",
        f"  app:     {services.app.name} - {services.app.description}",
        f"  models:  {models} on {services.device}",
        *(f"  NOT SERVED: {name}: {reason}" for name, reason in services.failed_models.items()),
        f"  studies: {store.stats().total} in {where}",
        f"  data:    {settings.data_dir} (model registry, users, sessions)",
        f"  logs:    {settings.log_file}",
        f"  auth:    {services.auth.describe()}",
    ]
    if settings.ohif:
        lines.append(f"  ohif:    {scheme}://{settings.host}:{settings.port}/ohif/ (DICOMweb via /proxy/dicom/)")
    if services.watcher is not None:
        watcher = services.watcher
        lines.append(
            f"  watcher: new PACS series -> {watcher.model} every {watcher.interval_s:g}s (GET /preannotation/)"
        )
    return "\n".join(lines)


async def _every(seconds: float, work: object) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await asyncio.to_thread(work)  # type: ignore[arg-type]
        except UpstreamError as exc:  # e.g. the PACS is down: one line per round, not a traceback
            logger.warning("background task %s: %s", getattr(work, "__name__", work), exc)
        except Exception:  # a failed housekeeping round must not stop the next one
            logger.exception("background task failed")


def create_app(settings: Settings | None = None, app_spec: AppSpec | None = None) -> FastAPI:
    """Build the ASGI app. `app_spec` defaults to `load_app(settings.app)`."""
    settings = settings or Settings()
    spec = app_spec or load_app(settings.app)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        handler = attach_file_log(settings.log_file, settings.log_level)
        services = await asyncio.to_thread(build_services, settings, spec)
        app.state.services = services
        metrics.bind(
            lambda: services.inference.pending, services.inference.cache, lambda: len(services.interactive.manager)
        )
        services.inference.observer = metrics.observe_inference
        if services.watcher is not None:
            metrics.preannotation_backlog.set_function(services.watcher.state.backlog)
            services.watcher.start()
        tasks = [
            asyncio.create_task(_every(60, services.sessions.purge_expired)),
            asyncio.create_task(_every(60, services.interactive.manager.purge_expired)),
        ]
        if settings.model_sync_interval_s > 0:
            tasks.append(asyncio.create_task(_every(settings.model_sync_interval_s, services.serving.sync)))
        if settings.rescan_interval_s > 0:
            tasks.append(asyncio.create_task(_every(settings.rescan_interval_s, services.datastore.rescan)))
        summary = startup_summary(services)
        # Once on stdout (unwrapped, whatever the terminal) and once in the log file; not through the console
        # log handler too, which would print it a second time when stdout and stderr go to the same file.
        handler.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, summary, None, None))
        print(summary, flush=True)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            services.close()
            detach_file_log(handler)

    metrics = Metrics()
    app = FastAPI(
        title="annotation-server",
        version=__version__,
        description="AI-assisted annotation of 3D medical images; speaks the MONAI Label REST protocol.",
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,  # served from local files by install_offline_docs, not from a CDN
        redoc_url=None,
    )
    # Body limits sit inside CORS (added first = innermost), so a browser can read their 413/408/422.
    app.add_middleware(
        BodyLimits,
        max_upload_bytes=settings.max_upload_mb << 20,
        max_json_bytes=settings.max_json_kb << 10,
        timeout_s=settings.body_timeout_s,
    )
    install_cors(app, settings.cors_origins)
    install_error_handlers(app)
    install_offline_docs(app)
    install_request_metrics(app, metrics)
    app.state.metrics = metrics

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return metrics.exposition()

    # Every API route is guarded by the role table in auth/policy.py (a no-op while auth is off); /auth/* is
    # mounted only when auth is on, so clients see the 404 that means "no login needed".
    for router in ROUTERS:
        app.include_router(router, dependencies=[Depends(authorize), Depends(blinding_guard)])
    if settings.auth_enabled:
        app.include_router(auth_routes.router)
    mount_ohif(app, settings)  # /ohif/ and its DICOMweb proxy when settings.ohif is on
    mount_viewer(app)  # static files at /viewer/, after every API route
    return app
