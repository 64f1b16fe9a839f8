"""Explain one trained CNN (or the leaderboard's best): Grad-CAM and LIME overlays, sufficiency test."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import json
import logging

import pandas as pd

from hemaflow.explain.run import explain_model, load_images, sample_cells
from hemaflow.models_io import best_of, load_model
from hemaflow.data.manifest import read_classes

combos = list(snakemake.params.combos)
combo = combos[0]
if snakemake.wildcards.combo == "best":
    with open(snakemake.input.metrics) as f:
        metrics = json.load(f)
    combo = best_of(metrics, combos, snakemake.input.metrics)
    logging.info("leaderboard best: %s; explaining %s", metrics["best"], combo)
k = combos.index(combo)

predictions = pd.read_parquet(snakemake.input.predictions[k])
settings, seed = snakemake.params.explain, snakemake.params.seed
wanted = pd.concat(sample_cells(predictions, settings, seed))["image_id"].unique()
images = load_images(snakemake.input.records, pd.read_parquet(snakemake.input.augmented), wanted,
                     snakemake.params.channels)
summary = explain_model(
    load_model(snakemake.input.models[k]), predictions, images, combo=combo,
    class_names=read_classes(snakemake.input.classes), settings=settings, seed=seed, out=dict(snakemake.output),
)
logging.info("explained %s: %s", combo, summary)
