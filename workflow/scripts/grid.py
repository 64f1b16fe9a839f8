"""Record the grid's combinations and delete what combinations no longer in it left behind."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])

import json
import logging

from hemaflow.train.grid import prune_stale

for path in prune_stale(snakemake.params.prune, snakemake.params.ids):
    logging.info("removed %s: its combination is no longer in the grid", path)
with open(snakemake.output[0], "w") as f:
    json.dump({"ids": snakemake.params.ids, "combos": snakemake.params.combos}, f, indent=2)
