"""From "a final label was saved" to a queue entry with its effort measures, and keeping the queue in step.

`QueueRecorder` subscribes to `LocalDatastore.label_saved`, so every save path (MONAI Label PUT, an
interactive session's save, /infer/ with `save_label`) enqueues without knowing about the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from annotation_server.datastore import FINAL_TAG, LabelVersion, LocalDatastore
from annotation_server.errors import ConflictError
from annotation_server.federated.config import FederatedConfig
from annotation_server.federated.entries import Effort, QueueStatus
from annotation_server.federated.measures import compare_labels, reported_effort
from annotation_server.federated.preannotations import Preannotation, PreannotationStore
from annotation_server.federated.queue import FederatedQueue

logger = logging.getLogger(__name__)

Hold = Callable[[LabelVersion], str | None]

RETIRED_REASON = "the final label was retired or its image deleted in the datastore"
NEWER_REASON = (
    "final label version {version} is newer and not queued yet; start the server on these studies to queue it"
)


@dataclass
class QueueRecorder:
    queue: FederatedQueue
    preannotations: PreannotationStore
    config: FederatedConfig
    hold: Hold | None = None  # why a final may not be trained on (e.g. not adjudicated in its project), or None

    def __call__(self, label: LabelVersion, array: np.ndarray | None) -> None:
        """The datastore's `label_saved` callback: only `final` labels are training material."""
        if label.tag != FINAL_TAG:
            return
        held = self.hold(label) if self.hold is not None else None
        entry = self.queue.enqueue(label, self.measure(label, array), self.config.review_required or held is not None)
        if held is not None:
            entry = self.queue.exclude(entry.id, held, reviewer="projects")
        logger.info("federated queue: entry %d for %s v%d (%s)", entry.id, label.image_id, label.version, entry.status)

    def _preannotation(self, label: LabelVersion) -> Preannotation | None:
        """The model output this label was corrected from, if any.

        An interactive save says whether its session had a model result (`preannotated`), and records that
        result just before saving; any other save is compared with the image's latest model output.
        """
        if label.info.get("preannotated") is False:
            return None
        pre = self.preannotations.get(label.image_id)
        return pre if pre is not None and pre.created_ts <= label.created_ts else None

    def measure(self, label: LabelVersion, array: np.ndarray | None) -> Effort:
        interactions, seconds = reported_effort(label.info)
        effort = Effort(
            interactions=interactions,
            seconds=seconds,
            labeled_voxels=int(np.count_nonzero(array)) if array is not None else None,
        )
        pre = self._preannotation(label)
        if pre is not None:
            change = compare_labels(pre.mask, array) if array is not None else None
            return effort.model_copy(
                update={
                    "ai_assisted": True,
                    "model": pre.model,
                    "model_version": pre.model_version,
                    **({"dice": change.dice, "voxels_changed": change.voxels_changed} if change else {}),
                }
            )
        if label.source.model and label.info.get("preannotated") is not False:  # the client says a model helped
            return effort.model_copy(
                update={"ai_assisted": True, "model": label.source.model, "model_version": label.source.model_version}
            )
        return effort


def sync_with_datastore(
    queue: FederatedQueue, datastore: LocalDatastore, recorder: QueueRecorder | None = None
) -> tuple[int, int]:
    """Reconcile the queue with the datastore's final labels: (entries added, entries retired).

    With a recorder, final labels that have no entry (saved before the queue existed, or imported from a
    MONAI Label folder) are added, without Dice since no file is read. Live entries whose label was retired or
    whose image was deleted are excluded, so the federated job never trains on them.
    """
    # The queue first: the server enqueues a label only after the datastore committed it, so every entry read here
    # has its version (or a newer one) among the heads read next, unless it was retired. The other order could
    # read an entry saved in between as newer than its head and exclude the newest label as retired.
    latest = queue.latest_versions()
    heads = datastore.index.all_heads()
    finals = {i: next((h for h in labels if h.tag == FINAL_TAG), None) for i, labels in heads.items()}
    added = retired = 0
    if recorder is not None:
        missing = [
            final
            for image_id, final in finals.items()
            if final is not None and latest.get((image_id, FINAL_TAG), (0, 0, None))[1] < final.version
        ]
        queue.enqueue_many([(f, recorder.measure(f, None)) for f in missing], recorder.config.review_required)
        added = len(missing)
    for (image_id, tag), (entry_id, version, status) in latest.items():
        final = finals.get(image_id)
        live = status in (QueueStatus.eligible, QueueStatus.pending_review)
        if tag != FINAL_TAG or not live or (final is not None and final.version == version):
            continue
        if final is not None and final.version > version:
            if recorder is not None:  # added above, which superseded this entry
                continue
            reason = NEWER_REASON.format(version=final.version)  # never train an old version
        else:
            reason = RETIRED_REASON
        try:
            queue.exclude(entry_id, reason, reviewer="datastore")
        except ConflictError:  # the server queued a newer version since `latest` was read: superseded already
            continue
        retired += 1
    if added or retired:
        logger.info("federated queue: %d labels added, %d retired while reconciling with the datastore", added, retired)
    return added, retired
