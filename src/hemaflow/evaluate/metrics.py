"""Cell-level and patient-level metrics: pure functions on arrays and DataFrames."""

# Class indices follow the sources manifest (`label_index`); `proba` has one column per
# class in index order. Binary tasks treat class index 1 as positive unless told otherwise
# (a binary model's sigmoid output is P(class index 1)).

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def _as_proba(proba, n_classes: int) -> np.ndarray:
    """Accept (n, k) probabilities or, for binary tasks, the 1-D P(class 1)."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1 and n_classes == 2:
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"proba has shape {p.shape}; expected (n, {n_classes}) for classes")
    return p


def _auc(y_true, proba, positive: int) -> tuple[float, list[str]]:
    """Binary AUC of class `positive`, or macro one-vs-rest over the classes that can be scored."""
    k = proba.shape[1]
    classes = [positive] if k == 2 else range(k)
    scores, notes = [], []
    for c in classes:
        is_c = y_true == c
        if is_c.all() or not is_c.any():
            notes.append(f"AUC for class {c} undefined: it is {'every' if is_c.all() else 'no'} sample")
            continue
        scores.append(skm.roc_auc_score(is_c, proba[:, c]))
    return (float(np.mean(scores)) if scores else float("nan")), notes


def cell_metrics(y_true, proba, class_names, *, positive: int = 1) -> dict:
    """Accuracy, AUC, precision/recall/F1, balanced accuracy, macro-F1, per-class report.

    Binary: precision/recall/F1 are of class index `positive`, with sensitivity and
    specificity; multi-class: macro averages and macro one-vs-rest AUC over the classes
    present (the absent ones are listed in `notes`).
    """
    names = list(class_names)
    k = len(names)
    y_true = np.asarray(y_true, dtype=int)
    proba = _as_proba(proba, k)
    y_pred = proba.argmax(axis=1)
    labels = list(range(k))
    auc, notes = _auc(y_true, proba, positive)
    average = dict(average="binary", pos_label=positive) if k == 2 else dict(average="macro")
    prf = dict(labels=labels, zero_division=0, **average)
    out = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(_balanced_accuracy(y_true, y_pred, labels)),
        "auc": auc,
        "precision": float(skm.precision_score(y_true, y_pred, **prf)),
        "recall": float(skm.recall_score(y_true, y_pred, **prf)),
        "f1": float(skm.f1_score(y_true, y_pred, **prf)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
    }
    if k == 2:
        recalls = skm.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        out["sensitivity"] = float(recalls[positive])
        out["specificity"] = float(recalls[1 - positive])
    out["per_class"] = skm.classification_report(
        y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0
    )
    out["notes"] = notes
    return out


def _balanced_accuracy(y_true, y_pred, labels) -> float:
    """Mean recall over the classes present in y_true (sklearn's definition, without its warning)."""
    present = [c for c in labels if (y_true == c).any()]
    if not present:
        return float("nan")
    recalls = skm.recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    return float(np.mean(recalls))


def confusion_table(y_true, y_pred, class_names) -> pd.DataFrame:
    """Long-form confusion counts (actual, predicted, count), every class pair included.

    DVC's `confusion` template counts rows itself, so for DVC write one row per sample
    (actual, predicted) instead — `evaluate` does.
    """
    names = list(class_names)
    cm = skm.confusion_matrix(y_true, y_pred, labels=list(range(len(names))))
    actual, predicted = np.meshgrid(names, names, indexing="ij")
    return pd.DataFrame({"actual": actual.ravel(), "predicted": predicted.ravel(), "count": cm.ravel()})


def roc_table(y_true, proba, class_names, *, positive: int = 1) -> pd.DataFrame:
    """ROC points (class, fpr, tpr, threshold): the positive class if binary, else one-vs-rest per class."""
    names = list(class_names)
    y_true = np.asarray(y_true, dtype=int)
    proba = _as_proba(proba, len(names))
    classes = [positive] if len(names) == 2 else range(len(names))
    parts = []
    for c in classes:
        is_c = y_true == c
        if is_c.all() or not is_c.any():
            continue
        fpr, tpr, thr = skm.roc_curve(is_c, proba[:, c])
        parts.append(pd.DataFrame({"class": names[c], "fpr": fpr, "tpr": tpr, "threshold": thr}))
    if not parts:
        return pd.DataFrame({"class": pd.Series(dtype=str), "fpr": [], "tpr": [], "threshold": []})
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------- patient level


def patient_fractions(cells: pd.DataFrame) -> pd.DataFrame:
    """Per patient: label (1 = positive diagnosis), n_cells and the fraction of cells predicted positive.

    `cells` has patient_id, y_true, y_pred with 1 = positive class. C-NMC labels every cell
    with its patient's diagnosis, so a patient whose cells disagree is an input error.
    """
    g = cells.groupby("patient_id", sort=True)
    out = pd.DataFrame(
        {
            "label": g["y_true"].max().astype(int),
            "n_cells": g.size(),
            "frac_positive": g["y_pred"].mean().astype(float),
        }
    )
    mixed = g["y_true"].nunique() > 1
    if mixed.any():
        raise ValueError(
            f"patients with cells of both labels: {sorted(mixed.index[mixed])[:10]}; "
            "patient-level diagnosis needs one label per patient (check patient_id in sources.parquet)"
        )
    return out.reset_index()


def choose_threshold(val_patients: pd.DataFrame) -> float:
    """Positive-cell-fraction threshold (positive iff frac >= t) maximising balanced accuracy.

    Uses the validation patients only: seed 000 (Appendix E) picked its threshold on the
    test patients it then reported, which overstates patient-level accuracy. Every t in
    [0, 1] between two neighbouring observed fractions gives the same predictions, so the
    optimum is a set of intervals; we return the midpoint of the widest optimal interval
    (the lowest one on ties), the threshold with the largest margin on both sides.
    """
    label = val_patients["label"].to_numpy(dtype=int)
    frac = val_patients["frac_positive"].to_numpy(dtype=float)
    if len(np.unique(label)) < 2:
        raise ValueError(
            "the validation split needs patients of both diagnoses to choose a patient-level "
            f"threshold; it has labels {sorted(set(label.tolist()))} (check split.val_fold / split.ratios)"
        )
    u = np.unique(frac)
    # interval i is (lo[i], hi[i]]: t there makes positive exactly the fractions >= hi[i]
    lo = np.concatenate([[0.0], u])
    hi = np.concatenate([u, [1.0]])
    keep = hi > lo
    keep[0] = True  # [0, u_0]: everyone positive, valid even when u_0 == 0
    lo, hi = lo[keep], hi[keep]
    bacc = np.array([_bacc(label, frac >= h) for h in hi])
    best = np.isclose(bacc, bacc.max())
    # merge neighbouring optimal intervals into runs, then take the widest run
    runs, start = [], None
    for i, b in enumerate(best):
        if b and start is None:
            start = i
        if start is not None and (not b or i == len(best) - 1):
            end = i if b else i - 1
            runs.append((lo[start], hi[end]))
            start = None
    a, b = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
    return float((a + b) / 2)


def _bacc(label: np.ndarray, predicted: np.ndarray) -> float:
    sens = predicted[label == 1].mean()
    spec = (~predicted[label == 0]).mean()
    return float((sens + spec) / 2)


def patient_metrics(patients: pd.DataFrame, threshold: float) -> dict:
    """Diagnosis metrics of `frac_positive >= threshold`; AUC of frac_positive itself."""
    label = patients["label"].to_numpy(dtype=int)
    frac = patients["frac_positive"].to_numpy(dtype=float)
    predicted = (frac >= threshold).astype(int)
    pos, neg = label == 1, label == 0
    sens = float(predicted[pos].mean()) if pos.any() else float("nan")
    spec = float(1 - predicted[neg].mean()) if neg.any() else float("nan")
    both = pos.any() and neg.any()
    notes = [] if both else [
        f"{'no patients' if not len(label) else 'patients of one diagnosis only'}: "
        "AUC and balanced accuracy undefined"
    ]
    return {
        "n_patients": int(len(label)),
        "n_positive": int(pos.sum()),
        "accuracy": float((predicted == label).mean()) if len(label) else float("nan"),
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2 if both else float("nan"),
        "auc": float(skm.roc_auc_score(label, frac)) if both else float("nan"),
        "notes": notes,
    }
