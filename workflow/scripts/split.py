"""Patient-disjoint, class-stratified, seeded train/val/test split."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import logging

from hemaflow.data.manifest import read_manifest, write_manifest
from hemaflow.data.splits import assign_splits, split_summary

sources = read_manifest(snakemake.input[0], "sources")
p = snakemake.params.split
splits, notes = assign_splits(
    sources,
    seed=snakemake.params.seed,
    ratios=tuple(p["ratios"]),
    use_dataset_folds=p["use_dataset_folds"],
    val_fold=p["val_fold"],
)
write_manifest(splits, snakemake.output.splits, "splits")
split_summary(sources, splits).to_csv(snakemake.output.summary, index=False)
with open(snakemake.output.notes, "w") as f:
    f.write("".join(f"{n}\n" for n in notes))
for n in notes:
    logging.warning(n)
