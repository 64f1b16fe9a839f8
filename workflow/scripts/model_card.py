"""Write the selected model's card (results/reports/model_card.md) from this run's outputs."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])

import hashlib
import json
from pathlib import Path

import pandas as pd

from hemaflow.evaluate.model_card import model_card
from hemaflow.provenance import library_digest
from hemaflow.train.model_params import params_hash


def load(path):
    with open(path) as f:
        return json.load(f)


headline = load(snakemake.input.headline)
combo = headline["best"]
index = snakemake.params.ids.index(combo)
model_dir = Path(snakemake.input.infos[index]).parent
preprocess = load(model_dir / "preprocess.json") if (model_dir / "preprocess.json").is_file() else None
train_info = load(snakemake.input.infos[index])
scripts = Path(snakemake.scriptdir)
provenance = {
    f"library code of {name}": library_digest(scripts / name) for name in ("train.py", "evaluate.py", "leaderboard.py")
} | {
    "params (validated, defaults filled)": hashlib.sha256(json.dumps(snakemake.params.config, sort_keys=True, default=str).encode()).hexdigest(),
    "model params (preprocess.json + train.json, first 12)": params_hash(preprocess or {}, train_info),
}
card = model_card(
    headline=headline,
    evaluation=load(snakemake.input.metrics[index]),
    train_info=train_info,
    preprocess=preprocess,
    ingest=load(snakemake.input.ingest),
    split_summary=pd.read_csv(snakemake.input.split_summary),
    split_notes=Path(snakemake.input.split_notes).read_text(),
    params=snakemake.params.config,
    provenance=provenance,
)
Path(snakemake.output.card).write_text(card + "\n")
