"""ProjectService: creating projects, handing readers their cases, saving blinded reads, consensus,
adjudication, the blinding rule every route applies, and the federated queue's hold for project images."""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from annotation_server.auth.roles import Principal, Role
from annotation_server.datastore import FINAL_TAG, LabelVersion, LocalDatastore
from annotation_server.errors import ConflictError, ForbiddenError, InvalidRequestError, NotFoundError
from annotation_server.imaging.io import read_volume
from annotation_server.learning.reservations import Reservations
from annotation_server.learning.strategies import Pick, Strategy
from annotation_server.projects.agreement import CaseAgreement, case_agreement
from annotation_server.projects.assign import assign_readers
from annotation_server.projects.consensus import ConsensusMethod, consensus
from annotation_server.projects.models import (
    AssignmentStatus,
    CaseStatus,
    Project,
    ProjectCreate,
    ProjectStatus,
    consensus_tag,
    reader_tag,
)
from annotation_server.projects.store import ProjectStore


def privileged(principal: Principal) -> bool:
    """Who sees every read of every case: adjudicators, leads and admins (and everyone while auth is off)."""
    return principal.has(Role.adjudicator)


class ProjectService:
    def __init__(
        self,
        store: ProjectStore,
        datastore: LocalDatastore,
        labels: Mapping[str, int],
        strategies: Mapping[str, Strategy] | None = None,
        reservations: Reservations | None = None,
    ) -> None:
        self.store = store
        self.datastore = datastore
        self.labels = {k: int(v) for k, v in labels.items() if int(v) != 0}
        self.strategies = strategies or {}
        self.reservations = reservations or Reservations(ttl_s=1800)
        self._saving = threading.local()  # the image this thread saves an adjudicated final for (queue hold)

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------------------------------- create
    def _select(self, spec: ProjectCreate) -> list[str]:
        known = [r.id for r in self.datastore.list_images()]
        if spec.images is not None:
            missing = sorted(set(spec.images) - set(known))
            if missing:
                raise NotFoundError(
                    f"images not in the datastore: {', '.join(missing)}; see GET /datastore/?output=all"
                )
            return sorted(set(spec.images))
        if spec.filter is not None:
            chosen = sorted(i for i in known if fnmatch.fnmatchcase(i, spec.filter))
            if not chosen:
                raise InvalidRequestError(f"no image id matches the filter '{spec.filter}'")
            return chosen[: spec.count] if spec.count else chosen
        strategy = self.strategies.get(spec.strategy or "")
        if strategy is None:
            raise NotFoundError(
                f"strategy '{spec.strategy}' not found; available: {', '.join(sorted(self.strategies))}"
            )
        chosen: list[str] = []
        for _ in range(spec.count or len(known)):
            picked = strategy.select(self.datastore, {}, exclude=tuple(chosen))
            if picked is None:
                break
            chosen.append(picked.image_id if isinstance(picked, Pick) else picked)
        if not chosen:
            raise InvalidRequestError(f"strategy '{spec.strategy}' chose no image (every image labeled?)")
        return sorted(chosen)

    def create(self, spec: ProjectCreate, by: str) -> Project:
        images = self._select(spec)
        return self.store.create(spec, assign_readers(images, spec.readers, spec.readers_per_image, spec.seed), by)

    def status(self, project_id: int) -> ProjectStatus:
        project = self.store.get(project_id)
        assignments = self.store.assignments(project_id)
        cases = self.store.cases(project_id)
        per_reader: dict[str, dict[str, int]] = {r: {"assigned": 0, "done": 0} for r in project.readers}
        for a in assignments:
            per_reader[a.reader]["assigned"] += 1
            per_reader[a.reader]["done"] += a.status is AssignmentStatus.done
        return ProjectStatus(
            project=project,
            cases=len(cases),
            closed=sum(c.status is CaseStatus.closed for c in cases),
            reads_done=sum(a.status is AssignmentStatus.done for a in assignments),
            reads_total=len(assignments),
            per_reader=per_reader,
        )

    # -------------------------------------------------------------------------------------------- reads
    def next_case(self, project_id: int, reader: str) -> dict[str, Any]:
        """The reader's next assigned, unfinished case ({} when none is left). Asking again skips the one they
        held, as the active-learning `next` does; reservations are per reader since a case has several."""
        project = self.store.get(project_id)
        todo = [
            a
            for a in self.store.assignments(project_id, reader=reader)
            if a.status is AssignmentStatus.assigned
            and self.store.case(project_id, a.image_id).status is CaseStatus.open
        ]
        key = f"{reader}@p{project_id}"
        skipped = {k.split("#", 1)[0] for k in self.reservations.release_for(key)}
        pool = [a for a in todo if a.image_id not in skipped] or todo
        if not pool:
            return {}
        chosen = pool[0]
        self.reservations.reserve(f"{chosen.image_id}#{key}", key)
        info = self.datastore.image_info(chosen.image_id)
        return {
            **info,
            "id": chosen.image_id,
            "project": project.id,
            "tag": chosen.tag,
            "remaining": len(todo),
            "strategy": {"project": {"project": project.id, "reserved_for": reader}},
        }

    def my_queue(self, reader: str) -> list[dict[str, Any]]:
        return [a.model_dump() for a in self.store.assignments(reader=reader)]

    def save_read(
        self, project_id: int, image_id: str, reader: str, upload: Path, filename: str, info: dict[str, Any]
    ) -> LabelVersion:
        """A reader's read, saved as a version of their own tag; the assignment is marked done."""
        mine = self.store.assignments(project_id, reader=reader, image_id=image_id)
        if not mine:
            raise ForbiddenError(
                f"'{reader}' is not a reader of image '{image_id}' in project {project_id}; "
                f"ask for your cases with POST /projects/{project_id}/next"
            )
        if self.store.case(project_id, image_id).status is CaseStatus.closed:
            raise ConflictError(f"case '{image_id}' of project {project_id} is closed (adjudicated); reads are final")
        label = self.datastore.save_label(
            image_id, upload, filename, mine[0].tag, reader, {**info, "project": project_id, "reader": reader}
        )
        seconds = info.get("seconds")
        self.store.mark_read(project_id, image_id, reader, label.version, float(seconds) if seconds else None)
        return label

    def reads(self, project_id: int, image_id: str) -> dict[str, LabelVersion]:
        """reader -> the version of their read that counts (the latest saved)."""
        self.store.case(project_id, image_id)
        found: dict[str, LabelVersion] = {}
        for a in self.store.assignments(project_id, image_id=image_id):
            if a.status is AssignmentStatus.done:
                found[a.reader] = self.datastore.label_head(image_id, a.tag)
        return found

    def _arrays(self, image_id: str, versions: dict[str, LabelVersion]) -> dict[str, np.ndarray]:
        return {
            r: np.asarray(read_volume(self.datastore.label_file(v)).array).astype(np.uint8) for r, v in versions.items()
        }

    def _spacing(self, image_id: str) -> tuple[float, ...]:
        return tuple(float(s) for s in self.datastore.image_geometry(image_id).spacing)

    # ---------------------------------------------------------------------------------------- agreement
    def agreement(self, project_id: int, image_id: str) -> CaseAgreement:
        project = self.store.get(project_id)
        versions = self.reads(project_id, image_id)
        if len(versions) < 2:
            raise ConflictError(
                f"case '{image_id}' has {len(versions)} read(s); agreement needs at least two readers' labels"
            )
        return case_agreement(
            image_id,
            self._arrays(image_id, versions),
            self._spacing(image_id),
            self.labels,
            project.agreement_threshold,
        )

    def report(self, project_id: int) -> dict[str, Any]:
        """Agreement of every case with two or more reads, the flagged cases, and reader effort."""
        project = self.store.get(project_id)
        cases: list[CaseAgreement] = []
        for case in self.store.cases(project_id):
            try:
                cases.append(self.agreement(project_id, case.image_id))
            except ConflictError:
                continue
        seconds: dict[str, float] = {}
        for a in self.store.assignments(project_id):
            if a.seconds:
                seconds[a.reader] = seconds.get(a.reader, 0.0) + a.seconds
        versus: dict[str, dict[str, list[float]]] = {}
        for c in cases:
            for reader, per_label in c.reader_vs_consensus.items():
                for label, value in per_label.items():
                    versus.setdefault(reader, {}).setdefault(label, []).append(value)
        return {
            "project": project.model_dump(mode="json"),
            "threshold": project.agreement_threshold,
            "cases": [c.model_dump() for c in cases],
            "flagged_cases": [c.image_id for c in cases if c.flagged],
            "flagged_readers": {c.image_id: c.flagged_readers for c in cases if c.flagged_readers},
            "missed_structures": {c.image_id: c.missed for c in cases if c.missed},
            "reader_seconds": seconds,
            "reader_vs_consensus_mean_dice": {
                r: {label: float(np.mean(v)) for label, v in per.items()} for r, per in versus.items()
            },
        }

    # ---------------------------------------------------------------------------- consensus, adjudication
    def build_consensus(self, project_id: int, image_id: str, method: ConsensusMethod, by: str) -> LabelVersion:
        versions = self.reads(project_id, image_id)
        if len(versions) < 2:
            raise ConflictError(f"case '{image_id}' has {len(versions)} read(s); a consensus needs at least two")
        arrays = self._arrays(image_id, versions)
        label, details = consensus(arrays, self.labels, method)
        agreement = case_agreement(
            image_id,
            arrays,
            self._spacing(image_id),
            self.labels,
            self.store.get(project_id).agreement_threshold,
            label,
        )
        info = {
            "project": project_id,
            "consensus": details,
            "provenance": {r: {"tag": v.tag, "version": v.version} for r, v in versions.items()},
            "reader_vs_consensus": agreement.reader_vs_consensus,
            "min_dice": agreement.min_dice,
        }
        saved = self.datastore.save_label_array(image_id, label, consensus_tag(project_id), by, info)
        self.store.set_consensus(project_id, image_id, saved.version)
        return saved

    def _save_final(self, image_id: str, save: Any) -> LabelVersion:
        self._saving.image_id = image_id
        try:
            return save()
        finally:
            self._saving.image_id = None

    def adjudicate(
        self, project_id: int, image_id: str, by: str, upload: Path, filename: str, info: dict[str, Any]
    ) -> LabelVersion:
        """The adjudicator's corrected label becomes `final` (provenance: the reads and consensus it came from);
        the case closes, so its reads are no longer blinded."""
        case = self.store.case(project_id, image_id)
        versions = self.reads(project_id, image_id)
        provenance = {
            "project": project_id,
            "adjudicated_by": by,
            "reads": {r: {"tag": v.tag, "version": v.version} for r, v in versions.items()},
            "consensus": {"tag": consensus_tag(project_id), "version": case.consensus_version},
        }
        saved = self._save_final(
            image_id,
            lambda: self.datastore.save_label(
                image_id, upload, filename, FINAL_TAG, by, {**info, "adjudication": provenance}
            ),
        )
        self.store.close_case(project_id, image_id, saved.version, by)
        return saved

    def accept_consensus(self, project_id: int, image_id: str, by: str) -> LabelVersion:
        """The consensus becomes `final` without edits, if the readers agreed at least at the project threshold."""
        project = self.store.get(project_id)
        case = self.store.case(project_id, image_id)
        if case.consensus_version is None:
            raise ConflictError(f"case '{image_id}' has no consensus yet: POST .../cases/{image_id}/consensus first")
        cons = self.datastore.label_version(image_id, consensus_tag(project_id), case.consensus_version)
        agreed = cons.info.get("min_dice")
        if agreed is None or agreed < project.agreement_threshold:
            raise ConflictError(
                f"the readers of '{image_id}' agree at Dice {agreed} below the project's threshold "
                f"{project.agreement_threshold}: the case needs adjudication (POST .../adjudicate)"
            )
        array = np.asarray(read_volume(self.datastore.label_file(cons)).array)
        info = {
            "adjudication": {
                "project": project_id,
                "accepted_consensus_by": by,
                "consensus": {"tag": cons.tag, "version": cons.version},
                "reads": cons.info.get("provenance"),
                "min_dice": agreed,
            }
        }
        saved = self._save_final(
            image_id, lambda: self.datastore.save_label_array(image_id, array, FINAL_TAG, by, info)
        )
        self.store.close_case(project_id, image_id, saved.version, by)
        return saved

    # ---------------------------------------------------------------------------------------- blinding
    def hidden_tags(self, image_id: str, principal: Principal) -> set[str]:
        """Tags of `image_id` the caller may not read: other readers' reads and the consensus of every open case
        of a blinded project. Empty for adjudicators, leads and admins."""
        if privileged(principal):
            return set()
        hidden: set[str] = set()
        for case in self.store.open_cases_of(image_id):
            if not self.store.get(case.project_id).blinded:
                continue
            hidden.add(consensus_tag(case.project_id))
            hidden.update(
                a.tag
                for a in self.store.assignments(case.project_id, image_id=image_id)
                if a.reader != principal.username
            )
        return hidden

    def check_read(self, image_id: str, tag: str | None, principal: Principal) -> None:
        """ForbiddenError when `principal` may not read `tag` of `image_id` (tag None: every tag)."""
        hidden = self.hidden_tags(image_id, principal)
        if not hidden:
            return
        if tag is None:
            own = reader_tag(self.store.open_cases_of(image_id)[0].project_id, principal.username)
            raise ForbiddenError(
                f"image '{image_id}' is in a blinded multi-reader project: list only your own reads (tag={own})"
            )
        if tag in hidden:
            raise ForbiddenError(
                f"label '{tag}' of image '{image_id}' is another reader's read in a blinded project; it can be seen "
                "once the case is adjudicated (or by an adjudicator)"
            )

    def check_direct_save(self, image_id: str, principal: Principal) -> None:
        """Readers of an open blinded case save through the project, never to a shared tag such as `final`."""
        if privileged(principal):
            return
        for case in self.store.open_cases_of(image_id):
            if self.store.get(case.project_id).blinded and self.store.assignments(
                case.project_id, reader=principal.username, image_id=image_id
            ):
                raise ForbiddenError(
                    f"image '{image_id}' is your case in blinded project {case.project_id}: save your read with "
                    f"PUT /projects/{case.project_id}/cases/{image_id}/label"
                )

    def redact_listing(self, dump: dict[str, Any], principal: Principal) -> dict[str, Any]:
        """MONAI Label's `?output=all` document without the labels the caller may not see."""
        if privileged(principal) or not self.store.any_open():
            return dump
        for image_id, entry in dump.get("objects", {}).items():
            hidden = self.hidden_tags(image_id, principal)
            if hidden and isinstance(entry, dict):
                entry["labels"] = {t: v for t, v in entry.get("labels", {}).items() if t not in hidden}
        return dump

    # ---------------------------------------------------------------------------------- federated queue
    def queue_hold(self, label: LabelVersion) -> str | None:
        """Why a saved `final` label must not become eligible for training (None: it may): in a project that
        requires adjudication only the adjudicated final (or an accepted consensus) is training material."""
        if label.tag != FINAL_TAG or getattr(self._saving, "image_id", None) == label.image_id:
            return None
        for case in self.store.cases_of(label.image_id):
            project = self.store.get(case.project_id)
            if project.require_adjudication:
                return (
                    f"image '{label.image_id}' is in project {project.id} ({project.name}), which requires "
                    "adjudication: only the adjudicated final (POST /projects/.../adjudicate) is trained on"
                )
        return None
