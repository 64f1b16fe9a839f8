"""Rank every combination (and the baseline) on validation figures; test figures of the selected one alone."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import json
import logging
import shutil

from hemaflow.train.grid import prune_stale
from hemaflow.evaluate.leaderboard import build_leaderboard, choose_ranking, headline, write_leaderboard
from hemaflow.plots import leaderboard_chart

for path in prune_stale(snakemake.params.prune, snakemake.params.ids):
    logging.info("removed %s: its combination is no longer in the grid", path)

rank_by = snakemake.params.rank_by
entries = {}
for combo, metrics_path, info_path in zip(snakemake.params.ids, snakemake.input.metrics, snakemake.input.infos):
    with open(metrics_path) as m, open(info_path) as i:
        entries[combo] = (snakemake.params.combos.get(combo, {"model": combo}), json.load(m), json.load(i))
board = build_leaderboard(entries, rank_by)
ranking = choose_ranking(board, rank_by)
logging.info("ranked by %s (ties: %s): %s", ranking.column, ranking.tie_break, ranking.rule)
write_leaderboard(board, rank_by, snakemake.output.csv, snakemake.output.md, snakemake.output.every_test)
leaderboard_chart(board, ranking.column, snakemake.output.png, rule=ranking.rule, tie_break=ranking.tie_break)
with open(snakemake.output.metrics, "w") as f:
    json.dump(headline(board, rank_by, entries), f, indent=2, sort_keys=True)
# Verbatim copies of every combination's metrics.json in a directory of metric files only, the
# one dvc.yaml declares as metrics: results/evaluation/<combo>/ also holds predictions and PNGs,
# which `dvc metrics show` would try (and fail) to read as metrics.
for metrics_path, copy in zip(snakemake.input.metrics, snakemake.output.by_combo):
    shutil.copyfile(metrics_path, copy)
