"""Train one hyperparameter combination."""

import os

# The job's own stderr, before to_log sends it to the log: Snakemake shows it on the console.
CONSOLE = os.fdopen(os.dup(2), "w", buffering=1)

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import pandas as pd

from hemaflow.train import fusion
from hemaflow.train.grid import is_fused
from hemaflow.data.manifest import read_classes, read_manifest
from hemaflow.train.model_params import record
from hemaflow.train.device import use_device, use_threads
from hemaflow.train.fit import EpochProgress, train_combo
from hemaflow.train.settings import TrainData, TrainSettings

use_threads(snakemake.threads)
settings = TrainSettings.from_config(snakemake.params.settings)
device = use_device(settings.accelerator, settings.mixed_precision)

# Counts from the shard manifests: counting the records would read every one of them.
train_rows = pd.concat([pd.read_parquet(p, columns=["label_index"]) for p in snakemake.input.manifests])
n_val = sum(len(pd.read_parquet(p, columns=["index"])) for p in snakemake.input.val_manifests)
classes = read_classes(snakemake.input.classes)
# First, so that model.keras (written last by train_combo) never exists without it.
record(snakemake.output.params, preprocess=snakemake.params.preprocess, channels=snakemake.params.channels, classes=classes,
       **snakemake.params.described)
cbc = None
if is_fused(snakemake.params.combo):
    sources = read_manifest(snakemake.input.sources, "sources")
    splits = read_manifest(snakemake.input.splits, "splits")
    cbc = fusion.cbc_inputs(snakemake.input.sheet, sources, splits, read_manifest(snakemake.input.augmented, "augmented"))
data = TrainData(
    train_records=list(snakemake.input.train),
    val_records=list(snakemake.input.val),
    channels=snakemake.params.channels,
    size=snakemake.params.size,
    n_classes=len(classes),
    class_counts=train_rows["label_index"].value_counts().to_dict(),
    n_val=n_val,
    cbc=cbc,
)
train_combo(
    snakemake.params.combo,
    data,
    settings,
    seed=snakemake.params.seed,
    out_dir=snakemake.output.model.rsplit("/", 1)[0],
    history_path=snakemake.output.history,
    threads=snakemake.threads,
    device=device,
    callbacks=[EpochProgress(snakemake.wildcards.combo, settings.max_epochs, CONSOLE)],
)
