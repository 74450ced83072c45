"""The services one server instance runs on. Built in the app's lifespan, reached through api.deps.

There is no module-level app or service: two servers with different settings can share a process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from annotation_server.app_spec import AppSpec
from annotation_server.audit.log import AuditLog
from annotation_server.auth.service import AuthService
from annotation_server.datastore import Datastore
from annotation_server.federated.preannotations import PreannotationStore
from annotation_server.federated.queue import FederatedQueue
from annotation_server.inference.batch import BatchInferService
from annotation_server.inference.engine import InferenceService
from annotation_server.interactive.service import InteractiveService
from annotation_server.learning.active_learning import ActiveLearningService
from annotation_server.learning.jobs import TrainingJobs
from annotation_server.learning.scoring import ScoringService
from annotation_server.preannotation.watcher import PacsWatcher
from annotation_server.projects.service import ProjectService
from annotation_server.registry import ModelRegistry
from annotation_server.registry.serving import ServingModels
from annotation_server.sessions import SessionStore
from annotation_server.settings import Settings


@dataclass
class Services:
    settings: Settings
    app: AppSpec
    datastore: Datastore
    inference: InferenceService
    sessions: SessionStore
    active_learning: ActiveLearningService
    interactive: InteractiveService
    registry: ModelRegistry
    serving: ServingModels
    training: TrainingJobs
    scoring: ScoringService
    fl_queue: FederatedQueue
    preannotations: PreannotationStore
    device: str
    device_names: list[str]
    audit: AuditLog  # the site's audit trail (<data dir>/audit/), appended to by routers and AuthService
    failed_models: dict[str, str] = field(default_factory=dict)
    batch: BatchInferService = None  # type: ignore[assignment]  # built in build_services
    watcher: PacsWatcher | None = None  # the PACS watcher (ANNOTATE_WATCH_PACS on a DICOMweb datastore)
    auth: AuthService = field(default_factory=lambda: AuthService(enabled=False))  # off unless the settings say
    started_ts: float = field(default_factory=time.time)
    projects: ProjectService | None = None  # multi-reader projects (folder datastores)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        if self.batch is not None:
            self.batch.close()
        self.scoring.close()
        self.training.close()
        self.inference.close()
        self.preannotations.close()
        self.fl_queue.close()
        if self.projects is not None:
            self.projects.close()
        self.datastore.close()
        self.auth.close()
