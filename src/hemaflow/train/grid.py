"""Hyperparameter combinations from params.yaml's `train` section, with readable ids."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np

KEYS = ("model", "optimizer", "lr", "lr_policy", "batch_size", "dropout")
CASTS = {"model": str, "optimizer": str, "lr": float, "lr_policy": str, "batch_size": int, "dropout": float}
# A combination of train.fusion trains again with the patient's blood count as a second input
# (hemaflow.train.fusion): same params plus inputs=FUSED, id + FUSED_SUFFIX. Image-only combos have no
# `inputs` key, so their ids and params are what they were before fusion existed.
FUSED = "image+cbc"
FUSED_SUFFIX = "_cbc"


def combos(train_params: dict, seed: int) -> dict[str, dict]:
    """combo id -> {model, optimizer, lr, lr_policy, batch_size, dropout[, inputs]}, in grid order,
    then the fused versions of the combinations train.fusion names (or of all, `fusion: all`).

    search: grid takes the full cartesian product of train.grid; search: random takes
    `trials` seeded draws without replacement from it (all of it when trials >= its size).
    """
    grid = _checked_grid(train_params["grid"])
    rows = [dict(zip(KEYS, values)) for values in itertools.product(*(grid[k] for k in KEYS))]
    search = train_params["search"]
    if search == "random":
        trials = int(train_params["trials"])
        if trials < 1:
            raise ValueError(f"train.trials must be at least 1, got {trials}")
        picked = np.random.default_rng(seed).choice(len(rows), size=min(trials, len(rows)), replace=False)
        rows = [rows[i] for i in sorted(picked)]
    elif search != "grid":
        raise ValueError(f"train.search must be 'grid' or 'random', got {search!r}")
    with_dropout = len(grid["dropout"]) > 1
    image = {combo_id(row, with_dropout): row for row in rows}
    return {**image, **_fused(image, train_params.get("fusion") or [])}


def is_fused(combo: dict) -> bool:
    return combo.get("inputs", "image") == FUSED


def check_patient_sheet(all_combos: dict, patient_sheet) -> None:
    """Fused combinations need data.patient_sheet."""
    fused = [cid for cid, combo in all_combos.items() if is_fused(combo)]
    if fused and not patient_sheet:
        raise ValueError(
            f"train.fusion asks for {', '.join(fused)} (image + blood count) but data.patient_sheet is null; "
            "name the patient sheet CSV in data.patient_sheet, or set train.fusion: []"
        )


def _fused(image: dict, fusion) -> dict:
    picked = list(image) if fusion == "all" else list(fusion)
    unknown = [cid for cid in picked if cid not in image]
    if unknown:
        raise ValueError(
            f"train.fusion: {', '.join(unknown)} not a combination of train.grid; "
            f"use 'all' or ids among: {', '.join(image)}"
        )
    return {cid + FUSED_SUFFIX: {**image[cid], "inputs": FUSED} for cid in picked}


def combo_id(combo: dict, with_dropout: bool = False) -> str:
    """Readable, filesystem-safe id, e.g. model_1_adam_lr1e-03_constant_bs64[_do0.40]."""
    lr = _exact(combo["lr"], "e")
    cid = f"{combo['model']}_{combo['optimizer']}_lr{lr}_{combo['lr_policy']}_bs{combo['batch_size']}"
    return cid + (f"_do{_exact(combo['dropout'], 'f', 2)}" if with_dropout else "")


def _exact(x: float, kind: str, digits: int = 0) -> str:
    """Fewest digits (at least `digits`) that still read back as x, so distinct values get distinct ids."""
    while float(text := f"{x:.{digits}{kind}}") != x and digits < 16:
        digits += 1
    return text


def _checked_grid(grid: dict) -> dict[str, list]:
    missing = [k for k in KEYS if k not in grid]
    unknown = sorted(set(grid) - set(KEYS))
    if missing or unknown:
        raise ValueError(
            f"train.grid must have exactly the keys {', '.join(KEYS)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    out = {}
    for key in KEYS:
        values = grid[key] if isinstance(grid[key], list) else [grid[key]]
        values = [CASTS[key](v) for v in values]
        if not values:
            raise ValueError(f"train.grid.{key} is empty; list at least one value")
        if len(set(values)) < len(values):
            raise ValueError(f"train.grid.{key} lists a value twice: {values}")
        for v in values:
            if isinstance(v, str) and not v.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"train.grid.{key}: {v!r} must be letters, digits, '_' or '-' (it becomes a path)")
        out[key] = values
    return out


def prune_stale(places: dict, keep) -> list[Path]:
    """Delete what combinations no longer in the grid left: in each directory of `places`, the
    sub-directories (suffix "") or the `<id><suffix>` files whose id is not in `keep`.

    DVC keeps `persist: true` outputs between runs and Snakemake never deletes files it did not
    plan, so without this a removed combination would stay in `dvc plots show` and in
    results/. Returns the deleted paths, sorted.
    """
    keep = set(keep)
    gone = []
    for directory, suffix in places.items():
        root = Path(directory)
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            if suffix == "":
                stale = entry.is_dir() and not entry.is_symlink() and entry.name not in keep
            else:
                stale = entry.is_file() and entry.name.endswith(suffix) and entry.name[: -len(suffix)] not in keep
            if stale:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                gone.append(entry)
    return sorted(gone)
