"""Wiring the queue to a site's datastore: for the server at start, and for the site's federated job."""

from __future__ import annotations

from pathlib import Path

from annotation_server.datastore import FINAL_TAG, LocalDatastore
from annotation_server.federated.config import FederatedConfig
from annotation_server.federated.preannotations import PREANNOTATIONS_DIRNAME, PreannotationStore
from annotation_server.federated.queue import FederatedQueue
from annotation_server.federated.recorder import Hold, QueueRecorder, sync_with_datastore


def attach_federated_queue(
    datastore: LocalDatastore, config: FederatedConfig, hold: Hold | None = None
) -> tuple[FederatedQueue, PreannotationStore]:
    """Open the queue beside `datastore`, subscribe it to final-label saves and catch up with earlier labels.
    `hold` names why a saved final must not be trained on (multi-reader projects needing adjudication)."""
    queue = FederatedQueue.in_state_dir(datastore.state_dir)
    preannotations = PreannotationStore(datastore.state_dir / PREANNOTATIONS_DIRNAME)
    recorder = QueueRecorder(queue, preannotations, config, hold)
    datastore.label_saved.append(recorder)

    def label_retired(image_id: str, tag: str) -> None:  # retired final labels leave the queue at once
        if tag == FINAL_TAG:
            sync_with_datastore(queue, datastore)

    datastore.label_retired.append(label_retired)
    sync_with_datastore(queue, datastore, recorder)
    return queue, preannotations


def open_site_queue(studies_dir: Path | str) -> tuple[LocalDatastore, FederatedQueue]:
    """The site's datastore and queue, for a federated job running beside (or without) the server.

    Labels retired since they were queued are excluded first, so `queue.eligible()` is what may be trained on:

        datastore, queue = open_site_queue("/data/kidney-ct")
        for entry in queue.eligible():
            image = datastore.image_path(entry.image_id)
            label = datastore.label_file(datastore.label_version(entry.image_id, entry.label_tag, entry.label_version))
    """
    datastore = LocalDatastore(Path(studies_dir).expanduser())
    queue = FederatedQueue.in_state_dir(datastore.state_dir)
    sync_with_datastore(queue, datastore)
    return datastore, queue
