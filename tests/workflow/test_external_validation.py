"""External validation end to end: a 5-class model trained by the workflow on a few BCCD
white-blood-cell crops (../shared/data/bccd-wbc) scored on the rest of the set by rule
`external` and by `hemaflow evaluate`; and the default model on the replica's labelled holdout,
which in the default run is the test split, so both must give evaluate's test figures."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness import BCCD, BIN, bccd_config, copy_repo, planned_jobs, run, snakemake, write_override
from hemaflow.train.grid import is_fused

pytestmark = pytest.mark.slow

PER_CLASS = 6  # training images per class (Basophil has 3: all of them, so the external set has none)
BCCD_SET = "bccd-rest"


def _hemaflow(*args, cwd: Path, env) -> "subprocess.CompletedProcess":  # noqa: F821
    script = BIN / "hemaflow"
    command = [script] if script.exists() else [sys.executable, "-m", "hemaflow.cli"]
    return run([*command, *args], cwd, {**env, "PYTHONPATH": str(cwd / "src")})


@pytest.fixture(scope="module")
def bccd(tmp_path_factory, tool_env):
    """The workflow trains a 5-class model on PER_CLASS images per class (1 epoch, 32 px) and
    rule `external` scores it on every other image of the set (an index file names them)."""
    if not BCCD.is_dir():
        pytest.skip(f"{BCCD} is not there (the real-image fixture set lives beside the clone, in ../shared)")
    work = copy_repo(tmp_path_factory.mktemp("bccd-external"), tool_env)
    every = [p for d in sorted(BCCD.iterdir()) if d.is_dir() for p in sorted(d.glob("*.jpg"))]
    picked = [p for d in sorted(BCCD.iterdir()) if d.is_dir() for p in sorted(d.glob("*.jpg"))[:PER_CLASS]]
    rest = [p for p in every if p not in picked]
    (work / "bccd-index.txt").write_text("".join(f"{p.relative_to(BCCD)}\n" for p in picked))
    (work / "bccd-external.txt").write_text("".join(f"{p.relative_to(BCCD)}\n" for p in rest))
    data = {"adapter": "folders", "name": BCCD_SET, "root": str(BCCD), "index": "bccd-external.txt"}
    override = write_override(work, "bccd.yaml", bccd_config("bccd-index.txt") | {
        "external": [{"name": BCCD_SET, "model": "best", "data": data}],
    })
    snakemake(work, tool_env, "external", "--configfile", override)
    (work / "other.yaml").write_text(yaml.safe_dump({"name": BCCD_SET, "data": data}))
    _hemaflow("evaluate", "--model", "best", "--data", "other.yaml", "--out", "cli-out", cwd=work, env=tool_env)
    return work, rest


def test_rule_external_scores_every_other_image_with_the_5_class_model(bccd):
    work, rest = bccd
    out = work / "results/external" / BCCD_SET
    metrics = json.loads((out / "metrics.json").read_text())
    classes = sorted(d.name for d in BCCD.iterdir() if d.is_dir())
    assert metrics["model"]["classes"] == classes and len(classes) == 5
    images = pd.read_parquet(out / "predictions.parquet")
    assert sorted(images["rel_path"]) == sorted(str(p.relative_to(BCCD)) for p in rest)
    assert metrics["cell"]["n"] == len(rest) and metrics["sources"]["status"]["ok"] == len(rest)
    # label_index in the model's order, and the accuracy is what the table says
    assert (images["label_index"] == images["label"].map(classes.index)).all()
    assert metrics["cell"]["accuracy"] == pytest.approx((images["predicted_label"] == images["label"]).mean())
    ci = metrics["cell"]["ci"]
    assert ci["resampled"] == "images" and ci["n_resamples"] >= 1000  # BCCD names no patients
    for name in ("accuracy", "balanced_accuracy", "auc", "macro_f1"):
        low, high = ci["metrics"][name]
        assert low <= metrics["cell"][name] <= high, name
    # every basophil went to training: its recall on this set is undefined, and says so; macro
    # averages are over the 4 classes present (evaluate's zero_division=0 figure kept beside)
    assert ci["metrics"]["recall[Basophil]"] == [None, None]
    assert any("Basophil" in note for note in metrics["cell"]["notes"])
    assert metrics["cell"]["as_evaluate"]["macro_f1"] == pytest.approx(metrics["cell"]["macro_f1"] * 4 / 5)
    assert "5 classes" in metrics["patient"]["skipped"]
    assert 0 <= metrics["cell"]["calibration"]["ece"] <= 1 and metrics["cell"]["calibration"]["ece_bins"] == 15
    for figure in ("confusion", "roc", "patients"):
        assert (out / f"{figure}.png").stat().st_size > 5_000
    index = (work / "results/external/index.md").read_text()
    assert BCCD_SET in index and f"{metrics['cell']['balanced_accuracy']:.3f} [" in index
    print(f"\nbccd-wbc external ({len(rest)} images): " + json.dumps(
        {k: metrics["cell"][k] for k in ("accuracy", "balanced_accuracy", "auc", "macro_f1")} | {
            "ci": {k: ci["metrics"][k] for k in ("accuracy", "balanced_accuracy", "auc", "macro_f1")},
            "brier": metrics["cell"]["calibration"]["brier"], "ece": metrics["cell"]["calibration"]["ece"]}))


def test_the_command_gives_the_rules_figures(bccd):
    work, _ = bccd
    rule = json.loads((work / "results/external" / BCCD_SET / "metrics.json").read_text())
    cli = json.loads((work / "cli-out/metrics.json").read_text())
    assert cli == rule


def test_a_class_mismatch_is_refused_naming_both_lists_and_the_fix(bccd, tool_env):
    work, _ = bccd
    (work / "lower.yaml").write_text(yaml.safe_dump({"data": {
        "adapter": "folders", "root": str(BCCD), "index": "bccd-external.txt",
        "label_map": {"Neutrophil": "neutrophil"}}}))  # fmt: skip
    with pytest.raises(RuntimeError) as e:
        _hemaflow("evaluate", "--data", "lower.yaml", "--out", "lower-out", cwd=work, env=tool_env)
    message = str(e.value)
    assert "hemaflow evaluate: lower.yaml" in message and "'neutrophil'" in message and "'Neutrophil'" in message
    assert "label_map" in message and "neutrophil: Neutrophil" in message
    assert not (work / "lower-out").exists()


# ---------------------------------------------------------------- the default model, replica holdout

HOLDOUT = {"name": "replica-holdout", "subset": "holdout", "data": {"adapter": "cnmc", "root": "data/raw/cnmc-replica"}}


@pytest.fixture(scope="module")
def holdout(pipeline, tool_env, tmp_path_factory):
    """`hemaflow evaluate --model best` on the replica's holdout of the default run (written
    outside the pipeline, which is read-only for tests)."""
    out = tmp_path_factory.mktemp("holdout") / "out"
    spec = tmp_path_factory.mktemp("holdout-spec") / "holdout.yaml"
    spec.write_text(yaml.safe_dump(HOLDOUT))
    _hemaflow("evaluate", "--model", "best", "--data", spec, "--project", pipeline, "--out", out, cwd=pipeline,
              env=tool_env)
    return json.loads((out / "metrics.json").read_text()), out


def test_the_default_model_on_the_replica_holdout_gives_evaluates_test_figures(pipeline, holdout):
    external, out = holdout
    # `best` for images alone: the highest-ranked image-only CNN (a fused model also needs blood counts)
    ranking = json.loads((pipeline / "results/reports/metrics.json").read_text())["ranking"]
    infos = {c: pipeline / f"results/models/{c}/train.json" for c in ranking}
    best = next(c for c in ranking if (pipeline / f"results/models/{c}/model.keras").is_file()
                and not is_fused(json.loads(infos[c].read_text())))
    evaluation = json.loads((pipeline / f"results/evaluation/{best}/metrics.json").read_text())
    assert external["model"]["combo"] == best
    test = evaluation["test"]
    assert external["cell"]["n"] == test["n"]
    for name in ("accuracy", "balanced_accuracy", "auc", "f1", "sensitivity", "specificity"):
        assert external["cell"][name] == pytest.approx(test[name], abs=1e-6), name
    patient, theirs = external["patient"], evaluation["patient"]
    assert patient["threshold"] == theirs["threshold"] and patient["threshold_chosen_on"] == "val"
    for name in ("n_patients", "n_positive", "accuracy", "sensitivity", "specificity"):
        assert patient[name] == pytest.approx(theirs["test"][name]), name
    low, high = patient["ci"]["wilson"]["accuracy"]
    assert low < patient["accuracy"] <= high <= 1 and patient["ci"]["resampled"] == "patients"
    assert external["cell"]["ci"]["resampled"] == "patients"


def test_every_replica_file_is_accounted_for(pipeline, holdout):
    external, out = holdout
    sources = pd.read_parquet(out / "sources.parquet")
    root = pipeline / "data/raw/cnmc-replica"
    assert sorted(sources["rel_path"]) == sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    ingested = pd.read_parquet(pipeline / "results/manifests/sources.parquet")
    training = ingested[(ingested["status"] == "ok") & ~ingested["holdout"]]
    outside = sources[sources["reason"] == "outside_subset"]
    assert set(outside["rel_path"]) == set(training["rel_path"])  # the training folds: skipped, with the reason
    images = pd.read_parquet(out / "predictions.parquet")
    assert set(images["rel_path"]) == set(ingested.loc[(ingested["status"] == "ok") & ingested["holdout"], "rel_path"])


def test_rule_external_on_the_default_run_scores_only_and_matches_the_command(pipeline, holdout, tool_env, tmp_path):
    """`snakemake external` with the replica holdout configured: nothing is retrained, and the
    figures are the command's."""
    external, _ = holdout
    work = Path(shutil.copytree(pipeline, tmp_path / "copy", symlinks=True))
    override = write_override(work, "external.yaml", {"external": [{**HOLDOUT, "data": {}}]})  # data: {} = the replica
    assert planned_jobs(work, tool_env, "external", "--configfile", override) == {"external_set": 1, "external": 1}
    snakemake(work, tool_env, "external", "--configfile", override)
    rule = json.loads((work / "results/external/replica-holdout/metrics.json").read_text())
    def figures(m):  # paths differ (relative in the workflow, under --project for the command)
        return m["cell"], {k: v for k, v in m["patient"].items() if k != "threshold_source"}, m["model"]["params_hash"]

    assert figures(rule) == figures(external)
    assert np.isfinite(rule["cell"]["calibration"]["brier"])
