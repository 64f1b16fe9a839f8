import json
import math

import matplotlib.container as mc
import pandas as pd
import pytest

from hemaflow import plots
from hemaflow.evaluate.leaderboard import (EVERY_TEST, build_leaderboard, choose_ranking, for_reporting,
                                           headline, write_leaderboard)
from hemaflow.models_io import best_of


def ci(**pairs):
    """A split's "ci" in the format evaluate writes (docs of results/evaluation/<combo>/metrics.json)."""
    return {"confidence": 0.95, "n_resamples": 1000, "seed": 7, "resampled": "patients", "metrics": pairs}


def scores(val_bacc, val_acc, test_bacc=0.5, patient=None, val_ci=None, test_ci=None, patient_val=None):
    m = {
        "val": {"accuracy": val_acc, "balanced_accuracy": val_bacc, "auc": 0.9, "f1": 0.8, "macro_f1": 0.7},
        "test": {"accuracy": 0.6, "balanced_accuracy": test_bacc, "auc": 0.85, "f1": 0.75, "macro_f1": 0.65},
    }
    if val_ci is not None:
        m["val"]["ci"] = ci(balanced_accuracy=list(val_ci))
        m["val"]["calibration"] = {"brier": 0.1, "ece": 0.05, "ece_bins": 15, "binning": "equal width", "temperature": None}
    if test_ci is not None:
        m["test"]["ci"] = ci(balanced_accuracy=list(test_ci))
    if patient is not None:
        m["patient"] = {"threshold": 0.4, "val": {"accuracy": 1.0, "balanced_accuracy": patient_val or 1.0},
                        "test": {"accuracy": patient}}
    return m


def params(model, lr, inputs=None):
    p = {"model": model, "optimizer": "adam", "lr": lr, "lr_policy": "constant", "batch_size": 64, "dropout": 0.25}
    return p | ({"inputs": inputs} if inputs else {})


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

# The same four with intervals, as evaluate writes them: m1_lr1e-3 overlaps the best's, the SVM
# lies wholly below, m1_lr3e-4's is undefined (e.g. an AUC with one class in validation).
WITH_CI = {
    "m1_lr1e-3": (ENTRIES["m1_lr1e-3"][0], scores(0.70, 0.90, patient=0.8, val_ci=(0.55, 0.80)), None),
    "m2_lr1e-3": (ENTRIES["m2_lr1e-3"][0], scores(0.85, 0.80, test_bacc=0.81, patient=0.9, val_ci=(0.75, 0.93),
                                                  test_ci=(0.70, 0.90)), None),
    "m1_lr3e-4": (ENTRIES["m1_lr3e-4"][0], scores(0.70, 0.95, patient=0.7, val_ci=(None, None)), None),
    "svm_rbf": ({"model": "svm_rbf"}, scores(0.60, 0.99, patient=0.6, val_ci=(0.50, 0.70)), None),
}


def test_rows_sorted_by_the_chosen_metric_ties_by_id():
    board = build_leaderboard(ENTRIES, "balanced_accuracy")
    # 0.85 first; the two 0.70s in id order; the baseline last
    assert list(board["combo"]) == ["m2_lr1e-3", "m1_lr1e-3", "m1_lr3e-4", "svm_rbf"]
    assert list(board["rank"]) == [1, 2, 3, 4]
    assert list(build_leaderboard(ENTRIES, "accuracy")["combo"]) == ["svm_rbf", "m1_lr3e-4", "m1_lr1e-3", "m2_lr1e-3"]


def test_the_test_split_never_changes_the_order():
    # a combination that is worst on validation and best on test stays last
    flipped = {c: (p, dict(s, test={k: 1.0 - (v if isinstance(v, float) else 0) for k, v in s["test"].items()}), i)
               for c, (p, s, i) in ENTRIES.items()}
    flipped["svm_rbf"][1]["test"]["balanced_accuracy"] = 1.0
    assert list(build_leaderboard(flipped, "balanced_accuracy")["combo"]) == list(build_leaderboard(ENTRIES, "balanced_accuracy")["combo"])


