import json
import math

import pandas as pd
import pytest

from hemaflow.leaderboard import best_of, build_leaderboard, headline, write_leaderboard


def scores(val_bacc, val_acc, test_bacc=0.5, patient=None):
    m = {
        "val": {"accuracy": val_acc, "balanced_accuracy": val_bacc, "auc": 0.9, "f1": 0.8, "macro_f1": 0.7},
        "test": {"accuracy": 0.6, "balanced_accuracy": test_bacc, "auc": 0.85, "f1": 0.75, "macro_f1": 0.65},
    }
    if patient is not None:
        m["patient"] = {"threshold": 0.4, "val": {"accuracy": 1.0}, "test": {"accuracy": patient}}
    return m


def params(model, lr):
    return {"model": model, "optimizer": "adam", "lr": lr, "lr_policy": "constant", "batch_size": 64, "dropout": 0.25}


ENTRIES = {
    # resumed once: totals over both legs
    "m1_lr1e-3": (params("model_1", 1e-3), scores(0.70, 0.90, patient=0.8),
                  {"status": "ok", "epochs_run": 12, "best_epoch": 7, "wall_seconds": 31.5,
                   "legs": [{"first_epoch": 1, "epochs": 5, "wall_seconds": 12.0},
                            {"first_epoch": 6, "epochs": 7, "wall_seconds": 19.5}]}),
    "m2_lr1e-3": (params("model_2", 1e-3), scores(0.85, 0.80, test_bacc=0.81, patient=0.9),
                  {"status": "ok", "epochs_run": 9, "best_epoch": 4, "wall_seconds": 20.0,
                   "legs": [{"first_epoch": 1, "epochs": 9, "wall_seconds": 20.0}]}),
    "m1_lr3e-4": (params("model_1", 3e-4), scores(0.70, 0.95, patient=0.7), None),
    "svm_rbf": ({"model": "svm_rbf"}, scores(0.60, 0.99, patient=0.6), {"wall_seconds": 4.0}),
}


def test_rows_sorted_by_the_chosen_metric_ties_by_id():
    board = build_leaderboard(ENTRIES, "balanced_accuracy")
    # 0.85 first; the two 0.70s in id order; the baseline last
    assert list(board["combo"]) == ["m2_lr1e-3", "m1_lr1e-3", "m1_lr3e-4", "svm_rbf"]
    assert list(board["rank"]) == [1, 2, 3, 4]
    assert list(build_leaderboard(ENTRIES, "accuracy")["combo"]) == ["svm_rbf", "m1_lr3e-4", "m1_lr1e-3", "m2_lr1e-3"]


def test_columns_carry_params_training_and_metrics():
    board = build_leaderboard(ENTRIES, "balanced_accuracy").set_index("combo")
    for col in ["model", "optimizer", "lr", "lr_policy", "batch_size", "dropout", "epochs", "wall_seconds",
                "val_auc", "test_macro_f1", "patient_test_accuracy"]:
        assert col in board.columns, col
    assert board.loc["m2_lr1e-3", "test_balanced_accuracy"] == 0.81
    assert board.loc["m2_lr1e-3", "patient_test_accuracy"] == 0.9
    assert board.loc["m1_lr1e-3", "wall_seconds"] == 31.5 and board.loc["m1_lr1e-3", "epochs"] == 12
    assert pd.isna(board.loc["m1_lr3e-4", "epochs"])  # no train.json
    assert pd.isna(board.loc["svm_rbf", "lr"])


def test_training_totals_and_legs():
    board = build_leaderboard(ENTRIES, "balanced_accuracy").set_index("combo")
    assert board.loc["m1_lr1e-3", ["epochs", "wall_seconds", "legs"]].tolist() == [12, 31.5, 2]
    assert board.loc["m2_lr1e-3", "legs"] == 1
    assert pd.isna(board.loc["svm_rbf", "legs"]) and pd.isna(board.loc["m1_lr3e-4", "legs"])


def test_diverged_combinations_are_marked_and_ranked_after_the_others(tmp_path):
    # A collapsed model predicting the majority class: top accuracy, yet it must not win.
    collapsed = (params("model_2", 1e-2), scores(0.5, 0.99),
                 {"status": "diverged", "diverged_because": "constant validation predictions", "epochs_run": 6,
                  "best_epoch": 1, "wall_seconds": 9.0, "legs": [{"first_epoch": 1, "epochs": 6, "wall_seconds": 9.0}]})
    entries = dict(ENTRIES, m2_lr1e_2=collapsed)
    for rank_by in ("accuracy", "balanced_accuracy"):
        board = build_leaderboard(entries, rank_by)
        assert board["combo"].iloc[-1] == "m2_lr1e_2" and board["status"].iloc[-1] == "diverged"
        assert set(board["status"].iloc[:-1].dropna()) == {"ok"}
    assert headline(build_leaderboard(entries, "accuracy"), "accuracy")["best"] == "svm_rbf"
    write_leaderboard(build_leaderboard(entries, "accuracy"), tmp_path / "lb.csv", tmp_path / "lb.md")
    last = (tmp_path / "lb.md").read_text().splitlines()[-1]
    assert "m2_lr1e_2" in last and "diverged" in last


