"""The explain stage: which cells to explain, their Grad-CAM and LIME overlays of the predicted
class, the panels and the sufficiency test."""

# The predicted class, always: seed 003's LIME call explained class 0 whatever the prediction.

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hemaflow.explain.gradcam import gradcam, overlay
from hemaflow.explain.lime import lime_explain, lime_overlay, sufficiency
from hemaflow.safenames import check_name, under

KINDS = ("correct", "misclassified")


def choose_cells(images: pd.DataFrame, *, splits, per_group: int, seed: int, by_kind: bool = True) -> pd.DataFrame:
    """A seeded sample of `per_group` cells per true class (and per kind, correct or misclassified)
    from evaluate's per-image predictions of `splits`; fewer where a group has fewer."""
    pool = images[images["split"].isin(list(splits))].sort_values(["split", "image_id"])
    pool = pool.assign(kind=np.where(pool["predicted"] == pool["label_index"], KINDS[0], KINDS[1]))
    groups = ["label_index", "kind"] if by_kind else ["label_index"]
    picked = [g.sample(n=min(per_group, len(g)), random_state=seed) for _, g in pool.groupby(groups, sort=True)]
    if not picked:
        return pool.iloc[:0]
    return pd.concat(picked).sort_values([*groups, "image_id"]).reset_index(drop=True)


def load_images(records, augmented: pd.DataFrame, image_ids, channels: int) -> dict[str, np.ndarray]:
    """image_id -> its deterministic record (copy 0: no rotation, mirror or random op) as uint8."""
    from hemaflow.augment.records import iter_records

    rows = augmented[augmented["image_id"].isin(set(image_ids)) & (augmented["copy"] == 0)
                     & (augmented["rotation"] == 0) & ~augmented["mirror"]]
    wanted = dict(zip(rows["aug_id"], rows["image_id"]))
    found = {wanted[aug_id]: img for img, _, aug_id in iter_records(records, channels) if aug_id in wanted}
    missing = sorted(set(image_ids) - set(found))
    if missing:
        raise ValueError(f"{len(missing)} images to explain (e.g. {missing[0]}) have no deterministic record in "
                         "the shards given: shards and augmented.parquet are from different runs; rerun augment")
    return found


def explain_model(model, predictions: pd.DataFrame, images: dict[str, np.ndarray], *, combo: str, class_names,
                  settings: dict, seed: int, out: dict) -> dict:
    """Explain a seeded sample of cells and run the sufficiency test; write the files named in `out`.

    predictions: evaluate's per-image table; images: image_id -> deterministic record (uint8)
    for every cell `sample_cells` picks. `settings` is params.yaml's `explain` section; `out`
    has keys overlays (directory), cells, sufficiency, plot, summary. Returns the summary.
    """
    from hemaflow import plots  # matplotlib only here: the API above works without it

    gallery, tested = sample_cells(predictions, settings, seed)
    ids = list(dict.fromkeys([*gallery["image_id"], *tested["image_id"]]))
    x = np.stack([images[i] for i in ids]).astype(np.float32) / 255.0 if ids else np.zeros((0, 1, 1, 1), np.float32)
    index = {image_id: k for k, image_id in enumerate(ids)}
    lime_args = dict(seed=seed, num_samples=settings["num_samples"], fill=settings["fill"],
                     batch_size=settings["batch_size"], segmentation=settings["segmentation"])
    started = time.perf_counter()
    lime = {i: lime_explain(model, x[index[i]], **lime_args) for i in ids}
    lime_seconds = time.perf_counter() - started
    g = np.array([index[i] for i in gallery["image_id"]], dtype=int)
    started = time.perf_counter()
    heat = gradcam(model, x[g], np.array([lime[i].label for i in gallery["image_id"]])) if len(g) else []
    gradcam_seconds = time.perf_counter() - started

    names = np.asarray(class_names, dtype=object)
    overlays = Path(out["overlays"])
    rows = []
    for k, cell in enumerate(gallery.itertuples(index=False)):
        e, img = lime[cell.image_id], x[index[cell.image_id]]
        png = overlay_path(overlays, cell.label, cell.kind, cell.image_id)
        png.parent.mkdir(parents=True, exist_ok=True)
        title = (f"true: {cell.label} · predicted: {names[e.label]} (p = {e.probability:.2f}) · "
                 f"{cell.split}, {cell.kind}")
        plots.explanation_panel(overlay(img, np.zeros(img.shape[:2]), 0.0), overlay(img, heat[k]),
                                lime_overlay(img, e), title, png)
        rows.append({"image_id": cell.image_id, "split": cell.split, "patient_id": cell.patient_id,
                     "label": cell.label, "kind": cell.kind, "predicted": names[e.label],
                     "probability": e.probability, "superpixels": len(e.weights), "lime_r2": e.r2,
                     "overlay": str(png.relative_to(overlays))})  # fmt: skip
    overlays.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["image_id", "split", "patient_id", "label", "kind", "predicted", "probability",
                                "superpixels", "lime_r2", "overlay"]).to_csv(out["cells"], index=False)

    t = [index[i] for i in tested["image_id"]]
    table = sufficiency(model, x[t], tested["label_index"].to_numpy(), [lime[i] for i in tested["image_id"]],
                        settings["sufficiency"]["n"], class_names=class_names, seed=seed, fill=settings["fill"],
                        batch_size=settings["batch_size"])
    table.to_csv(out["sufficiency"], index=False)
    plots.sufficiency_curves(table, out["plot"])
    summary = {
        "combo": combo, "cells_explained": len(ids), "gallery": len(gallery), "sufficiency_cells": len(tested),
        "mean_superpixels": float(np.mean([len(e.weights) for e in lime.values()])) if ids else None,
        "lime_seconds_per_image": lime_seconds / max(len(ids), 1),
        "gradcam_seconds_per_image": gradcam_seconds / max(len(g), 1),
        "fill": settings["fill"], "seed": seed,
    }
    Path(out["summary"]).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def overlay_path(overlays: Path, label, kind: str, image_id: str) -> Path:
    """overlays/<class>/<kind>/<image id>.png; UnsafeName when a part would lead elsewhere (ingest
    quarantines such labels, so one arriving here is a bug: refuse rather than write outside)."""
    parts = [check_name(str(label), "class label"), check_name(kind, "cell kind"),
             check_name(f"{image_id}.png", "image id")]  # fmt: skip
    return under(Path(overlays).joinpath(*parts), overlays)


def sample_cells(predictions: pd.DataFrame, settings: dict, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The gallery (cells per class and kind) and the sufficiency sample (cells per class, whatever
    the prediction, so its accuracies are not set by the sampling) from params.yaml's `explain`."""
    if not predictions["split"].isin(settings["splits"]).any():
        raise ValueError(f"explain.splits {settings['splits']}: the predictions have no cell in these splits; "
                         f"use some of {sorted(set(predictions['split']))}")
    gallery = choose_cells(predictions, splits=settings["splits"], per_group=settings["cells"], seed=seed)
    tested = choose_cells(predictions, splits=settings["splits"], per_group=settings["sufficiency"]["cells"],
                          seed=seed, by_kind=False)
    return gallery, tested
