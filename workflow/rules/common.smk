import re
import sys
from pathlib import Path

from snakemake.utils import validate

# The library lives in src/. Jobs import it through the symlink workflow/scripts/hemaflow
# (Snakemake puts a script's directory on sys.path), so conda envs and SLURM nodes need no install.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from hemaflow.config import validate_params
from hemaflow.grid import combos
from hemaflow.provenance import library_digest

SCHEMA = Path(workflow.basedir) / "workflow/schemas/params.schema.yaml"
validate_params(config, SCHEMA)
validate(config, schema=str(SCHEMA))

SPLITS = ["train", "val", "test"]
COMBOS = combos(config["train"], config["seed"])
BASELINE = "svm_rbf"
MODEL_IDS = list(COMBOS) + ([BASELINE] if config["train"].get("baseline_svm", True) else [])

SOURCES = "results/manifests/sources.parquet"
SPLITS_TABLE = "results/manifests/splits.parquet"
AUGMENTED = "results/manifests/augmented.parquet"
# The SVM baseline's features of each split's deterministic copies, written by train_baseline.
BASELINE_FEATURES = f"results/models/{BASELINE}/features/{{split}}.parquet"
# Tables behind the figures, one directory per figure kind: what dvc.yaml's `plots` read.
HISTORY = "results/plots/history/{combo}.csv"
PLOT_TABLE = "results/plots/{kind}_{split}/{combo}.csv"


wildcard_constraints:
    split="|".join(SPLITS),
    shard=r"\d{3}",
    combo="|".join(map(re.escape, MODEL_IDS)),


def library_code(script):
    """Hash of the library modules workflow/scripts/<script> imports. Snakemake reruns a job
    when its script changes but does not look into src/hemaflow; as a param this hash makes it
    rerun the jobs whose library code changed (and only those)."""
    return library_digest(Path(workflow.basedir) / "workflow/scripts" / script)


def shard_ids(split):
    return [f"{i:03d}" for i in range(config["augment"]["shards"][split])]


def shard_records(split):
    return [f"results/shards/{split}/{s}.tfrecord" for s in shard_ids(split)]


def shard_manifests(split):
    return [f"results/manifests/shards/{split}/{s}.parquet" for s in shard_ids(split)]


def data_input():
    """What ingest reads: the replica (made by `synthesize`), the user's root, or an index file."""
    index = config["data"].get("index")
    return index if index else config["data"]["root"]


def augment_params(wildcards):
    """Only augmented splits depend on augmentation parameters, so changing them reruns only those shards."""
    if wildcards.split in config["augment"].get("splits", ["train"]):
        return {k: v for k, v in config["augment"].items() if k not in ("shards", "contact_sheet", "splits")}
    return None


def channels():
    return 4 if config["preprocess"].get("background", "alpha") == "alpha" else 3


def model_file(combo):
    name = "model.joblib" if combo == BASELINE else "model.keras"
    return f"results/models/{combo}/{name}"


def prepared_data():
    """Everything the data half leaves: manifests, shards, data reports (DVC stage `prepare`)."""
    return [
        AUGMENTED,
        "results/reports/split_summary.csv",
        *expand("results/reports/contact_sheets/{split}.png", split=SPLITS),
    ]


def trained_models():
    """Every combination's model and the classical baseline (DVC stage `train`)."""
    return [model_file(combo) for combo in MODEL_IDS]


def evaluation_reports():
    """Per-combination evaluation and the leaderboard (DVC stage `evaluate`)."""
    return ["results/reports/leaderboard.csv", "results/reports/metrics.json"]
