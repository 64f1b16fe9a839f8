"""Generate the embedded synthetic replica: C-NMC layout (the default data set) or class-per-folder."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

from hemaflow.data.synth import generate_cnmc_replica, generate_folder_replica

s = snakemake.params.synthetic
root, seed = snakemake.output.root, snakemake.params.seed
if s["layout"] == "folders":
    keys = ("classes", "cells_per_class", "imbalance", "patients", "image_size")
    generate_folder_replica(root, seed=seed, **{k: s[k] for k in keys})
else:
    keys = ("folds", "patients_per_fold", "holdout_patients", "image_size")
    generate_cnmc_replica(root, seed=seed, **{k: s[k] for k in keys},
                          cells_per_patient=tuple(s["cells_per_patient"]), patient_sheet=snakemake.output.get("sheet"))  # fmt: skip
