"""Evaluate one trained model on every split, at cell and patient level."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

from pathlib import Path

import pandas as pd

from hemaflow.evaluate import evaluate_predictions, predict, predict_baseline
from hemaflow.manifest import read_manifest

records = list(snakemake.input.records)
sources = read_manifest(snakemake.input.sources, "sources")
classes = sources[sources["label_index"] >= 0].drop_duplicates("label_index").sort_values("label_index")
if snakemake.params.baseline:
    from hemaflow.baseline import load_svm

    pred = predict_baseline(
        load_svm(snakemake.input.model), records, channels=snakemake.params.channels, n_classes=len(classes)
    )
else:
    import keras

    pred = predict(keras.models.load_model(snakemake.input.model), records, channels=snakemake.params.channels)

evaluate_predictions(
    pred,
    pd.read_parquet(snakemake.input.augmented),
    sources,
    class_names=list(classes["label"]),
    positive_class=snakemake.params.positive_class,
    out_dir=Path(snakemake.output.metrics).parent,
    table_pattern=snakemake.params.tables,
)
