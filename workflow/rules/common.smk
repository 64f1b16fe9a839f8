import re
import sys
from pathlib import Path

import yaml

# The library lives in src/, so conda envs and SLURM nodes need no install. Jobs inherit the
# environment (local and SLURM): PYTHONPATH makes them import this checkout's src/hemaflow, the
# code `library_code` hashed, ahead of any copy installed in the venv (e.g. another clone's).
SRC = Path(workflow.basedir) / "src"
sys.path.insert(0, str(SRC))

from hemaflow.data.adapters import check_positive_class, known_classes, reader
from hemaflow.config import check_data_paths, check_replica, typed_cli_config, validate_params
from hemaflow.train.grid import check_patient_sheet, combos, is_fused
from hemaflow.data.manifest import SPLITS
from hemaflow.provenance import library_digest, put_first_on_pythonpath
from hemaflow.safenames import check_name
from snakemake.utils import update_config

put_first_on_pythonpath(SRC)


def config_layers():
    """What set the config, lowest precedence first (the Snakefile's configfile, each
    --configfile, --config), so that a validation message can name where a bad value came from."""
    cli = list(workflow.overwrite_configfiles)
    own = [] if workflow.config_settings.replace_workflow_config else workflow.configfiles[len(cli):]
    shown = [str(f) for f in own] + [f"{f.relative_to(Path.cwd()) if f.is_relative_to(Path.cwd()) else f} (--configfile)" for f in cli]
    layers = [(name, yaml.safe_load(Path(f).read_text()) or {}) for name, f in zip(shown, own + cli)]
    return layers + ([("--config", CLI_CONFIG)] if CLI_CONFIG else [])


# --config 'preprocess={size: 64}': Snakemake merged the nested values in as strings; retyped here.
CLI_CONFIG = typed_cli_config(workflow.config_settings.config or {})
update_config(config, CLI_CONFIG)


# Validated once, here; the schema's defaults fill in every key a config file leaves out, so
# rules and scripts read config[...] and never repeat a default.
LAYERS = config_layers()
config.update(validate_params(config, Path(workflow.basedir) / "workflow/schemas/params.schema.yaml", LAYERS))
check_data_paths(config["data"], Path.cwd(), LAYERS)
check_replica(config, LAYERS)
# The adapter ingest reads the data with (the replica's synthetic.layout decides for adapter synthetic).
READER = reader(config["data"]["adapter"], config["synthetic"]["layout"])

COMBOS = combos(config["train"], config["seed"])
PATIENT_SHEET = config["data"]["patient_sheet"]
check_patient_sheet(COMBOS, PATIENT_SHEET)
BASELINE = "svm_rbf"
BEST = "best"  # results/explain/best/: the leaderboard's best CNN (workflow/rules/explain.smk)
# Combinations whose only input is the image: what explanations and `hemaflow predict` take.
IMAGE_COMBOS = [c for c, params in COMBOS.items() if not is_fused(params)]
MODEL_IDS = list(COMBOS) + ([BASELINE] if config["train"]["baseline_svm"] else [])

SOURCES = "results/manifests/sources.parquet"
CLASSES = "results/manifests/classes.json"  # the class list (position = label_index), written by ingest
POSITIVE = "results/reports/positive_class.json"
SPLITS_TABLE = "results/manifests/splits.parquet"
AUGMENTED = "results/manifests/augmented.parquet"
# The SVM baseline's features of each split's deterministic copies, written by train_baseline.
BASELINE_FEATURES = f"results/models/{BASELINE}/features/{{split}}.parquet"
# Tables behind the figures, one directory per figure kind: what dvc.yaml's `plots` read.
HISTORY = "results/plots/history/{combo}.csv"
PLOT_TABLE = "results/plots/{kind}_{split}/{combo}.csv"
PLOT_KINDS = ["confusion", "roc", "reliability"]
GRID = "results/models/grid.json"
# Where each stage leaves per-combination files (a directory per combo, or <combo>.csv): what
# `prune_stale` clears of combinations no longer in the grid (rules grid and leaderboard).
TRAIN_PER_COMBO = {"results/models": "", str(Path(HISTORY).parent): ".csv"}
EVALUATE_PER_COMBO = {"results/evaluation": ""} | dict.fromkeys(
    expand(str(Path(PLOT_TABLE).parent), kind=PLOT_KINDS, split=SPLITS), ".csv"
)


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
    """What ingest reads: the replica (made by `synthesize`), the user's root, or an index file,
    and the file list (editing a label in it reruns ingest)."""
    d = config["data"]
    files = [d["index"] or d["root"]]
    return files + ([d["filelist"]] if d["adapter"] == "filelist" and d["filelist"] else [])


# The data keys ingest reads: everything but positive_class (which only evaluation uses).
INGEST_KEYS = ("adapter", "name", "root", "index", "patient_regex", "filelist", "strict", "max_pixels",
               "min_side", "classes", "label_map", "on_label_conflict", "near_duplicates")  # fmt: skip


def ingest_params():
    return {k: config["data"][k] for k in INGEST_KEYS} | {"adapter": READER}


# Fail at parse time when the classes are known already (data.classes, or C-NMC's hem/all);
# otherwise rule check_classes checks right after ingest.
_KNOWN_CLASSES = known_classes(READER, config["data"]["classes"], config["data"]["label_map"])
if _KNOWN_CLASSES:
    check_positive_class(_KNOWN_CLASSES, config["data"]["positive_class"])


def augment_params(wildcards):
    """Only augmented splits depend on augmentation parameters, so changing them reruns only those shards."""
    if wildcards.split in config["augment"]["splits"]:
        return {k: v for k, v in config["augment"].items() if k not in ("shards", "contact_sheet", "splits")}
    return None


