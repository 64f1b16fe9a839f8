"""Predict on new images with a trained model: the training's own preprocessing, then the model.

A model is found by combination id (results/models/{combo}/), `best` (the best CNN on the
leaderboard, results/reports/metrics.json) or a path. Its preprocess.json (written by the
train job, `hemaflow.model_params`) says how its images were prepared; every new image is
decoded by `images.load_rgb` (the validation ingest uses: bad files are quarantined with the
same reasons) and rendered by `preprocess.render_all` as the deterministic copy that
augment_shard writes for validation and test images, so the model sees exactly what it was
evaluated on.

Patient level (binary models): a patient's positive-cell fraction against the threshold that
evaluate chose on the validation patients (results/evaluation/{combo}/metrics.json, section
"patient"); multi-class models get per-patient class counts only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hemaflow import model_params
from hemaflow.evaluate import json_safe
from hemaflow.grid import is_fused
from hemaflow.explain import class_scores
from hemaflow.images import REASONS, ImageRejected, load_rgb
from hemaflow.preprocess import render_all, variants

# What a folder is searched for (other files are listed as skipped; named files are always tried).
IMAGE_SUFFIXES = frozenset({".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"})
# C-NMC cell names, UID_<patient>_<image>_<cell>_<label>.bmp (adapters.CNMC_NAME, which also
# upper-cases the patient: h3 and H3 are one patient).
CNMC_PATIENT_REGEX = r"^UID_(?P<patient>[Hh]?\d+)_"
# A C-NMC holdout folder's cells are renamed 1..N; the labels CSV beside it maps each new
# name to the original UID_ name (column Patient_ID), which carries the patient.
CNMC_CELL_SHEET = "{folder}_labels.csv"
PATIENT_FIELDS = ("patient_id", "name", "age", "sex", "sample_date")
UNASSIGNED = "unassigned"  # cells whose patient id could not be found


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


# ---------------------------------------------------------------- the model


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
    ranked = list(json.loads(metrics_path.read_text()).get("combos", {}))  # in leaderboard order
    for combo in ranked:
        path = project / "results/models" / combo / "model.keras"
        info = path.parent / "train.json"
        if path.is_file() and not (info.is_file() and is_fused(json.loads(info.read_text()))):
            return path
    raise FileNotFoundError(f"--model best: none of the combinations in {metrics_path} has an image-only model.keras ({ranked})")


def load_model(spec: str, project: str | Path = ".") -> Model:
    """Load the model with its recorded preprocessing, training params and validation threshold."""
    from hemaflow import fusion  # TensorFlow only once a model is loaded

    path = resolve_model(spec, project)
    model_dir = path.parent
    params = model_params.load(model_dir)
    train_json = model_dir / "train.json"
    train_info = json.loads(train_json.read_text()) if train_json.is_file() else {}
    keras_model = fusion.load_model(path)
    if fusion.is_fused(keras_model):
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
                 model_params.params_hash(params, train_info))


def _threshold(metrics_path: Path) -> dict | None:
    if not metrics_path.is_file():
        return None
    patient = json.loads(metrics_path.read_text()).get("patient") or {}
    if patient.get("threshold") is None:
        return None
    return {"threshold": float(patient["threshold"]), "source": str(metrics_path),
            "chosen_on": patient["threshold_chosen_on"], "positive_class": patient["positive_class"]}


# ---------------------------------------------------------------- inputs


def list_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(files to predict, files skipped): folders searched recursively for image suffixes,
    named files always kept (a missing or bad one is quarantined, not dropped)."""
    files, skipped = [], []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")):
                (files if f.suffix.lower() in IMAGE_SUFFIXES else skipped).append(f)
        else:
            files.append(p)
    return files, skipped


def model_input(rgb: np.ndarray, params: dict) -> np.ndarray:
    """The model's input image (k×k×C uint8) for one decoded source: the deterministic copy
    augment_shard writes for it (rotation 0, no mirror, no random transform)."""
    (variant,) = variants("predict")
    return render_all(rgb, [variant], **params["preprocess"])[0]


def probabilities(keras_model, images: np.ndarray) -> np.ndarray:
    """(N, n_classes) float64 from uint8 model inputs (converted as the training input is)."""
    from hemaflow.records import to_unit

    return class_scores(keras_model, np.asarray(to_unit(images)))


