"""Evaluate one trained model on every split, at cell and patient level, with intervals and calibration."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import json
from pathlib import Path

import pandas as pd

from hemaflow.evaluate.score import evaluate_predictions, predict, predict_baseline
from hemaflow.data.manifest import read_classes, read_manifest

sources = read_manifest(snakemake.input.sources, "sources")
augmented = pd.read_parquet(snakemake.input.augmented)
classes = read_classes(snakemake.input.classes)
with open(snakemake.input.positive) as f:
    positive_class = json.load(f)["positive_class"]  # checked against the classes by rule check_classes
if snakemake.params.baseline:
    from hemaflow.evaluate.baseline import load_svm

    features = pd.concat([pd.read_parquet(p) for p in snakemake.input.features], ignore_index=True)
    pred = predict_baseline(load_svm(snakemake.input.model), features, n_classes=len(classes))
else:
    from hemaflow import models_io
    from hemaflow.train import fusion

    model = models_io.load_model(snakemake.input.model)
    cbc = None
    if models_io.takes_cbc(model):
        cbc = fusion.for_model(model, snakemake.input.sheet, sources, augmented)
    channels = snakemake.params.channels
    # The train split is scored on its deterministic copies, val and test on every record.
    pred = pd.concat(
        [
            predict(model, list(snakemake.input.train_records), channels=channels, cbc=cbc, deterministic_only=True),
            predict(model, list(snakemake.input.records), channels=channels, cbc=cbc),
        ],
        ignore_index=True,
    )

evaluate_predictions(
    pred,
    augmented,
    sources,
    class_names=classes,
    positive_class=positive_class,
    out_dir=Path(snakemake.output.metrics).parent,
    table_pattern=snakemake.params.tables,
    bootstrap=snakemake.params.bootstrap,
    confidence=snakemake.params.ci,
    seed=snakemake.params.seed,
    calibrate=snakemake.params.calibrate,
    ece_bins=snakemake.params.ece_bins,
)
