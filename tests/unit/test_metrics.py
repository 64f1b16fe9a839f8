import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from hemaflow.evaluate import metrics

NAMES = ["hem", "all"]  # C-NMC convention: hem = 0, all = 1 (positive)


def ten_cells():
    """6 positive and 4 negative cells: TP 5, FN 1, TN 3, FP 1."""
    y = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    p1 = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.2, 0.1, 0.1, 0.1, 0.7])
    return y, p1


def test_binary_cell_metrics_by_hand():
    y, p1 = ten_cells()
    m = metrics.cell_metrics(y, p1, NAMES)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["sensitivity"] == pytest.approx(5 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    assert m["precision"] == pytest.approx(5 / 6)  # TP / (TP + FP)
    assert m["recall"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx(5 / 6)
    # 24 positive/negative pairs: the five 0.9s beat all 4 negatives, the 0.2 beats three 0.1s
    assert m["auc"] == pytest.approx(23 / 24)
    assert m["per_class"]["all"]["support"] == 6
    assert m["per_class"]["hem"]["recall"] == pytest.approx(3 / 4)
    assert m["notes"] == []


def test_two_column_proba_and_swapped_positive_agree():
    y, p1 = ten_cells()
    m = metrics.cell_metrics(y, np.column_stack([1 - p1, p1]), NAMES)
    # the same task with the class indices swapped, the positive class now at index 0
    swapped = metrics.cell_metrics(1 - y, np.column_stack([p1, 1 - p1]), ["all", "hem"], positive=0)
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "auc"):
        assert swapped[key] == pytest.approx(m[key])


def test_binary_auc_undefined_when_one_class_absent():
    m = metrics.cell_metrics([1, 1, 1], [0.9, 0.4, 0.8], NAMES)
    assert math.isnan(m["auc"])
    assert m["notes"] and "class 1" in m["notes"][0]
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_multiclass_macro_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 1, 1, 2, 2, 2, 0, 1, 2])
    proba = rng.dirichlet(np.ones(3), size=len(y))
    m = metrics.cell_metrics(y, proba, ["a", "b", "c"])
    assert m["auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert "sensitivity" not in m
    assert m["f1"] == pytest.approx(m["macro_f1"])


def test_multiclass_auc_skips_absent_class_with_note():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]])
    m = metrics.cell_metrics(y, proba, ["a", "b", "c"])
    expected = np.mean([roc_auc_score(y == 0, proba[:, 0]), roc_auc_score(y == 1, proba[:, 1])])
    assert m["auc"] == pytest.approx(expected)
    assert any("class 2" in n for n in m["notes"])


def test_confusion_table_counts():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 2, 2]
    t = metrics.confusion_table(y_true, y_pred, ["a", "b", "c"])
    assert len(t) == 9 and t["count"].sum() == 6
    counts = t.set_index(["actual", "predicted"])["count"]
    assert counts["a", "a"] == 1 and counts["a", "b"] == 2 and counts["b", "c"] == 1
    assert counts["c", "a"] == 0


def test_roc_table_binary_is_the_positive_class():
    y, p1 = ten_cells()
    t = metrics.roc_table(y, p1, NAMES)
    assert set(t["class"]) == {"all"}
    assert (t["fpr"].iloc[-1], t["tpr"].iloc[-1]) == (1.0, 1.0)
    assert np.trapezoid(t["tpr"], t["fpr"]) == pytest.approx(23 / 24)


def test_roc_table_multiclass_one_curve_per_class():
    y = np.array([0, 1, 2, 0, 1, 2])
    proba = np.eye(3)[[0, 1, 2, 1, 1, 2]]
    assert set(metrics.roc_table(y, proba, ["a", "b", "c"])["class"]) == {"a", "b", "c"}


def test_patient_fractions():
    cells = pd.DataFrame(
        {
            "patient_id": ["P1"] * 4 + ["P2"] * 2,
            "y_true": [1, 1, 1, 1, 0, 0],
            "y_pred": [1, 0, 1, 1, 0, 1],
        }
    )
    p = metrics.patient_fractions(cells).set_index("patient_id")
    assert p.loc["P1", "label"] == 1 and p.loc["P1", "n_cells"] == 4
    assert p.loc["P1", "frac_positive"] == pytest.approx(0.75)
    assert p.loc["P2", "label"] == 0 and p.loc["P2", "frac_positive"] == pytest.approx(0.5)


def test_patient_with_mixed_labels_is_an_error():
    cells = pd.DataFrame({"patient_id": ["P1", "P1"], "y_true": [0, 1], "y_pred": [0, 0]})
    with pytest.raises(ValueError, match="P1"):
        metrics.patient_fractions(cells)


def patients(neg, pos):
    return pd.DataFrame({"label": [0] * len(neg) + [1] * len(pos), "frac_positive": list(neg) + list(pos)})


def test_threshold_is_midpoint_of_the_separating_interval():
    # any t in (0.3, 0.6] separates negatives {0.1, 0.3} from positives {0.6, 0.8}
    assert metrics.choose_threshold(patients([0.1, 0.3], [0.6, 0.8])) == pytest.approx(0.45)


def test_threshold_ties_go_to_the_widest_optimal_interval():
    # balanced accuracy 0.75 on (0.1, 0.3] and on (0.5, 0.9]; the second is wider
    assert metrics.choose_threshold(patients([0.1, 0.5], [0.3, 0.9])) == pytest.approx(0.7)


def test_threshold_is_never_zero_when_a_cut_above_zero_separates():
    # t = 0 would call the negatives (no positive cells) positive; (0, 0.2] separates
    val = patients([0.0, 0.0], [0.2])
    t = metrics.choose_threshold(val)
    assert t == pytest.approx(0.1)
    assert metrics.patient_metrics(val, t)["accuracy"] == 1.0


def test_threshold_needs_both_diagnoses():
    with pytest.raises(ValueError, match="val_fold"):
        metrics.choose_threshold(patients([], [0.4, 0.9]))


def test_patient_metrics_by_hand():
    # threshold 0.5: negatives 0.2, 0.6 -> one false positive; positives 0.4, 0.7, 0.9 -> one miss
    m = metrics.patient_metrics(patients([0.2, 0.6], [0.4, 0.7, 0.9]), 0.5)
    assert m["n_patients"] == 5 and m["n_positive"] == 3
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # pairs (pos > neg): 0.4>0.2, 0.7>both, 0.9>both -> 5 of 6
    assert m["auc"] == pytest.approx(5 / 6)
