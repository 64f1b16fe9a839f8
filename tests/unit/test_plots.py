import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from hemaflow import metrics, plots


def assert_png(path):
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100
    assert plt.get_fignums() == []  # every figure closed


def test_training_curves(tmp_path):
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "loss": [0.9, 0.5, 0.3, 0.2], "val_loss": [1.0, 0.6, 0.5, 0.7],
                            "accuracy": [0.5, 0.7, 0.8, 0.9], "val_accuracy": [0.5, 0.6, 0.7, 0.65], "lr": 1e-3})
    plots.training_curves(history, 3, tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")


def test_confusion_and_roc(tmp_path):
    y = np.array([0, 0, 1, 1, 2, 2])
    proba = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.5, 0.1, 0.4]])
    plots.confusion_matrix(metrics.confusion_table(y, proba.argmax(1), ["a", "b", "c"]), tmp_path / "cm.png")
    plots.roc_curves(metrics.roc_table(y, proba, ["a", "b", "c"]), tmp_path / "roc.png")
    assert_png(tmp_path / "cm.png")
    assert_png(tmp_path / "roc.png")


def test_roc_of_a_single_class_split_still_draws(tmp_path):
    plots.roc_curves(metrics.roc_table([1, 1], [0.2, 0.9], ["hem", "all"]), tmp_path / "roc.png")
    assert_png(tmp_path / "roc.png")


def test_patient_diagnosis(tmp_path):
    patients = pd.DataFrame({"patient_id": list("ABCDEF"), "split": ["train", "train", "val", "val", "test", "test"],
                             "label": [1, 0, 1, 0, 1, 0], "frac_positive": [0.9, 0.2, 0.7, 0.4, 0.6, 0.6]})
    plots.patient_diagnosis(patients, 0.55, tmp_path / "p.png")
    assert_png(tmp_path / "p.png")


def test_leaderboard_chart(tmp_path):
    board = pd.DataFrame({"combo": ["b", "a", "svm"], "val_balanced_accuracy": [0.9, 0.8, np.nan],
                          "test_balanced_accuracy": [0.85, 0.7, 0.6]})
    plots.leaderboard_chart(board, "balanced_accuracy", tmp_path / "lb.png")
    assert_png(tmp_path / "lb.png")
