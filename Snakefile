# hemaflow: blood-cell microscopy images -> trained, evaluated classifiers.
# This file is only the header; the rules are in workflow/rules/, the science in src/hemaflow/.
from snakemake.utils import min_version

min_version("9.0")


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
