"""Evaluate one combo: predict every shard, average augmented copies per source image,
score each split at cell level and, for binary tasks with patients, at patient level.

`predict` is the only part that needs a model; everything after it works on the
prediction table (aug_id, label_index, p_0..p_{k-1}) so the SVM baseline and hand-made
tables go through the same code.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from hemaflow import metrics, plots
from hemaflow.manifest import SPLITS
from hemaflow.records import deterministic_copies, parse_example, to_unit

log = logging.getLogger(__name__)


def prediction_frame(aug_ids, labels, proba) -> pd.DataFrame:
    """The prediction table: aug_id, label_index and one `p_<class index>` column per class."""
    proba = np.asarray(proba, dtype=np.float64)
    frame = pd.DataFrame({"aug_id": pd.Series(list(aug_ids), dtype=str),
                          "label_index": np.asarray(labels, dtype=np.int16)})
    for c in range(proba.shape[1]):
        frame[f"p_{c}"] = proba[:, c]
    return frame


def predict(
    model, records: Iterable, *, channels: int, batch_size: int = 64, cbc=None, deterministic_only: bool = False
) -> pd.DataFrame:
    """Stream TFRecord shards through a Keras model; a single sigmoid output is P(class 1).

    A fused model (two inputs) needs `cbc`, a `hemaflow.fusion.CBCInputs`: each batch gets its
    records' raw CBC values, looked up by aug_id exactly as in training.
    `deterministic_only`: score one record per source image (the training split: its
    augmented copies were trained on, scoring them all costs 72x the time at seed 000)."""
    import tensorflow as tf

    if (len(model.inputs) == 2) != (cbc is not None):
        raise ValueError(
            f"model {model.name} has {len(model.inputs)} input(s) but CBC values were "
            f"{'given' if cbc is not None else 'not given'}: a fused (image+cbc) model needs "
            "data.patient_sheet, an image-only model must not get it"
        )
    rows = cbc.lookup() if cbc is not None else None
    ds = tf.data.TFRecordDataset([str(p) for p in records])
    ds = (
        (deterministic_copies(ds) if deterministic_only else ds)
        .map(lambda r: parse_example(r, channels), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .map(lambda images, *rest: (to_unit(images), *rest))
        .prefetch(1)
    )
    ids, labels, probs = [], [], []
    for images, label, aug_id in ds:
        x = images if rows is None else (images, rows(aug_id))
        probs.append(np.asarray(model.predict_on_batch(x), dtype=np.float64))
        labels.append(label.numpy())
        ids.extend(a.decode() for a in aug_id.numpy())
    width = model.output_shape[-1]
    proba = np.concatenate(probs) if probs else np.zeros((0, width))
    if width == 1:
        proba = np.column_stack([1.0 - proba[:, 0], proba[:, 0]])
    return prediction_frame(ids, np.concatenate(labels) if labels else [], proba)


def predict_baseline(pipe, features: pd.DataFrame, *, n_classes: int | None = None) -> pd.DataFrame:
    """`predict` for the classical baseline: SVM probabilities of a `baseline.featurize_split`
    table (features computed once, by train_baseline), same prediction table."""
    from hemaflow.baseline import FEATURE_NAMES, predict_svm  # scikit-image only when needed

    proba = predict_svm(pipe, features[FEATURE_NAMES].to_numpy(), n_classes)
    return prediction_frame(features["aug_id"], features["label_index"], proba)


def per_image(pred: pd.DataFrame, augmented: pd.DataFrame, sources: pd.DataFrame, class_names) -> pd.DataFrame:
    """One row per source image: probabilities averaged over its augmented copies, truth from sources."""
    cols = [f"p_{c}" for c in range(len(class_names))]
    missing = [c for c in ["aug_id", "label_index", *cols] if c not in pred.columns]
    if missing:
        raise ValueError(f"prediction table lacks columns {missing} for classes {list(class_names)}")
    m = pred.merge(augmented[["aug_id", "image_id", "split"]], on="aug_id", how="left")
    unknown = m["image_id"].isna()
    if unknown.any():
        raise ValueError(
            f"{int(unknown.sum())} predicted aug_ids are not in augmented.parquet "
            f"(e.g. {m.loc[unknown, 'aug_id'].iloc[0]!r}): shards and manifest are from different runs; "
            "rerun the augment rule"
        )
    img = (
        m.groupby(["split", "image_id"], sort=False)
        .agg(n_copies=("aug_id", "size"), record_label=("label_index", "first"), **{c: (c, "mean") for c in cols})
        .reset_index()
        .merge(sources[["image_id", "patient_id", "label", "label_index"]], on="image_id", how="left")
    )
    if img["label_index"].isna().any():
        raise ValueError(
            f"image_id {img.loc[img['label_index'].isna(), 'image_id'].iloc[0]} is in augmented.parquet "
            "but not in sources.parquet: the manifests are from different runs; rerun from ingest"
        )
    bad = img["record_label"] != img["label_index"]
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} images have a shard label different from sources.parquet "
            f"(e.g. image_id {img.loc[bad, 'image_id'].iloc[0]}): rebuild the shards from the current manifest"
        )
    img["predicted"] = img[cols].to_numpy().argmax(axis=1)
    img["predicted_label"] = np.asarray(class_names, dtype=object)[img["predicted"]]
    order = {s: i for i, s in enumerate(SPLITS)}
    img = img.sort_values(["split", "image_id"], key=lambda s: s.map(order) if s.name == "split" else s)
    return img.drop(columns="record_label").reset_index(drop=True)


def patient_table(images: pd.DataFrame, positive: int) -> pd.DataFrame:
    """Per split and patient: label, n_cells, frac_positive (1 = the positive class)."""
    cells = images.dropna(subset=["patient_id"]).assign(
        y_true=lambda d: (d["label_index"] == positive).astype(int),
        y_pred=lambda d: (d["predicted"] == positive).astype(int),
    )
    parts = [metrics.patient_fractions(g).assign(split=s) for s, g in cells.groupby("split", sort=False)]
    cols = ["patient_id", "split", "label", "n_cells", "frac_positive"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def patient_level(images: pd.DataFrame, class_names, positive: int) -> tuple[pd.DataFrame, float | None, dict]:
    """(patients table, threshold, metrics.json's `patient` section) for one combo's images.

    Binary tasks with patient ids only, and only when the validation patients have both
    diagnoses (the threshold is chosen there); otherwise `patient` is {"skipped": why}, logged,
    and the cell metrics stand alone. The patients table is always written (the workflow's output).
    """
    names = list(class_names)
    binary = len(names) == 2
    patients = patient_table(images if binary else images.iloc[:0], positive).assign(predicted=pd.NA)
    val = patients[patients["split"] == "val"]
    skipped = None
    if not binary:
        skipped = f"{len(names)} classes: the patient-level diagnosis is computed for binary tasks only"
    elif patients.empty:
        skipped = "no patient ids: patient-level diagnosis not computed (the data set names no patients)"
    elif val["label"].nunique() < 2:
        have = sorted({names[positive] if v else names[1 - positive] for v in val["label"]})
        skipped = (
            f"the validation split has patients of one diagnosis only ({have or 'none'}), so no "
            "patient-level threshold can be chosen: patient level skipped, cell metrics reported "
            "(put patients of both diagnoses in validation via split.val_fold or split.ratios)"
        )
    if skipped:
        log.warning("%s", skipped)
        return patients, None, {"skipped": skipped}
    threshold = metrics.choose_threshold(val)
    patients["predicted"] = (patients["frac_positive"] >= threshold).astype(int)
    section = {"threshold": threshold, "threshold_chosen_on": "val", "positive_class": names[positive]}
    for split, g in patients.groupby("split", sort=False):
        section[split] = metrics.patient_metrics(g, threshold)
    return patients, threshold, section


def evaluate_predictions(
    pred: pd.DataFrame,
    augmented: pd.DataFrame,
    sources: pd.DataFrame,
    *,
    class_names,
    positive_class: str | None,
    out_dir,
    table_pattern: str | None = None,
) -> dict:
    """Score every split in `pred` and write metrics.json, predictions and figures to `out_dir`.

    The CSV tables behind the figures go to `table_pattern` formatted with {kind} (confusion,
    roc) and {split}; by default out_dir/{kind}_{split}.csv.
    """
    names = list(class_names)
    binary = len(names) == 2
    positive = 1
    if binary:
        if positive_class not in names:
            raise ValueError(f"data.positive_class {positive_class!r} is not one of the classes {names}")
        positive = names.index(positive_class)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pattern = table_pattern or str(out / "{kind}_{split}.csv")

    def table(kind: str, split: str) -> Path:
        path = Path(pattern.format(kind=kind, split=split))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    images = per_image(pred, augmented, sources, names)
    images.to_parquet(out / "predictions.parquet", index=False)
    cols = [f"p_{c}" for c in range(len(names))]

    result: dict = {}
    for split in SPLITS:
        d = images[images["split"] == split]
        if d.empty:  # e.g. split.ratios without a test share: the rule's figures and tables still exist
            log.warning("the %s split has no images: its metrics are left out and its figures say so", split)
            pd.DataFrame({"actual": pd.Series(dtype=str), "predicted": pd.Series(dtype=str)}).to_csv(
                table("confusion", split), index=False)  # fmt: skip
            metrics.roc_table(np.zeros(0, int), np.zeros((0, len(names))), names, positive=positive).to_csv(
                table("roc", split), index=False)  # fmt: skip
            for kind in ("confusion", "roc"):
                plots.message(out / f"{kind}_{split}.png", f"{split} {kind}", f"the {split} split has no images")
            continue
        y, proba = d["label_index"].to_numpy(int), d[cols].to_numpy()
        result[split] = metrics.cell_metrics(y, proba, names, positive=positive)
        pd.DataFrame({"actual": d["label"], "predicted": d["predicted_label"]}).to_csv(
            table("confusion", split), index=False  # one row per image: DVC's template counts rows
        )
        counts = metrics.confusion_table(y, d["predicted"], names)
        plots.confusion_matrix(counts, out / f"confusion_{split}.png", title=f"{split} confusion matrix")
        roc = metrics.roc_table(y, proba, names, positive=positive)
        roc.to_csv(table("roc", split), index=False)
        plots.roc_curves(roc, out / f"roc_{split}.png", title=f"{split} ROC curve")

    patients, threshold, result["patient"] = patient_level(images, names, positive)
    patients.to_csv(out / "patients.csv", index=False)
    plots.patient_diagnosis(patients, threshold, out / "patients.png", note=result["patient"].get("skipped"))

    (out / "metrics.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    return result


def json_safe(obj):
    """NaN and inf become null (strict JSON, which DVC and browsers parse); numpy scalars plain."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is pd.NA:
        return None
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