def test_columns_carry_params_training_and_metrics():
    board = build_leaderboard(ENTRIES, "balanced_accuracy").set_index("combo")
    for col in ["model", "optimizer", "lr", "lr_policy", "batch_size", "dropout", "epochs", "wall_seconds",
                "val_auc", "test_macro_f1", "patient_test_accuracy", "patient_val_accuracy", "vs_best"]:
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
    assert headline(build_leaderboard(entries, "accuracy"), "accuracy", entries)["best"] == "svm_rbf"
    write_leaderboard(build_leaderboard(entries, "accuracy"), "accuracy", tmp_path / "lb.csv", tmp_path / "lb.md")
    last = (tmp_path / "lb.md").read_text().splitlines()[-1]
    assert "m2_lr1e_2" in last and "diverged" in last


def test_missing_metric_sorts_last_and_unknown_metric_is_reported():
    entries = dict(ENTRIES, broken=(params("model_1", 1e-2), {"val": {"accuracy": 0.5}, "test": {}}, None))
    assert build_leaderboard(entries, "balanced_accuracy")["combo"].iloc[-1] == "broken"
    with pytest.raises(ValueError, match="evaluate.rank_by"):
        build_leaderboard(ENTRIES, "kappa")


def test_headline_names_the_best_combo_and_keeps_only_validation_figures_per_combo():
    board = build_leaderboard(ENTRIES, "balanced_accuracy")
    h = headline(board, "balanced_accuracy", ENTRIES)
    assert h["best"] == "m2_lr1e-3" and h["n_combos"] == 4 and h["rank_by"] == "balanced_accuracy"
    assert h["ranked_on"] == "val_balanced_accuracy" and h["tie_break"] is None
    assert h["params"]["model"] == "model_2" and h["params"]["lr"] == 1e-3
    assert h["val"]["balanced_accuracy"] == 0.85 and h["test"]["balanced_accuracy"] == 0.81
    assert h["patient"]["threshold"] == 0.4 and h["patient"]["test"]["accuracy"] == 0.9
    # every combination's validation figures, for `dvc metrics show`; no test figure of any
    assert set(h["combos"]) == set(ENTRIES)
    for combo, figures in h["combos"].items():
        assert not any("test" in k for k in figures), (combo, figures)
    assert h["combos"]["m1_lr1e-3"]["val_balanced_accuracy"] == 0.70
    assert h["combos"]["m1_lr1e-3"]["patient_val_accuracy"] == 1.0
    json.dumps(h, allow_nan=False)  # strict JSON for DVC


def test_headline_carries_the_selected_models_intervals_and_calibration():
    h = headline(build_leaderboard(WITH_CI, "balanced_accuracy"), "balanced_accuracy", WITH_CI)
    assert h["best"] == "m2_lr1e-3"
    assert h["val"]["ci"]["metrics"]["balanced_accuracy"] == [0.75, 0.93]
    assert h["test"]["ci"]["metrics"]["balanced_accuracy"] == [0.70, 0.90] and h["test"]["ci"]["confidence"] == 0.95
    assert h["val"]["calibration"]["ece"] == 0.05
    assert h["val"]["interval"]["balanced_accuracy"] == {"low": 0.75, "high": 0.93}  # numbers DVC can show
    assert h["not_distinguishable_from_best"] == ["m1_lr1e-3"]
    assert h["combos"]["svm_rbf"]["vs_best"] == "below"
    assert h["combos"]["m1_lr3e-4"]["val_balanced_accuracy_low"] is None  # undefined: null, strict JSON
    json.dumps(h, allow_nan=False)


