"""The model card prints what the run wrote: each figure traced to its input."""

from __future__ import annotations

import copy

import pandas as pd

from hemaflow.evaluate.model_card import INTENDED_USE, model_card


def _inputs():
    split = {"accuracy": 0.91234, "balanced_accuracy": 0.90111, "auc": 0.97777, "f1": 0.93333, "macro_f1": 0.9,
             "ci": {"confidence": 0.95, "n_resamples": 1000, "resampled": "patients",
                    "metrics": {"accuracy": [0.8711, 0.9488], "auc": [None, None]}},
             "calibration": {"brier": 0.0712, "ece": 0.0421, "ece_bins": 15, "binning": "equal-width", "temperature": None}}  # fmt: skip
    test = {**copy.deepcopy(split), "accuracy": 0.87654}
    patient_split = {"n_patients": 8, "accuracy": 1.0, "sensitivity": 1.0, "specificity": 1.0,
                     "balanced_accuracy": 1.0, "auc": 1.0, "ci": {"wilson": {"accuracy": [0.6756, 1.0]}}}  # fmt: skip
    return dict(
        headline={"best": "model_7_x", "rank_by": "balanced_accuracy", "params": {"model": "model_7", "lr": 0.001}},
        evaluation={"train": {}, "val": split, "test": test,
                    "patient": {"threshold": 0.48123, "threshold_chosen_on": "val", "positive_class": "all",
                                "val": patient_split, "test": {**patient_split, "n_patients": 9}}},
        train_info={"epochs_run": 16, "best_epoch": 11, "status": "ok", "wall_seconds": 104.2, "device": "CPU:0",
                    "precision": "float32", "threads": 1, "weights": "none"},
        preprocess={"preprocess": {"size": 48, "filter": "none"}, "classes": ["hem", "all"],
                    "class_descriptions": {"all": "leukaemic blast"}},
        ingest={"files": 476, "status": {"ok": 464, "quarantined": 3, "skipped": 9}, "patients": 26,
                "classes": {"all": 296, "hem": 168}, "duplicate_groups": 2, "duplicate_files": 5},
        split_summary=pd.DataFrame({"split": ["train", "train", "val", "test"], "label": ["all", "hem", "all", "all"],
                                    "patients": [8, 4, 6, 9], "cells": [144, 76, 116, 128]}),
        split_notes="one patient moved to train: its cells straddled the folds\n",
        params={"seed": 42, "data": {"name": "cnmc", "adapter": "cnmc"}, "train": {"max_epochs": 20, "patience": 5}},
        provenance={"library code of train.py": "ab" * 32},
    )


def test_each_figure_of_the_card_comes_from_its_input():
    card = model_card(**_inputs())
    assert card.startswith("# Model card: model_7_x")
    assert INTENDED_USE in card and "synthetic replica" not in card
    assert "| accuracy | 0.912 (0.871–0.949) | 0.877 (0.871–0.949) |" in card  # figure and its interval
    assert "| auc | 0.978 | 0.978 |" in card  # an undefined interval prints the figure alone
    assert "95% bootstrap over patients (1000 resamples)" in card
    assert "reaches 0.4812, chosen on the val patients" in card
    assert "| patients | 8 | 9 |" in card and "1.000 (0.676–1.000, Wilson)" in card
    assert "| train | 12 | 220 |" in card and "| test | 9 | 128 |" in card  # summed over labels
    assert "- one patient moved to train: its cells straddled the folds" in card
    assert "| exact-duplicate groups | 2 (5 files) |" in card and "| quarantined | 3 |" in card
    assert "all (leukaemic blast), hem" not in card and "hem, all (leukaemic blast)" in card
    assert "| epochs run (best) | 16 (11) |" in card and "| max epochs, patience | 20, 5 |" in card
    assert "| val | 0.071 | 0.042 | n/a |" in card
    assert "| library code of train.py | " + "ab" * 32 + " |" in card


def test_the_card_changes_with_the_run_and_says_what_is_missing():
    inputs = _inputs()
    inputs["params"]["data"]["adapter"] = "synthetic"
    inputs["evaluation"]["patient"] = {"threshold": None}
    inputs["evaluation"]["val"].pop("calibration")
    inputs["evaluation"]["test"].pop("calibration")
    inputs["split_notes"] = ""
    card = model_card(**inputs)
    assert "synthetic replica" in card
    assert "No patient-level figures" in card and "Not computed in this run." in card
    assert "The split recorded no caveats." in card
