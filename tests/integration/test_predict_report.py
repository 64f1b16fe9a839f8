"""`hemaflow predict` on the replica's holdout folder with the default run's best model: equal to
evaluate on the same images, the validation threshold, and the per-patient reports in headless
Chromium (render, fields, gallery, no request leaves the page)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from browser import dump_dom, is_blank, page_requests, screenshot
from harness import BIN, ROOT, run

pytestmark = pytest.mark.integration

HOLDOUT = "data/raw/cnmc-replica/validation_data/C-NMC_test_prelim_phase_data"


@pytest.fixture(scope="module")
def predicted(pipeline, tool_env, tmp_path_factory):
    """The CLI on the holdout folder (patient ids from its labels CSV), a patient sheet, --improve."""
    tmp = tmp_path_factory.mktemp("predict")
    sources = pd.read_parquet(pipeline / "results/manifests/sources.parquet")
    pids = sorted(sources.loc[sources["holdout"], "patient_id"].dropna().unique())
    sheet = tmp / "patients.csv"
    pd.DataFrame({"patient_id": pids, "name": [f"Test Person {p}" for p in pids], "age": 60, "sex": "M",
                  "sample_date": "2026-12-01", "wbc": 11.5}).to_csv(sheet, index=False)
    out = tmp / "out"
    env = {**tool_env, "PYTHONPATH": str(ROOT / "src")}
    script = BIN / "hemaflow"
    command = [script] if script.exists() else [sys.executable, "-m", "hemaflow.cli"]
    run([*command, "predict", pipeline / HOLDOUT, "--model", "best", "--project", pipeline, "--out", out,
         "--patients", sheet, "--improve"], pipeline, env)
    # `best` is the best image-only CNN (a fused model also needs blood counts): the summary names it
    best = json.loads((out / "summary.json").read_text())["model"]
    board = pd.read_csv(pipeline / "results/reports/leaderboard.csv")["combo"]  # in rank order
    assert best == next(c for c in board if (pipeline / f"results/models/{c}/model.keras").is_file() and not c.endswith("_cbc"))
    return pipeline, best, sources, out, pids


def test_predictions_equal_evaluate_on_the_holdout(predicted):
    pipeline, best, sources, out, _ = predicted
    table = pd.read_parquet(out / "predictions.parquet")
    assert (table["status"] == "ok").all()
    evaluated = pd.read_parquet(pipeline / f"results/evaluation/{best}/predictions.parquet").query("split == 'test'")
    rel = sources.set_index("image_id")["rel_path"]
    data_root = pipeline / Path(HOLDOUT).parents[1]  # rel_path is relative to data.root
    evaluated = evaluated.assign(file=[str(data_root / rel[i]) for i in evaluated["image_id"]]).set_index("file")
    table = table.set_index("file").loc[evaluated.index]  # every holdout image, nothing else
    assert len(table) == len(evaluated) == int(sources["holdout"].sum())
    np.testing.assert_allclose(table[["p_hem", "p_all"]].to_numpy(), evaluated[["p_0", "p_1"]].to_numpy(), rtol=0, atol=1e-6)
    assert (table["patient_id"] == evaluated["patient_id"]).all()  # from the labels CSV beside the folder


def test_patient_decision_uses_the_threshold_chosen_on_validation(predicted):
    pipeline, best, _, out, pids = predicted
    metrics = json.loads((pipeline / f"results/evaluation/{best}/metrics.json").read_text())["patient"]
    ours = pd.read_csv(out / "patients.csv", dtype={"patient_id": str}).set_index("patient_id")
    theirs = pd.read_csv(pipeline / f"results/evaluation/{best}/patients.csv", dtype={"patient_id": str})
    theirs = theirs[theirs["split"] == "test"].set_index("patient_id")
    assert sorted(ours.index) == sorted(theirs.index) == pids
    np.testing.assert_allclose(ours.loc[pids, "frac_positive"], theirs.loc[pids, "frac_positive"])
    assert (ours["threshold"] == metrics["threshold"]).all()
    assert (ours.loc[pids, "decision"] == np.where(theirs.loc[pids, "predicted"] == 1, "positive for all", "negative for all")).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"]["chosen_on"] == "val" and f"evaluation/{best}/metrics.json" in summary["decision_rule"]


def test_each_patient_report_renders_offline_with_fields_and_gallery(chromium, predicted, tmp_path):
    _, best, _, out, pids = predicted
    table = pd.read_parquet(out / "predictions.parquet")
    listed = json.loads((out / "summary.json").read_text())["reports"]  # patient id -> its page
    assert sorted(p.name for p in (out / "reports").glob("*.html")) == sorted(listed.values()) and sorted(listed) == pids
    for pid in pids[:2]:
        page = out / "reports" / listed[pid]
        dom = dump_dom(page)
        for text in (f"Test Person {pid}", "2026-12-01", "11.5", best, "not a diagnosis", "threshold"):
            assert text in dom, (pid, text)
        assert len(re.findall(r'<figure class="cell"', dom)) == int((table["patient_id"] == pid).sum())
        assert all(s.startswith("data:") for s in re.findall(r'\bsrc="([^"]*)"', dom))
        assert page_requests(page) == []
        assert not is_blank(screenshot(page, tmp_path / f"{pid}.png"))


def test_snakemake_predict_target_writes_the_same_predictions(pipeline, predicted, tool_env, tmp_path):
    """The pipeline target (params.yaml `predict`: the holdout folder, the best model) on a copy of the run."""
    import shutil

    from harness import planned_jobs, snakemake

    _, _, _, out, _ = predicted
    work = shutil.copytree(pipeline, tmp_path / "work", symlinks=True)
    snakemake(work, tool_env, "predict")
    target = work / "results/predict/replica-holdout"
    ours = pd.read_parquet(target / "predictions.parquet")
    cli = pd.read_parquet(out / "predictions.parquet")
    assert list(ours["file"]) == [str(Path(f).relative_to(pipeline)) for f in cli["file"]]  # params.yaml's relative path
    np.testing.assert_array_equal(ours[["p_hem", "p_all"]].to_numpy(), cli[["p_hem", "p_all"]].to_numpy())
    assert sorted(p.name for p in (target / "reports").glob("*.html")) == sorted(p.name for p in (out / "reports").glob("*.html"))
    assert planned_jobs(work, tool_env, "predict") == {}