def evaluated_copies():
    """The augmentation of val/test when augment.splits names them (evaluate averages an image's
    copies, so predict must too: model_params.record), else None."""
    if not {"val", "test"} & set(config["augment"]["splits"]):
        return None
    keys = ("rotations", "mirror", "random_copies", "flip", "shift", "zoom", "shear", "rotation_range", "fill")
    return {k: config["augment"][k] for k in keys} | {"seed": config["seed"]}


def train_threads():
    """Threads of a training job: train.threads, `all` meaning every core this run was given."""
    threads = config["train"]["threads"]
    return (workflow.cores or 1) if threads == "all" else threads


def train_settings(wildcards):
    """The train keys a combination's job reads: a schedule's settings only for its lr_policy, the
    weight decay only for adamw, so changing one reruns only the combinations that use it.
    Sorted, since Snakemake compares params as text and a --configfile overlay reorders keys."""
    skip = ("grid", "search", "trials", "baseline_svm", "fusion")
    settings = {k: v for k, v in sorted(config["train"].items()) if k not in skip}
    combo = COMBOS[wildcards.combo]
    for key, policy in (("cyclic", "triangular"), ("cosine", "cosine"), ("onecycle", "onecycle")):
        if combo["lr_policy"] != policy:
            settings[key] = None
    if combo["optimizer"] != "adamw":
        settings["weight_decay"] = None
    return settings


def weights_file():
    """train.weights when it names a file: an input of train, so a new file retrains."""
    weights = config["train"]["weights"]
    return [] if weights in ("none", "imagenet") else [weights]


def fused_inputs(*manifests):
    """Input function: a fused (image+cbc) combination also reads the patient sheet and the
    manifests named here (to join it to the records); image-only combinations read neither."""

    def inputs(wildcards):
        if not is_fused(COMBOS.get(wildcards.combo, {})):
            return {}
        return {"sheet": PATIENT_SHEET, **{Path(m).stem: m for m in manifests}}

    return inputs


def channels():
    return 4 if config["preprocess"]["background"] == "alpha" else 3


def model_file(combo):
    name = "model.skops" if combo == BASELINE else "model.keras"
    return f"results/models/{combo}/{name}"


# rule predict (predict.smk)
# The schema already refuses `..`; checked again because rule predict empties this directory.
PREDICT_DIR = f"results/predict/{check_name(config['predict']['name'], 'predict.name')}"


def predict_model_inputs():
    """What the chosen model needs built: `best` the leaderboard, a combination its model,
    preprocess.json and evaluation (for the patient threshold); a path nothing."""
    model = config["predict"]["model"]
    if model == "best":
        return ["results/reports/metrics.json"]
    if model in COMBOS:
        return [model_file(model), f"results/models/{model}/preprocess.json", f"results/evaluation/{model}/metrics.json"]
    return []


def data_files():
    """Every file the data half makes that later stages read: the ingest and split tables, the class
    list, every shard and its manifest and the merged manifest. Named in full by the targets, since
    Snakemake rebuilds a missing intermediate only when a job that needs to run asks for it: a deleted
    shard, or the outputs a failed or killed job left out, would otherwise go unnoticed."""
    return [
        SOURCES,
        CLASSES,
        SPLITS_TABLE,
        *(f for split in SPLITS for f in shard_records(split) + shard_manifests(split)),
        AUGMENTED,
    ]


def outputs_of(rule, **wildcards):
    """A rule's output files (its patterns filled in with `wildcards`)."""
    return expand(list(rule.output), **wildcards) if wildcards else list(rule.output)


def prepared_data():
    """Everything the data half leaves: manifests, shards, data reports (DVC stage `prepare`)."""
    made = [*data_files(), *outputs_of(rules.ingest), *outputs_of(rules.split), *outputs_of(rules.contact_sheet, split=SPLITS)]
    return list(dict.fromkeys(made))


def trained_models():
    """Every combination's training outputs, the classical baseline's and the grid, the data they
    read and data.positive_class checked against the classes (no training job waits for that check)
    (DVC stage `train`)."""
    return [
        *data_files(),
        POSITIVE,
        GRID,
        *outputs_of(rules.train, combo=list(COMBOS)),
        *(outputs_of(rules.train_baseline) if config["train"]["baseline_svm"] else []),
    ]


def evaluation_reports():
    """Per-combination evaluation, the leaderboard and the model card, and what they read (DVC stage `evaluate`)."""
    return [*trained_models(), *outputs_of(rules.evaluate, combo=MODEL_IDS), *outputs_of(rules.leaderboard),
            *outputs_of(rules.model_card)]


def explanations():
    """Overlays and the sufficiency test of the leaderboard's best CNN (DVC stage `explain`)."""
    return [f"results/explain/{BEST}/{name}" for name in ("overlays", "cells.csv", "sufficiency.png", "summary.json")]


def explain_inputs(wildcards):
    """The combination's model and predictions; for `best`, every CNN's and the leaderboard (the
    script reads the best from metrics.json)."""
    ids = explained_combos(wildcards)
    inputs = {
        "models": [model_file(c) for c in ids],
        "predictions": [f"results/evaluation/{c}/predictions.parquet" for c in ids],
        "records": [r for split in config["explain"]["splits"] for r in shard_records(split)],
        "augmented": AUGMENTED,
        "classes": CLASSES,
    }
    if wildcards.combo == BEST:
        inputs["metrics"] = "results/reports/metrics.json"
    return inputs


def explained_combos(wildcards):
    return list(IMAGE_COMBOS) if wildcards.combo == BEST else [wildcards.combo]
