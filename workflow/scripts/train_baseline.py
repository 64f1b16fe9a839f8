"""Classical baseline: shape, GLCM texture and colour features into an RBF SVM."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import json
import time

from hemaflow.baseline import featurize_records, fit_svm, save_svm

start = time.perf_counter()
X, y, _ = featurize_records(list(snakemake.input.train), channels=snakemake.params.channels)
model = fit_svm(X, y, seed=snakemake.params.seed, class_weight=snakemake.params.class_weight)
save_svm(model, snakemake.output.model)
with open(snakemake.output.info, "w") as f:
    json.dump(
        {"model": "svm_rbf", "n_train": int(len(y)), "wall_seconds": round(time.perf_counter() - start, 2)},
        f,
        indent=2,
    )
