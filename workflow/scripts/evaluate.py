"""Evaluate one trained model on every split, at cell and patient level."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

from pathlib import Path

import pandas as pd

from hemaflow.evaluate import evaluate_predictions, predict, predict_baseline
from hemaflow.manifest import read_manifest

sources = read_manifest(snakemake.input.sources, "sources")
classes = sources[sources["label_index"] >= 0].drop_duplicates("label_index").sort_values("label_index")
if snakemake.params.baseline:
    import joblib

    features = pd.concat([pd.read_parquet(p) for p in snakemake.input.features], ignore_index=True)
    pred = predict_baseline(joblib.load(snakemake.input.model), features, n_classes=len(classes))
else:
    import keras

    model = keras.models.load_model(snakemake.input.model)
    channels = snakemake.params.channels
    # The train split is scored on its deterministic copies, val and test on every record.
    pred = pd.concat(
        [
            predict(model, list(snakemake.input.train_records), channels=channels, deterministic_only=True),
            predict(model, list(snakemake.input.records), channels=channels),
        ],
        ignore_index=True,
    )

evaluate_predictions(
    pred,
    pd.read_parquet(snakemake.input.augmented),
    sources,
    class_names=list(classes["label"]),
    positive_class=snakemake.params.positive_class,
    out_dir=Path(snakemake.output.metrics).parent,
    table_pattern=snakemake.params.tables,
)
