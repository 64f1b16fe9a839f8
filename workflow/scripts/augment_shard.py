"""One shard: preprocess (and, for augmented splits, augment) its images into a TFRecord file."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

from hemaflow.manifest import read_manifest
from hemaflow.shards import build_shard, shard_of

split, shard = snakemake.wildcards.split, int(snakemake.wildcards.shard)
sources = read_manifest(snakemake.input.sources, "sources")
splits = read_manifest(snakemake.input.splits, "splits")
rows = sources.merge(splits[splits["split"] == split][["image_id"]], on="image_id")
rows = rows[rows["image_id"].map(lambda i: shard_of(i, snakemake.params.n_shards)) == shard]
build_shard(
    rows[["image_id", "rel_path", "label_index"]],
    root=snakemake.params.root,
    split=split,
    shard=shard,
    augment=snakemake.params.augment is not None,
    preprocess=snakemake.params.preprocess,
    augment_params=snakemake.params.augment or {},
    seed=snakemake.params.seed,
    max_pixels=snakemake.params.max_pixels,
    out_records=snakemake.output.records,
    out_manifest=snakemake.output.manifest,
)