def test_missing_metric_sorts_last_and_unknown_metric_is_reported():
    entries = dict(ENTRIES, broken=(params("model_1", 1e-2), {"val": {"accuracy": 0.5}, "test": {}}, None))
    assert build_leaderboard(entries, "balanced_accuracy")["combo"].iloc[-1] == "broken"
    with pytest.raises(ValueError, match="evaluate.rank_by"):
        build_leaderboard(ENTRIES, "kappa")


def test_headline_names_the_best_combo():
    board = build_leaderboard(ENTRIES, "balanced_accuracy")
    h = headline(board, "balanced_accuracy")
    assert h["best"] == "m2_lr1e-3" and h["n_combos"] == 4 and h["rank_by"] == "balanced_accuracy"
    assert h["params"]["model"] == "model_2" and h["params"]["lr"] == 1e-3
    assert h["val"]["balanced_accuracy"] == 0.85 and h["test"]["balanced_accuracy"] == 0.81
    assert h["patient"]["test_accuracy"] == 0.9
    # every combination's figures, for `dvc metrics show`
    assert set(h["combos"]) == set(ENTRIES)
    assert h["combos"]["m2_lr1e-3"] == {"val_balanced_accuracy": 0.85, "test_balanced_accuracy": 0.81,
                                        "test_auc": 0.85, "patient_test_accuracy": 0.9}
    json.dumps(h, allow_nan=False)  # strict JSON for DVC


def test_headline_without_patient_level_or_params():
    entries = {"svm_rbf": ({"model": "svm_rbf"}, scores(0.6, 0.6), None)}
    h = headline(build_leaderboard(entries, "balanced_accuracy"), "balanced_accuracy")
    assert "patient" not in h and h["params"] == {"model": "svm_rbf", "inputs": "image"}


def test_write_leaderboard(tmp_path):
    board = build_leaderboard(ENTRIES, "balanced_accuracy")
    write_leaderboard(board, tmp_path / "lb.csv", tmp_path / "md" / "lb.md")
    back = pd.read_csv(tmp_path / "lb.csv")
    assert list(back["combo"]) == list(board["combo"])
    assert math.isclose(back["val_balanced_accuracy"].iloc[0], 0.85)
    md = (tmp_path / "md" / "lb.md").read_text().splitlines()
    first, baseline = md[2].split("|"), md[-1].split("|")
    columns = [c.strip() for c in md[0].split("|")]
    # whole numbers stay whole (also next to the baseline's empty cells), small learning rates readable
    assert first[columns.index("batch_size")].strip() == "64"
    assert first[columns.index("lr")].strip() == "0.001"
    assert baseline[columns.index("batch_size")].strip() in ("", "<NA>")
    md = (tmp_path / "md" / "lb.md").read_text()
    assert md.startswith("|") and "m2_lr1e-3" in md and "0.8500" in md


def test_inputs_column_and_patient_level_figures_set_image_and_fused_side_by_side():
    fused = {**params("model_2", 1e-3), "inputs": "image+cbc"}
    patient = scores(0.80, 0.8, patient=1.0)
    patient["patient"]["test"].update(balanced_accuracy=1.0, auc=1.0)
    board = build_leaderboard(dict(ENTRIES, **{"m2_lr1e-3_cbc": (fused, patient, None)}), "balanced_accuracy")
    board = board.set_index("combo")
    assert board.loc["m2_lr1e-3_cbc", "inputs"] == "image+cbc"
    assert (board.drop(index="m2_lr1e-3_cbc")["inputs"] == "image").all()  # today's combos and the SVM
    assert board.loc["m2_lr1e-3_cbc", "patient_test_balanced_accuracy"] == 1.0
    assert board.loc["m2_lr1e-3_cbc", "patient_test_auc"] == 1.0


def test_best_of_follows_the_ranking_not_the_alphabetical_combos_map():
    # model_4 ranks first although model_1 sorts first: the keys of `combos` are alphabetical in
    # metrics.json (json.dump sort_keys, as DVC shows them), so they cannot carry the order
    entries = {c: ({"model": c}, {"val": {"auc": auc}}, None)
               for c, auc in [("model_1", 0.7), ("model_4", 0.9), ("svm_rbf", 0.95), ("model_2", 0.8)]}
    h = json.loads(json.dumps(headline(build_leaderboard(entries, "auc"), "auc"), sort_keys=True))
    assert list(h["combos"]) == ["model_1", "model_2", "model_4", "svm_rbf"]
    assert h["ranking"] == ["svm_rbf", "model_4", "model_2", "model_1"]
    assert best_of(h, ["model_1", "model_2", "model_4"]) == "model_4"  # the SVM takes no image
    assert best_of(h, ["model_1", "model_2"]) == "model_2"
    with pytest.raises(ValueError, match="none of the ranked"):
        best_of(h, [])
    with pytest.raises(ValueError, match="no ranking.*rerun the leaderboard"):
        best_of({k: v for k, v in h.items() if k != "ranking"}, ["model_1"])