def test_headline_without_patient_level_or_params():
    entries = {"svm_rbf": ({"model": "svm_rbf"}, scores(0.6, 0.6), None)}
    h = headline(build_leaderboard(entries, "balanced_accuracy"), "balanced_accuracy", entries)
    assert "patient" not in h and h["params"] == {"model": "svm_rbf", "inputs": "image"}
    skipped = {"svm_rbf": ({"model": "svm_rbf"}, dict(scores(0.6, 0.6), patient={"skipped": "no patient ids"}), None)}
    assert headline(build_leaderboard(skipped, "balanced_accuracy"), "balanced_accuracy", skipped)["patient"] == {"skipped": "no patient ids"}


def test_write_leaderboard(tmp_path):
    board = build_leaderboard(ENTRIES, "balanced_accuracy")
    write_leaderboard(board, "balanced_accuracy", tmp_path / "lb.csv", tmp_path / "md" / "lb.md")
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


def test_test_figures_only_for_the_selected_combination(tmp_path):
    board = build_leaderboard(WITH_CI, "balanced_accuracy")
    write_leaderboard(board, "balanced_accuracy", tmp_path / "lb.csv", tmp_path / "lb.md", tmp_path / EVERY_TEST)
    back = pd.read_csv(tmp_path / "lb.csv")
    tests = [c for c in back.columns if c.startswith(("test_", "patient_test_"))]
    assert {"test_balanced_accuracy", "patient_test_accuracy", "test_balanced_accuracy_low"} <= set(tests)
    assert back.loc[0, "test_balanced_accuracy"] == 0.81 and back.loc[0, "test_balanced_accuracy_high"] == 0.90
    assert back.loc[1:, tests].isna().all().all()  # no other row shows a test figure
    md = (tmp_path / "lb.md").read_text().splitlines()
    columns = [c.strip() for c in md[0].split("|")]
    cells = [[c.strip() for c in row.split("|")] for row in md[2:]]  # after the header and its rule
    assert cells[0][columns.index("test_accuracy")] == "0.6000"
    assert all(row[columns.index(c)] == "" for row in cells[1:] for c in tests)
    # the separate file: every combination's test figures, in validation order
    every = pd.read_csv(tmp_path / EVERY_TEST)
    assert list(every["combo"]) == list(board["combo"]) and every["test_accuracy"].eq(0.6).all()
    assert not any(c.startswith("val_") for c in every.columns)
    # only the ranked figure's interval columns are on the leaderboard
    assert [c for c in back.columns if c.endswith("_low")] == ["val_balanced_accuracy_low", "test_balanced_accuracy_low"]


def test_overlap_with_the_best_is_marked_and_missing_intervals_are_left_blank():
    board = build_leaderboard(WITH_CI, "balanced_accuracy").set_index("combo")
    assert board["vs_best"].to_dict() == {"m2_lr1e-3": "best", "m1_lr1e-3": "not distinguishable",
                                          "m1_lr3e-4": "", "svm_rbf": "below"}
    assert board.loc["m1_lr1e-3", ["val_balanced_accuracy_low", "val_balanced_accuracy_high"]].tolist() == [0.55, 0.80]
    # no intervals at all (an evaluate before intervals): nothing marked, nothing fails
    plain = build_leaderboard(ENTRIES, "balanced_accuracy")
    assert list(plain["vs_best"]) == ["best", "", "", ""] and plain["val_balanced_accuracy_low"].isna().all()


