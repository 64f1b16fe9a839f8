"""Evaluate one combo: predict every shard, average augmented copies per source image, score
each split at cell level and, for binary tasks with patients, at patient level, with bootstrap
intervals (resampling patients) and calibration (Brier, ECE, reliability, optional temperature)."""

# `predict` is the only part that needs a model; everything after it works on the
# prediction table (aug_id, label_index, p_0..p_{k-1}) so the SVM baseline and hand-made
# tables go through the same code.

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from hemaflow import plots, stats
from hemaflow.evaluate import calibration, metrics
from hemaflow.data.manifest import SPLITS
from hemaflow.models_io import json_safe
from hemaflow.augment.records import deterministic_copies, parse_example, to_unit

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

    A fused model (two inputs) needs `cbc`, a `hemaflow.train.fusion.CBCInputs`: each batch gets its
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
    from hemaflow.evaluate.baseline import FEATURE_NAMES, predict_svm  # scikit-image only when needed

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


def patient_level(
    images: pd.DataFrame, class_names, positive: int, *, bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[pd.DataFrame, float | None, dict]:
    """(patients table, threshold, metrics.json's `patient` section) for one combo's images.

    Binary tasks with patient ids only, and only when the validation patients have both
    diagnoses (the threshold is chosen there); otherwise `patient` is {"skipped": why}, logged,
    and the cell metrics stand alone. The patients table is always written (the workflow's output).
    Each split's figures get `ci` (`patient_intervals`).
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
        section[split]["ci"] = patient_intervals(g, threshold, bootstrap=bootstrap, confidence=confidence, seed=seed)
    return patients, threshold, section


# ---------------------------------------------------------------- intervals

# With bootstrap = 0 the sections keep their shape (readers need not test for a missing key).
INTERVALS_OFF = "evaluate.bootstrap is 0: bootstrap intervals are off (set it to e.g. 1000 to compute them)"


def _pair(interval: stats.Interval) -> list[float]:
    return [interval.low, interval.high]  # NaN (undefined in every resample) -> null in metrics.json


def cell_intervals(
    images: pd.DataFrame, class_names, positive: int, *, bootstrap: int, confidence: float, seed: int
) -> dict:
    """metrics.json's `ci` of one split: percentile bootstrap intervals of the cell-level metrics.

    The cells of one patient are alike (same blood, same smear, same staining), so they are not
    independent draws: resampling cells would give intervals that are too narrow. A resample
    draws patients with replacement and keeps all their cells (hemaflow.stats, groups = patient
    ids); with no patient ids at all it draws images ("resampled": "images"). An image without a
    patient id among others that have one is its own cluster (said in `note`). Metrics as
    `stats.cell_statistics` (accuracy, balanced_accuracy, auc, precision, recall, f1, macro_f1,
    sensitivity, specificity, recall[<class>]); `n_undefined` counts the resamples where one
    was undefined (e.g. AUC of a resample with one class), left out of its interval.
    """
    names = list(class_names)
    has_ids = images["patient_id"].notna()
    section = {"confidence": confidence, "n_resamples": bootstrap, "seed": seed,
               "resampled": "patients" if has_ids.any() else "images", "metrics": {}}
    if has_ids.any() and not has_ids.all():
        section["note"] = f"{int((~has_ids).sum())} image(s) without a patient id are resampled one by one"
    if bootstrap == 0:
        return section | {"note": INTERVALS_OFF}
    cols = [f"p_{c}" for c in range(len(names))]
    data = {"y_true": images["label_index"].to_numpy(int), "proba": images[cols].to_numpy()}
    found = stats.bootstrap_metrics(
        data, stats.cell_statistics(names, positive=positive),
        groups=images["patient_id"].to_numpy(object) if has_ids.any() else None,
        n_resamples=bootstrap, confidence=confidence, seed=seed,
    )  # fmt: skip
    section["metrics"] = {k: _pair(v) for k, v in found.items()}
    section["n_undefined"] = {k: v.n_undefined for k, v in found.items() if v.n_undefined}
    return section


def patient_intervals(patients: pd.DataFrame, threshold: float, *, bootstrap: int, confidence: float, seed: int) -> dict:
    """The `ci` of one split's patient-level figures: bootstrap over patients (the threshold held
    fixed, as it was chosen on validation) and Wilson score intervals for accuracy, sensitivity
    and specificity (proportions of patients; exact enough for the handful of patients a split has)."""
    label = patients["label"].to_numpy(int) == 1
    predicted = patients["frac_positive"].to_numpy(float) >= threshold
    wilson = {
        "accuracy": stats.wilson(int((predicted == label).sum()), len(label), confidence),
        "sensitivity": stats.wilson(int(predicted[label].sum()), int(label.sum()), confidence),
        "specificity": stats.wilson(int((~predicted[~label]).sum()), int((~label).sum()), confidence),
    }
    section = {"confidence": confidence, "n_resamples": bootstrap, "seed": seed, "resampled": "patients",
               "metrics": {}, "wilson": {k: list(v) for k, v in wilson.items()}}
    if bootstrap == 0:
        return section | {"note": INTERVALS_OFF}
    if len(patients):
        found = stats.bootstrap_metrics(
            patients[["label", "frac_positive"]], stats.patient_statistics(threshold),
            n_resamples=bootstrap, confidence=confidence, seed=seed,
        )  # fmt: skip
        section["metrics"] = {k: _pair(v) for k, v in found.items()}
        section["n_undefined"] = {k: v.n_undefined for k, v in found.items() if v.n_undefined}
    return section


# ---------------------------------------------------------------- calibration

CALIBRATIONS = ("none", "temperature")
RELIABILITY_COLUMNS = ["lower", "upper", "count", "confidence", "accuracy", "gap"]


def fit_calibration(images: pd.DataFrame, class_names, method: str) -> dict:
    """calibration.json: the method and, for `temperature`, T fitted on the validation images only
    (their probabilities averaged over augmented copies, as scored), never on the test split it is
    reported on. `none` records temperature null, so predict knows there is nothing to apply."""
    if method not in CALIBRATIONS:
        raise ValueError(f"evaluate.calibrate {method!r}: use one of {list(CALIBRATIONS)}")
    if method == "none":
        return {"method": "none", "temperature": None, "fitted_on": None}
    val = images[images["split"] == "val"]
    if val.empty:
        raise ValueError(
            "evaluate.calibrate: temperature is fitted on the validation split, which has no images; "
            "set evaluate.calibrate: none, or give the validation split images (split.ratios / split.val_fold)"
        )
    cols = [f"p_{c}" for c in range(len(list(class_names)))]
    y, proba = val["label_index"].to_numpy(int), val[cols].to_numpy()
    t = calibration.fit_temperature(proba, y)
    return {"method": "temperature", "temperature": t, "fitted_on": "val", "n_images": int(len(val)),
            "val_ece_before": calibration.expected_calibration_error(y, proba),
            "val_ece_after": calibration.expected_calibration_error(y, calibration.apply_temperature(proba, t))}


def apply_calibration(images: pd.DataFrame, class_names, temperature: float | None) -> pd.DataFrame:
    """The images with p_<c> replaced by softmax(log p / T) and the prediction taken from them;
    unchanged when temperature is None. A temperature keeps each image's ranking of the classes,
    so predictions (and the patient fractions made from them) do not move; confidences do."""
    if temperature is None:
        return images
    names = list(class_names)
    cols = [f"p_{c}" for c in range(len(names))]
    out = images.copy()
    out[cols] = calibration.apply_temperature(images[cols].to_numpy(), temperature)
    out["predicted"] = out[cols].to_numpy().argmax(axis=1)
    out["predicted_label"] = np.asarray(names, dtype=object)[out["predicted"]]
    return out


def calibration_section(y, proba, *, n_bins: int, temperature: float | None, uncalibrated=None) -> dict:
    """metrics.json's `calibration` of one split: Brier score, ECE with its binning, the temperature
    applied (null: none) and, when one was, the uncalibrated figures for comparison."""
    out = {"brier": calibration.brier(y, proba), "ece": calibration.expected_calibration_error(y, proba, n_bins),
           "ece_bins": n_bins, "binning": calibration.binning(n_bins), "temperature": temperature}
    if uncalibrated is not None:
        out["uncalibrated"] = {"brier": calibration.brier(y, uncalibrated),
                               "ece": calibration.expected_calibration_error(y, uncalibrated, n_bins)}
    return out


def evaluate_predictions(
    pred: pd.DataFrame,
    augmented: pd.DataFrame,
    sources: pd.DataFrame,
    *,
    class_names,
    positive_class: str | None,
    out_dir,
    table_pattern: str | None = None,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    calibrate: str = "none",
    ece_bins: int = 15,
) -> dict:
    """Score every split in `pred` and write metrics.json, calibration.json, predictions and
    figures to `out_dir`.

    The CSV tables behind the figures go to `table_pattern` formatted with {kind} (confusion,
    roc, reliability) and {split}; by default out_dir/{kind}_{split}.csv. Each split gets `ci`
    (`cell_intervals`: `bootstrap` resamples, 0 = off, at `confidence`, drawn from `seed`) and
    `calibration` (`calibration_section`). calibrate="temperature" fits T on the validation
    images (`fit_calibration`) and applies it to every split before any metric, so the patient
    threshold is chosen on calibrated predictions; predictions.parquet holds the calibrated
    probabilities and calibration.json the T that `hemaflow predict` applies.
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

    raw = per_image(pred, augmented, sources, names)
    fitted = fit_calibration(raw, names, calibrate)
    temperature = fitted["temperature"]
    if temperature is not None:
        log.info("temperature %.4g fitted on %d validation images, applied to every split", temperature,
                 fitted["n_images"])
    images = apply_calibration(raw, names, temperature)
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
            pd.DataFrame(columns=RELIABILITY_COLUMNS).to_csv(table("reliability", split), index=False)
            for kind in ("confusion", "roc", "reliability"):
                plots.message(out / f"{kind}_{split}.png", f"{split} {kind}", f"the {split} split has no images")
            continue
        y, proba = d["label_index"].to_numpy(int), d[cols].to_numpy()
        result[split] = metrics.cell_metrics(y, proba, names, positive=positive)
        result[split]["ci"] = cell_intervals(d, names, positive, bootstrap=bootstrap, confidence=confidence, seed=seed)
        before = raw.loc[d.index, cols].to_numpy() if temperature is not None else None
        result[split]["calibration"] = calibration_section(y, proba, n_bins=ece_bins, temperature=temperature,
                                                           uncalibrated=before)
        pd.DataFrame({"actual": d["label"], "predicted": d["predicted_label"]}).to_csv(
            table("confusion", split), index=False  # one row per image: DVC's template counts rows
        )
        counts = metrics.confusion_table(y, d["predicted"], names)
        plots.confusion_matrix(counts, out / f"confusion_{split}.png", title=f"{split} confusion matrix")
        roc = metrics.roc_table(y, proba, names, positive=positive)
        roc.to_csv(table("roc", split), index=False)
        plots.roc_curves(roc, out / f"roc_{split}.png", title=f"{split} ROC curve")
        bins = calibration.reliability_table(y, proba, n_bins=ece_bins)
        bins[bins["count"] > 0].to_csv(table("reliability", split), index=False)  # filled bins: no NaN for DVC
        plots.reliability_diagram(
            bins, out / f"reliability_{split}.png", title=f"{split} reliability",
            ece=result[split]["calibration"]["ece"], temperature=temperature,
            uncalibrated=None if before is None else calibration.reliability_table(y, before, n_bins=ece_bins),
        )  # fmt: skip

    patients, threshold, result["patient"] = patient_level(
        images, names, positive, bootstrap=bootstrap, confidence=confidence, seed=seed
    )
    patients.to_csv(out / "patients.csv", index=False)
    plots.patient_diagnosis(patients, threshold, out / "patients.png", note=result["patient"].get("skipped"))
    result["calibration"] = fitted

    (out / "calibration.json").write_text(json.dumps(json_safe(fitted), indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    return result
