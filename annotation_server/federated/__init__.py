"""Federated learning at a site: the training queue of corrected labels and the annotation-effort report.

The site's federated job reads the queue through `open_site_queue(studies_dir)`; the server fills it
whenever a `final` label is saved.
"""

from annotation_server.federated.config import FederatedConfig
from annotation_server.federated.entries import Effort, QueueEntry, QueueStatus
from annotation_server.federated.queue import QUEUE_FILENAME, FederatedQueue
from annotation_server.federated.site import attach_federated_queue, open_site_queue

__all__ = [
    "QUEUE_FILENAME",
    "Effort",
    "FederatedConfig",
    "FederatedQueue",
    "QueueEntry",
    "QueueStatus",
    "attach_federated_queue",
    "open_site_queue",
]
