"""`hemaflow predict` on real images: a tiny 5-class model trained by the workflow on a few
BCCD white-blood-cell crops (../shared/data/bccd-wbc), natural background, 32 px, 1 epoch.
A smoke test of the real path: train records preprocess.json, predict reads it, and its
inputs and probabilities equal the shards' and evaluate's."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from harness import BCCD, BCCD_PREPROCESS, BIN, bccd_config, copy_repo, run, snakemake, write_override

pytestmark = pytest.mark.slow

# ../shared beside the clone (as in CI); HEMAFLOW_SHARED names another place (e.g. from a git worktree)
PER_CLASS = 6


@pytest.fixture(scope="module")
def bccd_run(tmp_path_factory, tool_env):
    if not BCCD.is_dir():
        pytest.skip(f"{BCCD} is not there (the real-image fixture set lives beside the clone, in ../shared)")
    work = copy_repo(tmp_path_factory.mktemp("bccd"), tool_env)
    picked = [p for d in sorted(BCCD.iterdir()) if d.is_dir() for p in sorted(d.glob("*.jpg"))[:PER_CLASS]]
    (work / "bccd-index.txt").write_text("".join(f"{p.relative_to(BCCD)}\n" for p in picked))
    override = write_override(work, "bccd.yaml", bccd_config("bccd-index.txt"))
    snakemake(work, tool_env, "evaluation", "--configfile", override)
    (combo,) = [p.parent.name for p in (work / "results/models").glob("*/model.keras")]
    sources = pd.read_parquet(work / "results/manifests/sources.parquet")
    held_out = pd.read_parquet(work / f"results/evaluation/{combo}/predictions.parquet").query("split != 'train'")
    files = [str(BCCD / r) for r in sources.set_index("image_id").loc[held_out["image_id"], "rel_path"]]
    out = work / "predicted"
    env = {**tool_env, "PYTHONPATH": str(work / "src")}  # the copy's code, even where the venv installs another
    script = BIN / "hemaflow"
    command = [script] if script.exists() else [sys.executable, "-m", "hemaflow.cli"]
    run([*command, "predict", *files, "--model", "best", "--project", work, "--out", out, "--batch-size", "5"], work, env)
    return work, combo, sources, held_out, out


def test_train_records_the_preprocessing_and_classes_beside_the_model(bccd_run):
    work, combo, sources, _, _ = bccd_run
    info = json.loads((work / f"results/models/{combo}/preprocess.json").read_text())
    assert info["preprocess"] == BCCD_PREPROCESS and info["channels"] == 3
    assert info["classes"] == sorted(d.name for d in BCCD.iterdir() if d.is_dir())  # label_index order
    assert "positive_class" not in info  # evaluation's, never the model's


def test_predict_equals_evaluate_on_the_held_out_images(bccd_run):
    work, combo, sources, held_out, out = bccd_run
    table = pd.read_parquet(out / "predictions.parquet")
    assert (table["status"] == "ok").all() and len(table) == len(held_out)
    classes = json.loads((work / f"results/models/{combo}/preprocess.json").read_text())["classes"]
    ours = table[[f"p_{c}" for c in classes]].to_numpy()
    theirs = held_out[[f"p_{i}" for i in range(len(classes))]].to_numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert (table["predicted_label"].to_numpy() == held_out["predicted_label"].to_numpy()).all()


def test_predict_inputs_equal_the_shards_deterministic_records(bccd_run):
    from hemaflow.data.images import load_rgb
    from hemaflow.predict.run import model_input
    from hemaflow.augment.records import iter_records

    work, combo, sources, _, _ = bccd_run
    params = json.loads((work / f"results/models/{combo}/preprocess.json").read_text())
    rel = sources.set_index("image_id")["rel_path"]
    records = list(iter_records(sorted((work / "results/shards/test").glob("*.tfrecord")), 3))
    assert records
    for img, _, aug_id in records:
        np.testing.assert_array_equal(model_input(load_rgb(BCCD / rel[aug_id.split("-")[0]])[0], params), img)


def test_multiclass_output_counts_classes_and_writes_a_report(bccd_run):
    work, combo, _, held_out, out = bccd_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == combo and summary["threshold"] is None
    assert "class counts only" in summary["decision_rule"]
    patients = pd.read_csv(out / "patients.csv")
    assert patients["patient_id"].tolist() == ["unassigned"]  # BCCD names carry no patient id
    counts = patients.filter(like="n_").drop(columns=["n_cells", "n_quarantined"])
    assert counts.sum(axis=1).tolist() == [len(held_out)] and "decision" not in patients
    # cells without a patient id are no patient: counted, but no page that would pool several patients
    assert patients["report"].isna().all() and not list((out / "reports").glob("*.html"))
    assert summary["unassigned"]["cells"] == len(held_out) and "no patient id" in summary["unassigned"]["decision"]
