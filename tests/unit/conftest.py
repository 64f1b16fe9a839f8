"""Shared fixtures for the data-layer tests: a tiny replica and synthetic sources tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hemaflow.data.adapters import image_id
from hemaflow.data.synth import generate_cnmc_replica

TINY = dict(
    seed=7,
    folds=3,
    patients_per_fold={"all": 2, "hem": 1},
    holdout_patients={"all": 2, "hem": 2},
    cells_per_patient=(3, 6),
)


@pytest.fixture(scope="session")
def tiny():
    """Replica parameters small enough for unit tests (13 patients, 3-6 cells each)."""
    return TINY


@pytest.fixture(scope="session")
def replica(tmp_path_factory):
    """A small full-size (450 px) replica, generated once per session; treat it as read-only."""
    root = tmp_path_factory.mktemp("replica") / "cnmc"
    generate_cnmc_replica(root, image_size=450, **TINY)
    return root


@pytest.fixture
def fake_sources():
    """Factory of sources tables without images (see `_fake_sources`)."""
    return _fake_sources


def _fake_sources(n_patients=60, cells=(2, 9), seed=0, patients=True, dataset="fake") -> pd.DataFrame:
    """A sources table without images: patients with uneven cell counts, about 2:1 all:hem."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "all" if p % 3 else "hem"
        for c in range(rng.integers(cells[0], cells[1] + 1)):
            rel = f"{label}/P{p}_{c}.png"
            rows.append({
                "image_id": image_id(dataset, rel), "dataset": dataset, "rel_path": rel,
                "patient_id": f"P{p}" if patients else None, "source_label": label, "label": label,
                "label_index": int(label == "all"), "fold": -1, "holdout": False,
                "width": 8, "height": 8, "mode": "RGB", "format": "PNG",
                "content_hash": f"{p}-{c}", "duplicate_of": None, "status": "ok", "reason": None,
            })  # fmt: skip
    return pd.DataFrame(rows).astype({"label_index": "int16", "fold": "int8", "width": "int32", "height": "int32"})
