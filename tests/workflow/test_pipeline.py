"""The default pipeline end to end on the embedded replica, and its incremental reruns."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import pandas as pd
import pytest

from hemaflow.train.grid import combos, is_fused

from harness import copy_repo, planned_jobs, snakemake, write_override

pytestmark = pytest.mark.slow


def test_data_half_leaves_every_manifest(pipeline, params):
    m = pipeline / "results/manifests"
    sources = pd.read_parquet(m / "sources.parquet")
    splits = pd.read_parquet(m / "splits.parquet")
    augmented = pd.read_parquet(m / "augmented.parquet")
    assert not (sources["status"] == "quarantined").any()  # the replica has no bad files
    skipped = sources.loc[sources["status"] == "skipped", "reason"]  # its unlabelled testing_data/, labels CSV
    assert set(skipped) == {"unlabelled", "label_file", "hidden"}  # hidden: Snakemake's .snakemake_timestamp
    assert set(splits["split"]) == {"train", "val", "test"}
    for split, n in params["augment"]["shards"].items():
        assert len(list((pipeline / "results/shards" / split).glob("*.tfrecord"))) == n
        assert (pipeline / f"results/reports/contact_sheets/{split}.png").stat().st_size > 10_000
    copies = params["augment"]["rotations"] * (2 if params["augment"]["mirror"] else 1)
    per_image = augmented.groupby("image_id").size()
    train_ids = set(splits.loc[splits["split"] == "train", "image_id"])
    assert (per_image[per_image.index.isin(train_ids)] == copies).all()
    assert (per_image[~per_image.index.isin(train_ids)] == 1).all()


def test_leaderboard_has_every_combination_and_the_best_is_well_above_chance(pipeline, params):
    board = pd.read_csv(pipeline / "results/reports/leaderboard.csv")
    expected = set(combos(params["train"], params["seed"])) | {"svm_rbf"}
    assert set(board["combo"]) == expected
    head = json.loads((pipeline / "results/reports/metrics.json").read_text())
    best = head["best"]
    metrics = json.loads((pipeline / f"results/evaluation/{best}/metrics.json").read_text())
    # held-out replica patients (the C-NMC prelim-phase layout): the test split
    assert metrics["test"]["balanced_accuracy"] >= 0.85, metrics["test"]


def test_leaderboard_ranks_on_validation_and_shows_the_test_figures_of_the_selected_one_alone(pipeline, params):
    reports = pipeline / "results/reports"
    board = pd.read_csv(reports / "leaderboard.csv")
    head = json.loads((reports / "metrics.json").read_text())
    evaluation = {c: json.loads((pipeline / f"results/evaluation/{c}/metrics.json").read_text()) for c in board["combo"]}
    assert head["best"] == board["combo"].iloc[0] and head["ranking"] == list(board["combo"])
    # the default grid has a fused twin and the replica validation patients: every row ranks at patient level
    assert any(is_fused(p) for p in combos(params["train"], params["seed"]).values())
    rank_by = params["evaluate"]["rank_by"]
    assert head["ranked_on"] == f"patient_val_{rank_by}" and head["tie_break"] == f"val_{rank_by}"
    ok = board[board["status"] != "diverged"]
    order = list(zip(ok[head["ranked_on"]], ok[head["tie_break"]]))
    assert order == sorted(order, reverse=True)
    for _, row in board.iterrows():
        assert row[head["ranked_on"]] == evaluation[row["combo"]]["patient"]["val"][rank_by]
    # test figures: the selected row's only, equal to its evaluation's; every row's in the separate file
    tests = [c for c in board.columns if c.startswith(("test_", "patient_test_"))]
    assert board.loc[1:, tests].isna().all().all()
    best = evaluation[head["best"]]
    assert board.loc[0, "test_balanced_accuracy"] == pytest.approx(best["test"]["balanced_accuracy"])
    assert head["test"]["balanced_accuracy"] == best["test"]["balanced_accuracy"]
    assert head["patient"]["test"]["accuracy"] == best["patient"]["test"]["accuracy"]
    every = pd.read_csv(reports / "test_of_every_combination.csv").set_index("combo")
    assert list(every.index) == list(board["combo"])
    for combo, figures in evaluation.items():
        assert every.loc[combo, "test_balanced_accuracy"] == pytest.approx(figures["test"]["balanced_accuracy"])
        assert not any("test" in key for key in head["combos"][combo])  # validation only per combination
        # the DVC metrics directory: each combination's metrics.json, verbatim
        assert (reports / f"metrics_by_combo/{combo}.json").read_bytes() == (
            pipeline / f"results/evaluation/{combo}/metrics.json").read_bytes()
    assert sorted(p.stem for p in (reports / "metrics_by_combo").iterdir()) == sorted(evaluation)
    # intervals, where evaluate wrote them ("ci" of each split): the ranked one and vs_best
    if "ci" in best["patient"]["val"]:
        low, high = best["patient"]["val"]["ci"]["metrics"][rank_by]
        assert (board.loc[0, f"{head['ranked_on']}_low"], board.loc[0, f"{head['ranked_on']}_high"]) == pytest.approx((low, high))
        assert head["val"]["ci"] == best["val"]["ci"] and head["test"]["ci"] == best["test"]["ci"]
        assert head["patient"]["test"]["ci"] == best["patient"]["test"]["ci"]
        assert board.loc[0, "vs_best"] == "best"
        assert set(head["not_distinguishable_from_best"]) == set(board.loc[board["vs_best"] == "not distinguishable", "combo"])

def test_default_run_explains_the_best_cnn_on_the_same_cells_for_every_n(pipeline, params):
    head = json.loads((pipeline / "results/reports/metrics.json").read_text())
    out = pipeline / "results/explain/best"
    summary = json.loads((out / "summary.json").read_text())
    # image-only CNNs: the SVM has no gradients, a fused model also needs blood counts
    cnns = [c for c, p in combos(params["train"], params["seed"]).items() if not is_fused(p)]
    ranked = pd.read_csv(pipeline / "results/reports/leaderboard.csv")["combo"]  # rank order, independent of metrics.json
    assert summary["combo"] == next(c for c in ranked if c in cnns)
    assert head["ranking"] == list(ranked)
    cells = pd.read_csv(out / "cells.csv")
    truth = pd.read_parquet(pipeline / f"results/evaluation/{summary['combo']}/predictions.parquet").set_index("image_id")
    assert set(cells["split"]) <= set(params["explain"]["splits"])
    assert (cells.groupby(["label", "kind"]).size() <= params["explain"]["cells"]).all()
    assert (cells["label"] == truth.loc[cells["image_id"], "label"].to_numpy()).all()
    # the explained class is the one evaluate predicted for that very record
    assert (cells["predicted"] == truth.loc[cells["image_id"], "predicted_label"].to_numpy()).all()
    assert all((out / "overlays" / rel).is_file() for rel in cells["overlay"])
    assert cells["superpixels"].min() >= 5  # quickshift scaled to 48 px, not the 1-3 of an unscaled kernel
    table = pd.read_csv(out / "sufficiency.csv")
    assert set(table["n"]) == {0, *params["explain"]["sufficiency"]["n"]}  # 0: the everything-hidden floor
    assert table.groupby("class")["images"].nunique().eq(1).all()  # the same cells at every n


def test_explain_is_in_the_default_plan_of_a_fresh_clone(tool_env, tmp_path):
    fresh = copy_repo(tmp_path, tool_env)
    assert planned_jobs(fresh, tool_env).get("explain") == 1


def test_rerun_with_nothing_changed_does_no_work(pipeline, tool_env):
    assert planned_jobs(pipeline, tool_env) == {}


def test_changing_augmentation_reruns_only_train_shards_and_downstream(pipeline, params, tool_env, tmp_path):
    override = write_override(tmp_path, "more_rotations.yaml", {"augment": {"rotations": params["augment"]["rotations"] + 2}})
    jobs = planned_jobs(pipeline, tool_env, "--configfile", override)
    n_models = len(combos(params["train"], params["seed"]))
    assert jobs.get("augment_shard") == params["augment"]["shards"]["train"]
    assert jobs.get("train") == n_models and jobs.get("evaluate") == n_models + 1
    assert {"synthesize", "ingest", "split"}.isdisjoint(jobs)
    assert jobs.get("contact_sheet") == 1  # the train sheet only


def test_changing_one_learning_rate_reruns_only_its_combinations(pipeline, params, tool_env, tmp_path):
    grid = dict(params["train"]["grid"])
    grid["lr"] = [grid["lr"][0], 0.0005]
    override = write_override(tmp_path, "new_lr.yaml", {"train": {"grid": grid}})
    jobs = planned_jobs(pipeline, tool_env, "--configfile", override)
    new = len(combos({**params["train"], "grid": grid}, params["seed"])) // len(grid["lr"])
    # the grid's ids change (grid); the best may change (explain, the model card)
    assert jobs == {"grid": 1, "train": new, "evaluate": new, "leaderboard": 1, "explain": 1, "model_card": 1}


def test_editing_library_code_reruns_only_the_jobs_that_run_it(pipeline, params, tool_env, tmp_path):
    """Snakemake watches scripts, not the modules they import; the library_code param closes that gap."""
    work = shutil.copytree(pipeline, tmp_path / "work", symlinks=True)
    with open(work / "src/hemaflow/evaluate/leaderboard.py", "a") as f:
        f.write("# edited\n")
    # explain reads the new best, the model card the new headline
    assert planned_jobs(work, tool_env) == {"leaderboard": 1, "explain": 1, "model_card": 1}
    with open(work / "src/hemaflow/train/schedules.py", "a") as f:  # imported by CNN training, not the SVM's
        f.write("# edited\n")
    n_models = len(combos(params["train"], params["seed"]))
    assert planned_jobs(work, tool_env) == {"train": n_models, "evaluate": n_models, "leaderboard": 1, "explain": 1,
                                            "model_card": 1}  # fmt: skip


def _digest(paths):
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_same_params_and_seed_give_identical_data_artifacts(pipeline, tmp_path, tool_env):
    """A second clean copy rebuilds replica, manifests, splits and shards byte for byte."""
    other = copy_repo(tmp_path, tool_env)
    snakemake(other, tool_env, "results/manifests/augmented.parquet")
    for pattern in ["results/manifests/*.parquet", "results/manifests/shards/*/*.parquet", "results/shards/*/*.tfrecord"]:
        a, b = sorted(pipeline.glob(pattern)), sorted(other.glob(pattern))
        assert [p.relative_to(pipeline) for p in a] == [p.relative_to(other) for p in b]
        assert _digest(a) == _digest(b), pattern


def test_the_console_shows_epoch_progress_and_ends_with_where_the_results_are(pipeline, params):
    console = (pipeline.parent / "console.txt").read_text()
    combo = next(iter(combos(params["train"], params["seed"])))
    assert re.search(rf"train {re.escape(combo)}: epoch 1/{params['train']['max_epochs']} loss \d", console), console[-2000:]
    tail = console[console.rindex("Results:"):]
    assert "leaderboard: results/reports/leaderboard.md" in tail and "metrics: results/reports/metrics.json" in tail
    assert "report: snakemake --report results/report.html" in tail  # not made by the run: the command to make it


def test_every_evaluation_has_patient_intervals_and_calibration(pipeline, params):
    """metrics.json's `ci` and `calibration` (issue 17): the replica names its patients, so the
    intervals resample them; each bracket its estimate; a reliability diagram per split."""
    board = pd.read_csv(pipeline / "results/reports/leaderboard.csv")
    for combo in board["combo"]:
        out = pipeline / f"results/evaluation/{combo}"
        metrics = json.loads((out / "metrics.json").read_text())
        for split in ("train", "val", "test"):
            ci = metrics[split]["ci"]
            assert ci["resampled"] == "patients" and ci["n_resamples"] == params["evaluate"]["bootstrap"]
            assert ci["confidence"] == params["evaluate"]["ci"] and ci["seed"] == params["seed"]
            for name in ("accuracy", "balanced_accuracy", "f1", "macro_f1"):
                low, high = ci["metrics"][name]
                assert low <= metrics[split][name] <= high, (combo, split, name)
            cal = metrics[split]["calibration"]
            assert 0 <= cal["ece"] <= 1 and cal["ece_bins"] == params["evaluate"]["ece_bins"]
            assert (out / f"reliability_{split}.png").stat().st_size > 0
            assert (pipeline / f"results/plots/reliability_{split}/{combo}.csv").is_file()
            patient = metrics["patient"][split]
            for name, (low, high) in patient["ci"]["wilson"].items():
                assert low <= patient[name] <= high, (combo, split, name)
        assert json.loads((out / "calibration.json").read_text())["method"] == params["evaluate"]["calibrate"]


def test_the_model_card_is_made_from_this_runs_outputs(pipeline, params):
    """results/reports/model_card.md: its model, counts and figures are the run's own."""
    card = (pipeline / "results/reports/model_card.md").read_text()
    headline = json.loads((pipeline / "results/reports/metrics.json").read_text())
    best = headline["best"]
    evaluation = json.loads((pipeline / f"results/evaluation/{best}/metrics.json").read_text())
    ingest = json.loads((pipeline / "results/reports/ingest.json").read_text())
    train = json.loads((pipeline / f"results/models/{best}/train.json").read_text())
    assert card.startswith(f"# Model card: {best}\n")
    assert f"| files found | {ingest['files']} |" in card and f"| patients | {ingest['patients']} |" in card
    val_accuracy = f"{evaluation['val']['accuracy']:.3f}"
    assert re.search(rf"^\| accuracy \| {re.escape(val_accuracy)}[ (]", card, re.M), card
    assert f"| epochs run (best) | {train['epochs_run']} ({train['best_epoch']}) |" in card
    assert "synthetic replica" in card  # the default run is on the replica, and the card says so
    split_summary = pd.read_csv(pipeline / "results/reports/split_summary.csv")
    test_rows = split_summary[split_summary["split"] == "test"]
    assert f"| test | {test_rows['patients'].sum()} | {test_rows['cells'].sum()} |" in card
