"""Rank every combination (and the baseline) by the chosen validation metric."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import json
import logging

from hemaflow.grid import prune_stale
from hemaflow.leaderboard import build_leaderboard, headline, write_leaderboard
from hemaflow.plots import leaderboard_chart

for path in prune_stale(snakemake.params.prune, snakemake.params.ids):
    logging.info("removed %s: its combination is no longer in the grid", path)

rank_by = snakemake.params.rank_by
entries = {}
for combo, metrics_path, info_path in zip(snakemake.params.ids, snakemake.input.metrics, snakemake.input.infos):
    with open(metrics_path) as m, open(info_path) as i:
        entries[combo] = (snakemake.params.combos.get(combo, {"model": combo}), json.load(m), json.load(i))
board = build_leaderboard(entries, rank_by)
write_leaderboard(board, snakemake.output.csv, snakemake.output.md)
leaderboard_chart(board, rank_by, snakemake.output.png)
with open(snakemake.output.metrics, "w") as f:
    json.dump(headline(board, rank_by), f, indent=2, sort_keys=True)
