"""One shard: preprocess (and, for augmented splits, augment) its images into a TFRecord file."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import logging

from hemaflow.augment import sampling
from hemaflow.data.manifest import read_manifest
from hemaflow.augment.preprocess import variants
from hemaflow.augment.shards import VARIANT_KEYS, build_shard, shard_of

split, shard = snakemake.wildcards.split, int(snakemake.wildcards.shard)
augment = snakemake.params.augment
sources = read_manifest(snakemake.input.sources, "sources")
splits = read_manifest(snakemake.input.splits, "splits")
rows = sources.merge(splits[splits["split"] == split][["image_id"]], on="image_id")
if augment is not None:
    # The whole split's plan (every shard job computes the same one), then this shard's part.
    n = len(rows)
    rows = sampling.plan(
        rows,
        split=split,
        seed=snakemake.params.seed,
        copies_per_source=len(variants("", **{k: augment[k] for k in VARIANT_KEYS})),
        sources_per_class=augment["sources_per_class"],
        target_per_class=augment["target_per_class"],
    )
    logging.info("%s: %d of %d sources used, %d extra copies (augment.sources_per_class %s, target_per_class %s)",
                 split, len(rows), n, rows["extra_copies"].sum(), augment["sources_per_class"], augment["target_per_class"])
rows = rows[rows["image_id"].map(lambda i: shard_of(i, snakemake.params.n_shards)) == shard]
build_shard(
    rows[[c for c in ("image_id", "rel_path", "label_index", "extra_copies") if c in rows]],
    root=snakemake.params.root,
    split=split,
    shard=shard,
    augment=augment is not None,
    preprocess=snakemake.params.preprocess,
    augment_params=augment or {},
    seed=snakemake.params.seed,
    max_pixels=snakemake.params.max_pixels,
    out_records=snakemake.output.records,
    out_manifest=snakemake.output.manifest,
)
