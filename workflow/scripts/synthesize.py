"""Generate the embedded synthetic C-NMC replica (the default data set)."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

from hemaflow.synth import generate_cnmc_replica

s = snakemake.params.synthetic
generate_cnmc_replica(
    snakemake.output.root,
    seed=snakemake.params.seed,
    folds=s["folds"],
    patients_per_fold=s["patients_per_fold"],
    holdout_patients=s["holdout_patients"],
    cells_per_patient=tuple(s["cells_per_patient"]),
    image_size=s["image_size"],
    patient_sheet=snakemake.output.get("sheet"),
)
