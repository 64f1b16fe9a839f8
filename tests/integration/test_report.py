"""The Snakemake HTML report of the default pipeline, opened in headless Chromium (no network)."""

from __future__ import annotations

import pytest

from browser import dump_dom, is_blank, screenshot
from harness import run
from hemaflow.train.grid import combos

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(pipeline, tool_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    run(["snakemake", "--report", out], pipeline, tool_env)
    return out


def test_report_renders_with_every_category(chromium, report, tmp_path):
    dom = dump_dom(report, budget_ms=10_000)
    # Built by the report's JavaScript: present only if it ran offline.
    assert ">Workflow<" in dom and "<nav" in dom
    for category in ("Data", "Training", "Evaluation", "Leaderboard", "Explanations"):
        assert f">{category}<" in dom, category
    assert not is_blank(screenshot(report, tmp_path / "report.png"))


def test_report_embeds_leaderboard_figures_and_captions(report, params):
    html = report.read_text()
    for path in ("results/reports/leaderboard.csv", "results/reports/leaderboard.png",
                 "results/reports/contact_sheets/train.png", "results/reports/split_summary.csv"):
        assert path in html, path
    for combo in [*combos(params["train"], params["seed"]), "svm_rbf"]:
        assert f"results/evaluation/{combo}/roc_test.png" in html, combo
        assert f"results/evaluation/{combo}/patients.png" in html, combo
    for combo in combos(params["train"], params["seed"]):
        assert f"results/models/{combo}/curves.png" in html, combo
    assert "ranked by the validation metric" in html  # workflow/report/leaderboard.rst, the caption


def test_report_embeds_the_explanations_of_the_best_model(report, pipeline):
    html = report.read_text()
    assert "results/explain/best/sufficiency.png" in html and "results/explain/best/sufficiency.csv" in html
    overlays = sorted((pipeline / "results/explain/best/overlays").rglob("*.png"))
    assert overlays and all(str(p.relative_to(pipeline)) in html for p in overlays)
    assert "What it does not show" in html  # workflow/report/sufficiency.rst
    assert "explained for the class" in html  # workflow/report/explain_overlay.rst, per cell