def test_fused_rows_rank_every_row_at_patient_level_ties_by_the_cell_metric():
    # The fused twin's cell figure is the highest (inflated: one blood count per patient), but at
    # patient level m2 is better; m1_lr1e-3 and m1_lr3e-4 tie at patient level and the cells decide.
    entries = {
        "m2": (params("model_2", 1e-3), scores(0.80, 0.8, patient=1.0, patient_val=1.0), None),
        "m2_cbc": (params("model_2", 1e-3, "image+cbc"), scores(0.99, 0.99, patient=1.0, patient_val=0.75), None),
        "m1_a": (params("model_1", 1e-3), scores(0.60, 0.8, patient=1.0, patient_val=0.9), None),
        "m1_b": (params("model_1", 3e-4), scores(0.70, 0.8, patient=1.0, patient_val=0.9), None),
    }
    board = build_leaderboard(entries, "balanced_accuracy")
    assert list(board["combo"]) == ["m2", "m1_b", "m1_a", "m2_cbc"]
    ranking = choose_ranking(board, "balanced_accuracy")
    assert ranking.column == "patient_val_balanced_accuracy" and ranking.tie_break == "val_balanced_accuracy"
    assert "fused" in ranking.rule
    # fused rows but no patients (e.g. no patient ids): the cells rank, and the rule says what that means
    no_patients = {c: (p, {k: v for k, v in s.items() if k != "patient"}, i) for c, (p, s, i) in entries.items()}
    ranking = choose_ranking(build_leaderboard(no_patients, "balanced_accuracy"), "balanced_accuracy")
    assert ranking.column == "val_balanced_accuracy" and "inflated" in ranking.rule
    # without the fused row the same data rank by the cells
    image_only = {c: e for c, e in entries.items() if c != "m2_cbc"}
    assert list(build_leaderboard(image_only, "balanced_accuracy")["combo"]) == ["m2", "m1_b", "m1_a"]
    # naming a patient metric ranks at patient level with or without fused rows
    assert list(build_leaderboard(image_only, "patient_balanced_accuracy")["combo"]) == ["m2", "m1_b", "m1_a"]
    assert list(build_leaderboard({"a": entries["m1_a"], "m2": entries["m2"]}, "patient_balanced_accuracy")["combo"]) == ["m2", "a"]


def test_patient_rank_by_without_patients_falls_back_to_the_cells_and_says_so():
    entries = {c: (p, {k: v for k, v in s.items() if k != "patient"}, i) for c, (p, s, i) in ENTRIES.items()}
    board = build_leaderboard(entries, "patient_balanced_accuracy")
    assert list(board["combo"]) == list(build_leaderboard(ENTRIES, "balanced_accuracy")["combo"])
    h = headline(board, "patient_balanced_accuracy", entries)
    assert h["ranked_on"] == "val_balanced_accuracy" and "no combination has patient-level" in h["ranking_rule"]


def test_patient_ranked_interval_comes_from_the_patient_section():
    entries = {
        "a": (params("model_1", 1e-3, "image+cbc"), scores(0.9, 0.9, patient=1.0, patient_val=1.0), None),
        "b": (params("model_2", 1e-3), scores(0.8, 0.8, patient=1.0, patient_val=0.8), None),
    }
    for combo, low in (("a", 0.7), ("b", 0.4)):
        entries[combo][1]["patient"]["val"]["ci"] = {"confidence": 0.95, "n_resamples": 1000, "resampled": "patients",
                                                   "metrics": {"balanced_accuracy": [low, 1.0]},
                                                   "wilson": {"accuracy": [0.6, 1.0]}}
    board = for_reporting(build_leaderboard(entries, "balanced_accuracy"), "balanced_accuracy")
    assert board["patient_val_balanced_accuracy_low"].tolist() == [0.7, 0.4]
    assert board["vs_best"].tolist() == ["best", "not distinguishable"]
    assert "val_balanced_accuracy_low" not in board  # the cell tie-break's interval is not the one shown


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
    h = json.loads(json.dumps(headline(build_leaderboard(entries, "auc"), "auc", entries), sort_keys=True))
    assert list(h["combos"]) == ["model_1", "model_2", "model_4", "svm_rbf"]
    assert h["ranking"] == ["svm_rbf", "model_4", "model_2", "model_1"]
    assert best_of(h, ["model_1", "model_2", "model_4"]) == "model_4"  # the SVM takes no image
    assert best_of(h, ["model_1", "model_2"]) == "model_2"
    with pytest.raises(ValueError, match="none of the ranked"):
        best_of(h, [])
    with pytest.raises(ValueError, match="no ranking.*rerun the leaderboard"):
        best_of({k: v for k, v in h.items() if k != "ranking"}, ["model_1"])


