"""A contact sheet per split: what the model will see, by class."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import pandas as pd

from hemaflow.manifest import read_manifest
from hemaflow.shards import contact_sheet

manifest = pd.concat([pd.read_parquet(p) for p in snakemake.input.manifests], ignore_index=True)
sources = read_manifest(snakemake.input.sources, "sources")
classes = sources[sources["label_index"] >= 0].drop_duplicates("label_index").set_index("label_index")["label"]
contact_sheet(
    list(snakemake.input.records),
    manifest,
    snakemake.output[0],
    per_class=snakemake.params.per_class,
    class_names=classes.sort_index().to_dict(),
    channels=snakemake.params.channels,
    seed=snakemake.params.seed,
)
