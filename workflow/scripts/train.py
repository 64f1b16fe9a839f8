"""Train one hyperparameter combination."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import pandas as pd
import tensorflow as tf

from hemaflow.manifest import read_manifest
from hemaflow.train import train_combo

tf.config.threading.set_intra_op_parallelism_threads(snakemake.threads)
tf.config.threading.set_inter_op_parallelism_threads(snakemake.threads)

sources = read_manifest(snakemake.input.sources, "sources")
# Counts from the shard manifests: counting the records would read every one of them.
train_rows = pd.concat([pd.read_parquet(p, columns=["label_index"]) for p in snakemake.input.manifests])
n_val = sum(len(pd.read_parquet(p, columns=["index"])) for p in snakemake.input.val_manifests)
s = snakemake.params.settings
train_combo(
    snakemake.params.combo,
    train_records=list(snakemake.input.train),
    val_records=list(snakemake.input.val),
    channels=snakemake.params.channels,
    size=snakemake.params.size,
    n_classes=int(sources["label_index"].max()) + 1,
    max_epochs=s["max_epochs"],
    patience=s["patience"],
    cyclic=s["cyclic"],
    class_counts=train_rows["label_index"].value_counts().to_dict(),
    n_val=n_val,
    class_weight=s.get("class_weight", "none"),
    seed=snakemake.params.seed,
    out_dir=snakemake.output.model.rsplit("/", 1)[0],
    history_path=snakemake.output.history,
)