def predict_files(
    model: Model,
    files: Sequence[Path],
    *,
    batch_size: int = 64,
    max_pixels: int = 40_000_000,
    keep_inputs: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = tqdm.write,
) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """One row per file: file, status, reason, p_<class>, predicted_label; bad files are
    quarantined (one line each through `say`) and never stop the others.

    Returns the table and, with keep_inputs, {row: model input} for the report; `progress`
    shows a tqdm bar.
    """
    classes = model.classes
    rows: list[dict] = []
    inputs: dict[int, np.ndarray] = {}
    batch: list[tuple[int, np.ndarray]] = []
    proba = np.full((len(files), len(classes)), np.nan)

    def flush() -> None:
        if batch:
            proba[[i for i, _ in batch]] = probabilities(model.keras_model, np.stack([x for _, x in batch]))
            batch.clear()

    for i, f in enumerate(tqdm(files, desc="predict", unit="image", disable=not progress)):
        row = {"file": str(f), "status": "ok", "reason": None, "detail": None}
        try:
            x = model_input(load_rgb(f, max_pixels)[0], model.params)
        except ImageRejected as e:
            row.update(status="quarantined", reason=e.reason, detail=e.detail or REASONS[e.reason])
            say(f"quarantined {f}: {e.reason} ({row['detail']})")
        else:
            batch.append((i, x))
            if keep_inputs:
                inputs[i] = x
            if len(batch) >= batch_size:
                flush()
        rows.append(row)
    flush()
    table = pd.DataFrame(rows, columns=["file", "status", "reason", "detail"])
    for c, name in enumerate(classes):
        table[f"p_{name}"] = proba[:, c]
    ok = table["status"] == "ok"
    table["predicted_label"] = pd.Series(None, index=table.index, dtype=object)
    if ok.any():
        table.loc[ok, "predicted_label"] = np.asarray(classes, dtype=object)[proba[ok.to_numpy()].argmax(axis=1)]
    return table, inputs


# ---------------------------------------------------------------- patients


def cell_patients(files: Sequence[Path], *, regex: str | None = None, cells: str | Path | None = None) -> list[str | None]:
    """The patient id of each file: from a cell sheet (columns file,patient_id; or a C-NMC
    labels CSV, new_names,Patient_ID), else from `regex` (named group `patient`, searched in
    the file name; default the C-NMC name pattern). A C-NMC holdout folder's labels CSV beside
    it is used without being named."""
    pattern = re.compile(regex or CNMC_PATIENT_REGEX)
    if "patient" not in pattern.groupindex:
        raise ValueError(f"--patient-regex {pattern.pattern!r} needs a named group, e.g. (?P<patient>[^_]+)")

    def from_name(name: str) -> str | None:
        m = pattern.search(name)
        if not m or not m["patient"]:
            return None
        return m["patient"].upper() if regex is None else m["patient"]

    sheets: dict[Path, dict[str, str | None]] = {}

    def sheet_for(f: Path) -> dict[str, str | None]:
        path = Path(cells) if cells else f.parent.with_name(CNMC_CELL_SHEET.format(folder=f.parent.name))
        if path not in sheets:
            sheets[path] = _read_cell_sheet(path, from_name) if (cells or path.is_file()) else {}
        return sheets[path]

    return [sheet_for(f).get(f.name) or from_name(f.name) for f in files]


def _read_cell_sheet(path: Path, from_name: Callable[[str], str | None]) -> dict[str, str | None]:
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if {"file", "patient_id"} <= set(table.columns):
        return {Path(f).name: (p or None) for f, p in zip(table["file"], table["patient_id"])}
    if {"new_names", "Patient_ID"} <= set(table.columns):  # C-NMC: Patient_ID is the original UID_ name
        return {n: from_name(p) for n, p in zip(table["new_names"], table["Patient_ID"])}
    raise ValueError(f"{path}: a cell sheet needs columns file,patient_id (or C-NMC's new_names,Patient_ID); it has {list(table.columns)}")


def read_patient_sheet(path: str | Path) -> pd.DataFrame:
    """patient_id, name, age, sex, sample_date and any further (e.g. CBC) columns; one row per patient."""
    sheet = pd.read_csv(path, dtype={"patient_id": str}, keep_default_na=False, na_values=[""])
    missing = [c for c in PATIENT_FIELDS if c not in sheet.columns]
    if missing:
        raise ValueError(f"--patients {path}: missing column(s) {missing}; expected {list(PATIENT_FIELDS)} plus optional CBC columns")
    dup = sheet["patient_id"][sheet["patient_id"].duplicated()]
    if len(dup):
        raise ValueError(f"--patients {path}: patient_id listed more than once: {sorted(set(dup))[:10]}")
    return sheet.set_index("patient_id", drop=False)


