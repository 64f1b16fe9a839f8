"""The model predict uses: found by combination id, `best` or path, loaded with the preprocessing,
training params, validation threshold and (when evaluate fitted one) temperature it was evaluated with."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from hemaflow import models_io
from hemaflow.models_io import best_of
from hemaflow.train import model_params
from hemaflow.train.grid import is_fused


@dataclass
class Model:
    """A trained Keras model with what predict needs to know about it."""

    keras_model: object
    combo: str
    path: Path
    params: dict  # preprocess.json
    train_info: dict  # train.json ({} when absent)
    threshold: dict | None  # {"threshold", "source", "chosen_on"} for binary models, when evaluated
    params_hash: str = field(default="")
    # {"temperature", "source", "fitted_on"} when evaluate fitted a temperature (evaluate.calibrate), else None
    calibration: dict | None = None

    @property
    def temperature(self) -> float | None:
        return None if self.calibration is None else self.calibration["temperature"]

    @property
    def classes(self) -> list[str]:
        return list(self.params["classes"])

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def positive(self) -> str | None:
        """Binary models: the positive class evaluate chose the threshold for (metrics.json), else
        the class of label index 1."""
        if not self.binary:
            return None
        return (self.threshold or {}).get("positive_class") or self.classes[1]


def resolve_model(spec: str, project: str | Path = ".") -> Path:
    """model.keras for a combination id, `best`, a model directory or a model.keras path."""
    project = Path(project)
    path = Path(spec)
    if path.is_dir():
        path = path / "model.keras"
    if path.suffix == ".keras" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"--model {spec}: no model file at {path}")
        return path
    if spec == "best":
        return _best_cnn(project)
    candidate = project / "results/models" / spec / "model.keras"
    if not candidate.is_file():
        known = sorted(p.parent.name for p in (project / "results/models").glob("*/model.keras"))
        raise FileNotFoundError(
            f"--model {spec!r}: {candidate} does not exist. Use `best`, a path to a model directory "
            f"or model.keras, or one of the trained combinations: {', '.join(known) or 'none yet (run snakemake first)'}"
        )
    return candidate


def _best_cnn(project: Path) -> Path:
    """The highest-ranked image-only combination with a Keras model (the SVM baseline cannot take
    images; a fused model also needs blood counts)."""
    metrics_path = project / "results/reports/metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"--model best: {metrics_path} does not exist; run the pipeline first (snakemake --cores all)")
    metrics = json.loads(metrics_path.read_text())

    def image_only(combo):
        path = project / "results/models" / combo / "model.keras"
        info = path.parent / "train.json"
        return path.is_file() and not (info.is_file() and is_fused(json.loads(info.read_text())))

    try:
        best = best_of(metrics, [c for c in metrics.get("ranking", []) if image_only(c)], str(metrics_path))
    except ValueError as e:
        raise FileNotFoundError(f"--model best: {e}") from None
    return project / "results/models" / best / "model.keras"


def open_model(spec: str, project: str | Path = ".") -> Model:
    """Load the model with its recorded preprocessing, training params, validation threshold and
    temperature (results/evaluation/<combo>/calibration.json)."""
    path = resolve_model(spec, project)
    model_dir = path.parent
    params = model_params.load(model_dir)
    train_json = model_dir / "train.json"
    train_info = json.loads(train_json.read_text()) if train_json.is_file() else {}
    # Keras reports any file that is not a zip as "File not found", which sends one looking for a
    # missing file; a .keras model is a zip archive.
    if not zipfile.is_zipfile(path):
        raise ValueError(f"--model {spec}: {path} is not a Keras archive (a .keras model is a zip file); "
                         "retrain it (snakemake --forcerun train) or point --model at another model")
    keras_model = models_io.load_model(path)
    if models_io.takes_cbc(keras_model):
        raise ValueError(
            f"--model {spec}: {path} also takes blood counts (an image+cbc combination); hemaflow predict "
            "feeds images only. Use its image-only twin (the same id without _cbc) or `best`."
        )
    width = keras_model.output_shape[-1]
    n = len(params["classes"])
    if (width == 1 and n != 2) or (width != 1 and width != n):
        raise ValueError(f"{path}: the model has {width} output(s) but preprocess.json lists {n} classes {params['classes']}")
    combo = model_dir.name
    # results/models/{combo}/ -> results/evaluation/{combo}/metrics.json
    metrics = model_dir.parent.parent / "evaluation" / combo / "metrics.json"
    return Model(keras_model, combo, path, params, train_info, _threshold(metrics) if n == 2 else None,
                 model_params.params_hash(params, train_info), _calibration(metrics.with_name("calibration.json")))


def _threshold(metrics_path: Path) -> dict | None:
    if not metrics_path.is_file():
        return None
    patient = json.loads(metrics_path.read_text()).get("patient") or {}
    if patient.get("threshold") is None:
        return None
    return {"threshold": float(patient["threshold"]), "source": str(metrics_path),
            "chosen_on": patient["threshold_chosen_on"], "positive_class": patient["positive_class"]}


def _calibration(path: Path) -> dict | None:
    """The temperature evaluate fitted on the validation split (calibration.json), or None: no file
    (an evaluation from before calibration existed, or none) or `evaluate.calibrate: none`."""
    if not path.is_file():
        return None
    recorded = json.loads(path.read_text())
    t = recorded.get("temperature")
    if t is None:
        return None
    if not (isinstance(t, (int, float)) and t > 0):
        raise ValueError(f"{path}: temperature {t!r} is not a positive number; rerun evaluate (snakemake --forcerun evaluate)")
    return {"temperature": float(t), "source": str(path), "fitted_on": recorded.get("fitted_on")}
