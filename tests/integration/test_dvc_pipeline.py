"""DVC on the real default pipeline: repro, metrics, plots, experiments, and the reviewers' path
(push, clone, pull: identical artifacts, clean status, nothing for Snakemake to do) over a local
directory remote and over an S3-compatible server on loopback."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from dvc_roundtrip import assert_tree_identical, dvc_outs, dvc_plots, dvc_status_clean, push_clone_pull
from harness import TARGET_RULES, planned_jobs, run
from hemaflow.train.grid import combos

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reproduced(pipeline, tool_env, tmp_path_factory) -> Path:
    """A copy of the finished pipeline after `dvc repro`, with dvc.lock committed: the maintainers' repository."""
    repo = Path(shutil.copytree(pipeline, tmp_path_factory.mktemp("origin") / "repo", symlinks=True))
    store = tmp_path_factory.mktemp("dvc-store")
    run(["dvc", "remote", "modify", "--local", "storage", "url", store], repo, tool_env)
    out = run(["dvc", "repro"], repo, tool_env)
    # Snakemake had already built everything: the stages' snakemake calls find nothing to do
    # but what `snakemake` alone does not make: the HTML report and the `predict` stage's
    # predictions on the replica holdout.
    assert sorted(executed_rules(out)) == ["external", "predict"], out.stdout[-3000:]  # external: its index, of no set
    run(["git", "add", "--all"], repo, tool_env)
    run(["git", "commit", "--quiet", "-m", "dvc.lock of the default pipeline"], repo, tool_env)
    return repo


def executed_rules(proc) -> list[str]:
    """Snakemake rules that jobs ran for (target rules left out), in the output of dvc repro / dvc exp run."""
    rules = re.findall(r"^(?:local)?rule (\w+):$", proc.stdout + proc.stderr, flags=re.M)
    return [rule for rule in rules if rule not in TARGET_RULES]


def test_nothing_changed_means_no_work_for_dvc_or_snakemake(reproduced, tool_env):
    out = run(["dvc", "repro"], reproduced, tool_env)
    assert "Data and pipelines are up to date" in out.stdout + out.stderr
    assert executed_rules(out) == []
    assert planned_jobs(reproduced, tool_env) == {}


def test_metrics_show_lists_every_combination(reproduced, tool_env, params):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], reproduced, tool_env).stdout)
    data = shown[""]["data"]["results/reports/metrics.json"]["data"]
    assert set(data["combos"]) == set(combos(params["train"], params["seed"])) | {"svm_rbf"}
    assert data["best"] in data["combos"]
    # and each combination's whole metrics.json (leaderboard's copies): any figure for `dvc metrics diff`
    for combo in data["combos"]:
        whole = shown[""]["data"][f"results/reports/metrics_by_combo/{combo}.json"]["data"]
        own = json.loads((reproduced / f"results/evaluation/{combo}/metrics.json").read_text())
        assert whole["test"]["balanced_accuracy"] == own["test"]["balanced_accuracy"]  # DVC shows numbers, not lists


def test_plots_show_renders_curves_roc_and_confusion_of_every_combination(reproduced, tool_env, params):
    shown = json.loads(run(["dvc", "plots", "show", "--json", "--split"], reproduced, tool_env).stdout)["data"]
    for combo in combos(params["train"], params["seed"]):
        for kind, field in (("history", "val_loss"), ("roc_test", "tpr"), ("confusion_test", "predicted")):
            (plot,) = shown[f"results/plots/{kind}/{combo}.csv"]
            rows = plot["anchor_definitions"]["<DVC_METRIC_DATA>"]
            assert plot["type"] == "vega" and rows and field in rows[0], (kind, combo)
    for image in ("results/reports/leaderboard.png", "results/reports/contact_sheets/train.png"):
        assert shown[image][0]["type"] == "image"


def check_clone(origin: Path, clone: Path, env) -> None:
    outs = dvc_outs(origin, env)
    assert {"results/models", "results/shards", "results/manifests", "results/reports/metrics.json"} <= set(outs)
    assert_tree_identical(origin, clone, outs)
    pulled = dvc_plots(clone, env)  # every plot of dvc.yaml drawn as in the origin, no errors
    assert "errors" not in pulled and pulled["undrawn"] == [] and pulled == dvc_plots(origin, env), pulled.get("errors")
    assert dvc_status_clean(clone, env)
    assert planned_jobs(clone, env) == {}


def test_reviewers_path_through_a_local_directory_remote(reproduced, tool_env, tmp_path):
    store = run(["dvc", "remote", "default"], reproduced, tool_env).stdout.strip()
    url = run(["dvc", "config", "--local", f"remote.{store}.url"], reproduced, tool_env).stdout.strip()
    clone = push_clone_pull(reproduced, store, tmp_path / "clone", tool_env, remote_settings={"url": url})
    check_clone(reproduced, clone, tool_env)


def test_reviewers_path_through_s3_on_loopback(reproduced, tool_env, tmp_path, s3_bucket):
    origin = Path(shutil.copytree(reproduced, tmp_path / "origin", symlinks=True))
    run(["dvc", "remote", "add", "s3", f"s3://{s3_bucket.bucket}/hemaflow"], origin, tool_env)
    run(["git", "commit", "--quiet", "-am", "S3 remote"], origin, tool_env)
    settings = {"endpointurl": s3_bucket.endpoint}
    for key, value in settings.items():
        run(["dvc", "remote", "modify", "--local", "s3", key, value], origin, tool_env)
    clone = push_clone_pull(origin, "s3", tmp_path / "clone", tool_env, remote_settings=settings)
    stored = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.bucket, Prefix="hemaflow/")["KeyCount"]
    assert stored > 100  # shards, models, tables and the replica's images are really in the bucket
    check_clone(origin, clone, tool_env)


def test_experiment_with_another_model_trains_only_its_combinations(reproduced, tool_env, params, tmp_path):
    repo = Path(shutil.copytree(reproduced, tmp_path / "repo", symlinks=True))
    models = [*params["train"]["grid"]["model"], "breen_cnn"]  # seed 004's small CNN: a cheap addition
    grid = {**params["train"]["grid"], "model": models}
    before = combos(params["train"], params["seed"])
    after = combos({**params["train"], "grid": grid}, params["seed"])
    unchanged = [c for c in after if c in before]
    added = [c for c in after if c not in before]
    assert unchanged and added
    stamps = {c: (repo / f"results/models/{c}/model.keras").stat().st_mtime_ns for c in unchanged}

    out = run(["dvc", "exp", "run", "--set-param", f"train.grid.model=[{','.join(models)}]"], repo, tool_env)

    text = out.stdout + out.stderr
    # external: its stage reads the models; with no set listed its snakemake call finds nothing to do
    assert re.findall(r"Running stage '(\w+)'", text) == ["train", "evaluate", "explain", "predict", "external", "report"]
    rules = executed_rules(out)
    # New ids for `grid`; the leaderboard, and what reads it (the model card, the best model's
    # explanations and predictions), once each; the added combinations trained and evaluated, nothing else.
    expected = ["grid", "leaderboard", "model_card", "explain", "predict"] + ["train", "evaluate"] * len(added)
    assert sorted(rules) == sorted(expected)
    for c in unchanged:  # untouched: not retrained
        assert (repo / f"results/models/{c}/model.keras").stat().st_mtime_ns == stamps[c]
    board = json.loads((repo / "results/reports/metrics.json").read_text())
    assert set(board["combos"]) == set(after) | {"svm_rbf"}
    assert dvc_status_clean(repo, tool_env)
