"""What each figure draws, read back from the Figure the plot function returns."""

import matplotlib.pyplot as plt
from matplotlib.container import BarContainer, ErrorbarContainer
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hemaflow.evaluate import metrics
from hemaflow import plots


def saved(path, fig):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == tuple(round(v * 100) for v in fig.get_size_inches())  # dpi 100, not clipped
    assert plt.get_fignums() == []  # every figure closed


def legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_training_curves_draw_both_series_and_the_best_epoch(tmp_path):
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "loss": [0.9, 0.5, 0.3, 0.2], "val_loss": [1.0, 0.6, 0.5, 0.7],
                            "accuracy": [0.5, 0.7, 0.8, 0.9], "val_accuracy": [0.5, 0.6, 0.7, 0.65], "lr": 1e-3})
    fig = plots.training_curves(history, 3, tmp_path / "curves.png")
    saved(tmp_path / "curves.png", fig)
    loss, acc = fig.axes
    assert (loss.get_ylabel(), acc.get_ylabel(), acc.get_xlabel()) == ("loss", "accuracy", "epoch")
    assert loss.get_yscale() == "log" and loss.get_title() == "training curves"
    for ax, cols in ((loss, ["loss", "val_loss"]), (acc, ["accuracy", "val_accuracy"])):
        train, val, best = ax.get_lines()
        np.testing.assert_array_equal(train.get_xdata(), history["epoch"])
        np.testing.assert_array_equal(train.get_ydata(), history[cols[0]])
        np.testing.assert_array_equal(val.get_ydata(), history[cols[1]])
        assert list(best.get_xdata()) == [3, 3] and best.get_linestyle() == "--"
        assert legend(ax) == ["train", "val", "best epoch 3"]


def test_confusion_matrix_shows_the_counts_in_class_order(tmp_path):
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 2, 2])
    fig = plots.confusion_matrix(metrics.confusion_table(y, pred, ["a", "b", "c"]), tmp_path / "cm.png", title="val")
    saved(tmp_path / "cm.png", fig)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), [[1, 2, 0], [0, 1, 1], [0, 0, 1]])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert ax.get_title() == "val (acc = 50.00%)"  # 3 of 6 on the diagonal


def test_roc_curves_one_line_per_class_with_its_auc(tmp_path):
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.5, 0.1, 0.4]])
    roc = metrics.roc_table(y, proba, ["a", "b", "c"])
    fig = plots.roc_curves(roc, tmp_path / "roc.png", title="test ROC")
    saved(tmp_path / "roc.png", fig)
    ax = fig.axes[0]
    *curves, chance = ax.get_lines()
    assert len(curves) == 3 and list(chance.get_xdata()) == [0, 1] and list(chance.get_ydata()) == [0, 1]
    a = roc[roc["class"] == "a"]
    np.testing.assert_array_equal(curves[0].get_xdata(), a["fpr"])
    np.testing.assert_array_equal(curves[0].get_ydata(), a["tpr"])
    # class a: positives 0.7, 0.3 against negatives 0.1, 0.2, 0.1, 0.5 -> 7 of 8 pairs
    assert legend(ax)[0] == "a (AUC = 0.875)"
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("false positive rate", "true positive rate", "test ROC")


def test_roc_of_a_single_class_split_draws_only_the_chance_line(tmp_path):
    fig = plots.roc_curves(metrics.roc_table([1, 1], [0.2, 0.9], ["hem", "all"]), tmp_path / "roc.png")
    saved(tmp_path / "roc.png", fig)
    assert len(fig.axes[0].get_lines()) == 1 and fig.axes[0].get_legend() is None


PATIENTS = pd.DataFrame({"patient_id": list("ABCDEF"), "split": ["train", "train", "val", "val", "test", "test"],
                         "label": [1, 0, 1, 0, 1, 0], "frac_positive": [0.9, 0.2, 0.7, 0.4, 0.6, 0.6]})


def test_patient_diagnosis_points_by_split_and_the_threshold(tmp_path):
    fig = plots.patient_diagnosis(PATIENTS, 0.55, tmp_path / "p.png")
    saved(tmp_path / "p.png", fig)
    ax = fig.axes[0]
    negative, positive = ax.collections
    neg, pos = negative.get_offsets(), positive.get_offsets()
    np.testing.assert_allclose(pos[:, 1], [0.9, 0.7, 0.6])
    np.testing.assert_allclose(neg[:, 1], [0.2, 0.4, 0.6])
    assert np.round(pos[:, 0]).tolist() == [0, 1, 2]  # train, val, test
    (line,) = ax.get_lines()
    assert list(line.get_ydata()) == [0.55, 0.55]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["train", "val", "test"]
    assert legend(ax) == ["negative", "positive", "threshold 0.550 (val)"]
    assert ax.get_ylabel() == "fraction of cells predicted positive"


def test_without_patients_the_figure_is_the_reason_full_size(tmp_path):
    note = "no patient ids: patient-level diagnosis not computed"
    fig = plots.patient_diagnosis(PATIENTS.iloc[:0], None, tmp_path / "p.png", note=note)
    saved(tmp_path / "p.png", fig)
    ax = fig.axes[0]
    assert not ax.axison and len(ax.collections) == 0 and len(ax.get_lines()) == 0
    assert " ".join(t.get_text() for t in ax.texts).replace("\n", " ") == note
    assert fig.get_size_inches()[0] >= 6  # today's empty figure is 1.5 inches wide, clipped


def test_with_patients_but_no_threshold_the_note_is_under_the_title(tmp_path):
    note = "the validation split has patients of one diagnosis only"
    fig = plots.patient_diagnosis(PATIENTS, None, tmp_path / "p.png", note=note)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 0 and len(ax.collections) == 2
    assert note in ax.get_title().replace("\n", " ")


def test_leaderboard_chart_best_on_top_missing_as_zero(tmp_path):
    # test figures of other rows are never drawn (tests/unit/test_leaderboard.py: intervals, the selected one's test)
    board = pd.DataFrame({"combo": ["b", "a", "svm"], "val_balanced_accuracy": [0.9, 0.8, np.nan],
                          "test_balanced_accuracy": [0.85, 0.7, 0.6]})
    fig = plots.leaderboard_chart(board, "val_balanced_accuracy", tmp_path / "lb.png")
    saved(tmp_path / "lb.png", fig)
    ax = fig.axes[0]
    (val,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_width() for b in val] == [0.0, 0.8, 0.9]  # drawn bottom-up: best last, on top
    (test,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert list(test.lines[0].get_xdata()) == pytest.approx([0.85])  # the selected (top) row's alone
    assert [t.get_text() for t in ax.get_yticklabels()] == ["svm", "a", "b"]
    assert ax.get_xlabel() == "val balanced_accuracy"
    assert ax.get_title() == "leaderboard (ranked by val balanced_accuracy)"
