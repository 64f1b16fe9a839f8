"""Class balance of an augmented split, decided per source image before any copy is made."""

# Seed 000 balanced its classes by sampling 3,200 *augmented* images per class, so copies of one
# cell were drawn next to each other (and its split was drawn from the same augmented pool).
# Seed 003 up-sampled every training class to about 25,000 images by random augmentation. Here
# both act on source images of one split, after the patient-disjoint split:
#
# - `sources_per_class`: at most this many sources per class, a seeded draw; the others are not
#   used by this split at all (no copy of them is written).
# - `target_per_class`: extra random copies, spread evenly over a class's sources (the first ones
#   in the same seeded order get one more), until the class has this many images; a class that
#   already has as many keeps its copies and gets none.
#
# The draw ranks each source by a hash of (seed, split, image_id), so it does not depend on the
# order of the rows or on the shard a source lands in: every shard job computes the same plan.

from __future__ import annotations

import hashlib

import pandas as pd


def plan(
    rows: pd.DataFrame,
    *,
    split: str,
    seed: int,
    copies_per_source: int,
    sources_per_class: int | None = None,
    target_per_class: int | None = None,
) -> pd.DataFrame:
    """The rows of one split's sources (image_id, label_index, ...) that the split uses, with a
    column `extra_copies`; `copies_per_source` is what augmentation makes of each source anyway."""
    rows = rows.assign(_rank=rows["image_id"].map(lambda i: _rank(seed, split, i)))
    rows = rows.sort_values(["label_index", "_rank"], kind="stable")
    if sources_per_class is not None:
        rows = rows.groupby("label_index", sort=False).head(sources_per_class)
    order = rows.groupby("label_index", sort=False).cumcount()
    n = rows.groupby("label_index", sort=False)["image_id"].transform("size")
    missing = ((target_per_class or 0) - n * copies_per_source).clip(lower=0)
    rows = rows.assign(extra_copies=(missing // n + (order < missing % n)).astype(int))
    return rows.drop(columns="_rank").sort_values("image_id", kind="stable").reset_index(drop=True)


def _rank(seed: int, split: str, image_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}/{image_id}".encode()).digest()[:8], "big")