def test_best_of_agrees_with_a_patient_level_ranking():
    entries = {
        "m1": (params("model_1", 1e-3), scores(0.95, 0.9, patient=1.0, patient_val=0.7), None),
        "m1_cbc": (params("model_1", 1e-3, "image+cbc"), scores(0.99, 0.99, patient=1.0, patient_val=1.0), None),
        "m2": (params("model_2", 1e-3), scores(0.70, 0.7, patient=1.0, patient_val=0.9), None),
    }
    h = json.loads(json.dumps(headline(build_leaderboard(entries, "balanced_accuracy"), "balanced_accuracy", entries)))
    assert h["ranking"] == ["m1_cbc", "m2", "m1"] and h["best"] == "m1_cbc"
    assert best_of(h, ["m1", "m2"]) == "m2"  # the best image-only CNN at patient level, not the cells' m1


def test_chart_draws_intervals_and_the_selected_test_figure_alone(tmp_path):
    board = build_leaderboard(WITH_CI, "balanced_accuracy")
    fig = plots.leaderboard_chart(board, "val_balanced_accuracy", tmp_path / "lb.png", rule="validation cells")
    assert (tmp_path / "lb.png").stat().st_size > 5_000
    ax = fig.axes[0]
    (bars,) = [c for c in ax.containers if isinstance(c, mc.BarContainer)]
    assert [b.get_width() for b in bars] == pytest.approx([0.60, 0.70, 0.70, 0.85])  # bottom-up: best on top
    assert [t.get_text() for t in ax.get_yticklabels()] == ["svm_rbf", "m1_lr3e-4", "m1_lr1e-3", "m2_lr1e-3"]
    errors = [c for c in ax.containers if isinstance(c, mc.ErrorbarContainer)]
    val_err, test_err = errors
    segments = val_err.lines[2][0].get_segments()  # three rows with a defined interval
    assert sorted((round(s[0][0], 6), round(s[1][0], 6)) for s in segments) == [(0.5, 0.7), (0.55, 0.8), (0.75, 0.93)]
    (test_x,) = test_err.lines[0].get_xdata()
    assert test_x == pytest.approx(0.81)  # the selected one's test figure: the only test figure drawn
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "test, selected combination only" in labels
    assert ax.get_title().startswith("leaderboard (ranked by val balanced_accuracy)")
    assert fig._suptitle.get_text() == "validation cells"  # the ranking rule, in words


def test_chart_of_a_patient_ranking_writes_the_tie_break_beside_each_bar(tmp_path):
    entries = {
        "m2": (params("model_2", 1e-3), scores(0.80, 0.8, patient=1.0, patient_val=1.0), None),
        "m2_cbc": (params("model_2", 1e-3, "image+cbc"), scores(0.99, 0.99, patient=1.0, patient_val=1.0), None),
    }
    board = build_leaderboard(entries, "balanced_accuracy")
    ranking = choose_ranking(board, "balanced_accuracy")
    fig = plots.leaderboard_chart(board, ranking.column, tmp_path / "lb.png", rule=ranking.rule, tie_break=ranking.tie_break)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["1.000; ties: val cells' balanced_accuracy 0.800", "1.000; ties: val cells' balanced_accuracy 0.990"]
    assert fig.axes[0].get_xlabel() == "val patients' balanced_accuracy"


def test_chart_without_intervals(tmp_path):
    board = build_leaderboard(ENTRIES, "balanced_accuracy")
    fig = plots.leaderboard_chart(board, "val_balanced_accuracy", tmp_path / "lb.png")
    ax = fig.axes[0]
    errors = [c for c in ax.containers if isinstance(c, mc.ErrorbarContainer)]
    assert len(errors) == 1 and errors[0].lines[0].get_xdata()[0] == pytest.approx(0.81)  # only the test marker
