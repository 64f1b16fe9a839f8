"""A contact sheet per split: what the model will see, by class."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import pandas as pd

from hemaflow.data.manifest import read_classes
from hemaflow.augment.shards import contact_sheet

manifest = pd.concat([pd.read_parquet(p) for p in snakemake.input.manifests], ignore_index=True)
contact_sheet(
    list(snakemake.input.records),
    manifest,
    snakemake.output[0],
    per_class=snakemake.params.per_class,
    class_names=read_classes(snakemake.input.classes),
    channels=snakemake.params.channels,
    seed=snakemake.params.seed,
)
