"""Merge the per-shard manifests into results/manifests/augmented.parquet (Dask)."""

from hemaflow.logs import to_log
from hemaflow.shards import merge_manifests

to_log(snakemake.log[0])
merge_manifests(list(snakemake.input), snakemake.output[0])
