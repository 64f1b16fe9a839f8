"""Merge the per-shard manifests into results/manifests/augmented.parquet (Dask)."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

from hemaflow.augment.shards import merge_manifests

merge_manifests(list(snakemake.input), snakemake.output[0])
