"""Classical baseline: shape, GLCM texture and colour features into an RBF SVM.

Featurises the deterministic copy of every source image of each split once (the features
tables evaluate reads) and fits the SVM on the train split's."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import json
import time

import pandas as pd

from hemaflow.evaluate.baseline import featurize_split, fit_baseline, save_svm

start = time.perf_counter()
features = {}
for split, path in zip(snakemake.params.splits, snakemake.output.features):
    features[split] = featurize_split(list(snakemake.input[split]), channels=snakemake.params.channels)
    features[split].to_parquet(path, index=False)
patients = pd.read_parquet(snakemake.input.sources, columns=["image_id", "patient_id"]).set_index("image_id")["patient_id"]
model = fit_baseline(features["train"], seed=snakemake.params.seed, class_weight=snakemake.params.class_weight,
                     patients=patients)  # fmt: skip
save_svm(model, snakemake.output.model)
with open(snakemake.output.info, "w") as f:
    json.dump(
        {"model": "svm_rbf", "n_train": len(features["train"]), "wall_seconds": round(time.perf_counter() - start, 2)},
        f,
        indent=2,
    )