def patient_summary(table: pd.DataFrame, model: Model) -> pd.DataFrame:
    """Per patient: n_cells, n_quarantined, per-class counts; binary models with a validation
    threshold add n_positive, frac_positive, threshold and decision."""
    ok = table[table["status"] == "ok"]
    groups = table.groupby("patient_id", sort=True)
    out = pd.DataFrame({"n_cells": ok.groupby("patient_id").size(), "n_quarantined": groups["status"].apply(lambda s: int((s != "ok").sum()))})
    out["n_cells"] = out["n_cells"].fillna(0).astype(int)
    for name in model.classes:
        out[f"n_{name}"] = ok[ok["predicted_label"] == name].groupby("patient_id").size().reindex(out.index).fillna(0).astype(int)
    if model.binary:
        positive = model.positive
        out["n_positive"] = out[f"n_{positive}"]
        out["frac_positive"] = out["n_positive"] / out["n_cells"].where(out["n_cells"] > 0)
        if model.threshold is not None:
            t = model.threshold["threshold"]
            out["threshold"] = t
            out["decision"] = np.where(out["frac_positive"].isna(), "no usable cells",
                                       np.where(out["frac_positive"] >= t, positive, f"not {positive}"))
    return out.reset_index()


def threshold_note(model: Model) -> str:
    """Where the patient-level decision comes from, in one sentence for the outputs."""
    if not model.binary:
        return f"multi-class model ({len(model.classes)} classes): per-patient class counts only, no patient-level decision"
    positive = model.positive
    if model.threshold is None:
        return (f"no patient-level decision: no validation threshold found for {model.combo} "
                "(results/evaluation/<combo>/metrics.json, section patient); positive-cell fractions only")
    t = model.threshold
    return (f"patient is called {positive!r} when its fraction of {positive!r} cells is >= {t['threshold']:.4g}, "
            f"the threshold chosen on the {t['chosen_on']} patients by evaluate ({t['source']})")


# ---------------------------------------------------------------- the command


def run(
    inputs: Sequence[str | Path],
    *,
    model: str,
    out_dir: str | Path,
    project: str | Path = ".",
    patients: str | Path | None = None,
    patient_regex: str | None = None,
    cells: str | Path | None = None,
    improve: bool = False,
    batch_size: int = 64,
    max_pixels: int = 40_000_000,
    reports: bool = True,
    say: Callable[[str], None] = tqdm.write,
) -> dict:
    """Predict every input, write predictions.{parquet,csv}, patients.csv, summary.json and
    reports/<patient>.html to `out_dir`; return the summary."""
    loaded = load_model(model, project)
    files, skipped = list_inputs(inputs)
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, inputs))} (looked for {sorted(IMAGE_SUFFIXES)})")
    if skipped:
        say(f"skipped {len(skipped)} file(s) without an image suffix, e.g. {skipped[0]}")
    say(f"model {loaded.combo} ({loaded.path}), params hash {loaded.params_hash}; {len(files)} image(s)")
    table, model_inputs = predict_files(loaded, files, batch_size=batch_size, max_pixels=max_pixels, keep_inputs=reports, say=say)
    table.insert(1, "patient_id", [p or UNASSIGNED for p in cell_patients(files, regex=patient_regex, cells=cells)])
    sheet = read_patient_sheet(patients) if patients else None
    if sheet is not None:
        unknown = sorted(set(table["patient_id"]) - set(sheet.index) - {UNASSIGNED})
        if unknown:
            say(f"{len(unknown)} patient id(s) not in {patients}: {unknown[:10]} (reported without patient fields)")
    per_patient = patient_summary(table, loaded)
    note = threshold_note(loaded)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out / "predictions.parquet", index=False)
    table.to_csv(out / "predictions.csv", index=False)
    per_patient.to_csv(out / "patients.csv", index=False)
    summary = {
        "model": loaded.combo,
        "model_path": str(loaded.path),
        "params_hash": loaded.params_hash,
        "preprocess": loaded.params["preprocess"],
        "classes": loaded.classes,
        "threshold": loaded.threshold,
        "decision_rule": note,
        "improve": "display only" if improve else False,
        "images": int(len(table)),
        "status": {str(k): int(v) for k, v in table["status"].value_counts().sort_index().items()},
        "reasons": {str(k): int(v) for k, v in table["reason"].dropna().value_counts().sort_index().items()},
        "patients": int(len(per_patient)),
    }
    if reports:
        from hemaflow.report import write_patient_reports

        summary["reports"] = write_patient_reports(
            table, per_patient, model_inputs, loaded, out / "reports", sheet=sheet, note=note, improve=improve
        )
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    say(f"{summary['status']} -> {out}; {note}")
    return summary

