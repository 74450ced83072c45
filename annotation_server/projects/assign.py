"""Balanced, reproducible assignment of readers to images.

Each image gets `k` distinct readers; every pick goes to the readers with the fewest reads so far, ties broken
by an order drawn from `random.Random(seed)`. Loads therefore differ by at most one read, and the same
(images, readers, k, seed) always gives the same assignment.
"""

from __future__ import annotations

import random


def assign_readers(images: list[str], readers: list[str], k: int, seed: int) -> dict[str, list[str]]:
    """image id -> its k readers (sorted), balanced across the pool."""
    if k > len(readers):
        raise ValueError(f"cannot give each image {k} readers from a pool of {len(readers)}")
    rng = random.Random(seed)
    order = sorted(images)
    rng.shuffle(order)
    load = dict.fromkeys(readers, 0)
    result: dict[str, list[str]] = {}
    for image in order:
        ties = list(readers)
        rng.shuffle(ties)
        chosen = sorted(ties, key=load.__getitem__)[:k]  # stable sort: the shuffle breaks ties
        for reader in chosen:
            load[reader] += 1
        result[image] = sorted(chosen)
    return {image: result[image] for image in sorted(result)}
