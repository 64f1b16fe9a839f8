# hemaflow: blood-cell microscopy images -> trained, evaluated classifiers.
# This file is only the header; the rules are in workflow/rules/, the science in src/hemaflow/.
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# params.yaml named in the message when it is empty, not a mapping or not YAML (Snakemake's says neither).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from hemaflow.config import check_config_file

check_config_file("params.yaml")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/augment.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/explain.smk"


localrules:
    all,
    replica,
    grid,
    prepare,
    models,
    evaluation,
    explanation,


rule all:
    input:
        prepared_data(),
        evaluation_reports(),
        explanations(),
    default_target: True


# One target per DVC stage (dvc.yaml): `snakemake prepare` builds the data half only.
# Fixed names, so no dvc.yaml command carries a parameter into a shell.
rule replica:
    input:
        config["data"]["root"],


rule prepare:
    input:
        prepared_data(),


rule models:
    input:
        trained_models(),


rule evaluation:
    input:
        evaluation_reports(),


rule explanation:
    input:
        explanations(),


# The end of a successful run says where to look (nothing when the run built none of them yet).
onsuccess:
    shown = {"leaderboard": "results/reports/leaderboard.md", "metrics": "results/reports/metrics.json"}
    lines = [f"  {name}: {path}" for name, path in shown.items() if Path(path).exists()]
    if lines:
        report_html = "results/report.html"
        lines.append(f"  report: {report_html}" if Path(report_html).exists() else f"  report: snakemake --report {report_html}")
        print("Results:", *lines, sep="\n", file=sys.stderr)
