"""External validation: score a model on one labelled set of params.yaml `external` (rule
external_set), or write results/external/index.md over every set (rule external)."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import json
import logging
from pathlib import Path

from hemaflow.external.validation import evaluate_external, index_markdown
from hemaflow.files import write_atomic

if snakemake.rule == "external":
    results = [json.loads(Path(p).read_text()) for p in snakemake.input.metrics]
    write_atomic(Path(snakemake.output.index), lambda p: p.write_text(index_markdown(results)))
else:
    p = snakemake.params
    entry = p.entry
    result = evaluate_external(
        entry,
        out_dir=Path(snakemake.output.metrics).parent,
        n_resamples=p.bootstrap,
        confidence=p.confidence,
        ece_bins=p.ece_bins,
        seed=p.seed,
        threads=snakemake.threads,
        where=f"params.yaml external ({entry['name']})",
        say=logging.info,
    )
    logging.info("external %s: %s", entry["name"], json.dumps({k: result["cell"][k] for k in ("n", "accuracy", "balanced_accuracy", "auc")}))
