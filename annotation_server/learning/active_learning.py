"""Serves POST /activelearning/{strategy}: pick, record the pick, answer in MONAI Label's shape."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from annotation_server.datastore import Datastore
from annotation_server.errors import NotFoundError
from annotation_server.learning.reservations import Reservations
from annotation_server.learning.strategies import Pick, Strategy


class ActiveLearningService:
    def __init__(
        self,
        strategies: Mapping[str, Strategy],
        datastore: Datastore,
        locked: Callable[[], set[str]] = set,
        reservations: Reservations | None = None,
    ) -> None:
        self.strategies = dict(strategies)
        self.datastore = datastore
        self.locked = locked  # images open in someone's interactive session are not offered
        # images offered to one annotator are not offered to another meanwhile
        self.reservations = reservations or Reservations(ttl_s=1800)

    def describe(self) -> dict[str, dict[str, Any]]:
        return {name: {"description": s.description} for name, s in self.strategies.items()}

    def next_sample(self, strategy: str, request: dict[str, Any], annotator: str | None = None) -> dict[str, Any]:
        """The next image as {id, name, path, ts, strategy: {...}, ...image info}, or {} if none is left.

        `annotator` (default: the request's client_id) identifies who asks: the image is reserved for them, and
        images reserved for others or open in a session are not offered. Asking again releases what they held
        and, where anything else is left, offers something else (they skipped it).
        """
        chosen = self.strategies.get(strategy)
        if chosen is None:
            available = ", ".join(sorted(self.strategies))
            raise NotFoundError(f"strategy '{strategy}' not found; available strategies: {available}")
        client_id = request.get("client_id")
        who = annotator or (client_id if isinstance(client_id, str) and client_id else "anonymous")
        skipped = self.reservations.release_for(who)
        busy = set(self.locked()) | self.reservations.held_by_others(who)
        picked = chosen.select(self.datastore, request, exclude=tuple(sorted(busy | skipped)))
        if picked is None and skipped:  # only what they skipped is left: offer it again
            picked = chosen.select(self.datastore, request, exclude=tuple(sorted(busy)))
        if picked is None:
            return {}
        image_id, why = (picked.image_id, picked.info) if isinstance(picked, Pick) else (picked, {})
        self.reservations.reserve(image_id, who)
        why = {**why, "reserved_for": who, "reserved_s": self.reservations.ttl_s}
        self.datastore.record_pick(strategy, image_id, client_id if isinstance(client_id, str) else None)
        info = self.datastore.image_info(image_id)
        picks = self.datastore.strategy_info(image_id)
        if why:
            picks[strategy] = {**picks.get(strategy, {}), **why}
        return {**info, "id": image_id, "path": str(Path(info["path"])), "strategy": picks}
