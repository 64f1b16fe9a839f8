"""Classify new images with a trained model; per-image table, per-patient table and reports."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

from pathlib import Path

from hemaflow.predict.run import run

p = snakemake.params
run(
    [p.images],
    model=p.model,
    out_dir=Path(snakemake.output.predictions).parent,
    patients=snakemake.input.patients or None,
    patient_regex=p.patient_regex,
    cells=p.cells,
    improve=p.improve,
    batch_size=p.batch_size,
    max_pixels=p.max_pixels,
    min_side=p.min_side,
    say=print,
)
