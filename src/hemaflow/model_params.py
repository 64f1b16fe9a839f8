"""What a trained model must be fed, recorded beside it: preprocess.json.

The train job writes it (`record`) from the same params.yaml sections the shards were built
with; `hemaflow predict` reads it (`load`), so new images get exactly the preprocessing the
model was trained on, whatever params.yaml says today.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from hemaflow.preprocess import render_all

FILE = "preprocess.json"
# render_all keywords that define the deterministic preprocessing, with render_all's defaults
# for keys params.yaml leaves out.
PREPROCESS_DEFAULTS = {
    k: inspect.signature(render_all).parameters[k].default
    for k in ("background", "size", "crop_to_content", "pad_square", "filter")
}


def class_names(sources: pd.DataFrame) -> list[str]:
    """Class names in label_index order, from the sources manifest."""
    known = sources[sources["label_index"] >= 0].drop_duplicates("label_index").sort_values("label_index")
    return [str(c) for c in known["label"]]


def record(path, *, preprocess: Mapping, channels: int, classes: list[str], positive_class: str | None) -> dict:
    """Write `path` (a model directory's preprocess.json): the preprocess section, channels,
    class names in label_index order and, for two classes, the positive class."""
    info = {
        "preprocess": {k: preprocess.get(k, default) for k, default in PREPROCESS_DEFAULTS.items()},
        "channels": int(channels),
        "classes": list(classes),
        "positive_class": positive_class if len(classes) == 2 else None,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def load(model_dir) -> dict:
    """preprocess.json of a model directory; a clear error when it is missing."""
    path = Path(model_dir) / FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the model does not record how its images were preprocessed. "
            "Models trained before preprocess.json existed must be retrained "
            "(snakemake --cores all --forcerun train)."
        )
    return json.loads(path.read_text())


def params_hash(info: Mapping, train_info: Mapping | None = None) -> str:
    """12 hex chars of sha256 over the recorded preprocessing and training params (provenance)."""
    payload = json.dumps({"model_params": dict(info), "train": dict(train_info or {})}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
