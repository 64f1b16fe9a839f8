"""What a trained model must be fed, recorded beside it: preprocess.json."""

# The train job writes it (`record`) from the same params.yaml sections the shards were built
# with; `hemaflow predict` reads it (`load`), so new images get exactly the preprocessing the
# model was trained on, whatever params.yaml says today.

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path


FILE = "preprocess.json"
# The params.yaml `preprocess` keys that define the deterministic preprocessing (render_all keywords).
PREPROCESS_KEYS = ("background", "size", "crop_to_content", "pad_square", "filter")


def record(path, *, preprocess: Mapping, channels: int, classes: list[str], class_descriptions: Mapping | None = None,
           patient_regex: str | None = None, evaluated_copies: Mapping | None = None) -> dict:
    """Write `path` (a model directory's preprocess.json): the preprocess section, channels and
    class names in label_index order; when set, data.class_descriptions (words for the report)
    and data.patient_regex (what predict finds patients with by default); `evaluated_copies`,
    the augmentation (and seed) of val/test when augment.splits names them: evaluate then
    scores an image by the mean over its copies, and predict does the same. Not the positive
    class: that is evaluation's (it comes with the validation threshold in metrics.json), so
    changing it retrains nothing."""
    info = {
        "preprocess": {k: preprocess[k] for k in PREPROCESS_KEYS},
        "channels": int(channels),
        "classes": list(classes),
    }
    # Only when set, so that a model trained without them keeps the record it had.
    if class_descriptions:
        info["class_descriptions"] = {c: str(class_descriptions[c]) for c in classes if c in class_descriptions}
    if patient_regex:
        info["patient_regex"] = patient_regex
    if evaluated_copies:
        info["evaluated_copies"] = dict(evaluated_copies)
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
