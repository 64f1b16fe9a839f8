"""Predict on new images with a trained model: the training's own preprocessing, then the model."""

# A model is found by combination id (results/models/{combo}/), `best` (the best CNN on the
# leaderboard, results/reports/metrics.json) or a path. Its preprocess.json (written by the
# train job, `hemaflow.train.model_params`) says how its images were prepared; every new image is
# decoded by `images.load_rgb` (the validation ingest uses: bad files are quarantined with the
# same reasons) and rendered by `preprocess.render_all` as the deterministic copy that
# augment_shard writes for validation and test images, so the model sees exactly what it was
# evaluated on.
#
# Patient level (binary models): a patient's positive-cell fraction against the threshold that
# evaluate chose on the validation patients (results/evaluation/{combo}/metrics.json, section
# "patient"); multi-class models get per-patient class counts only. When evaluate fitted a
# temperature on the validation split (evaluate.calibrate: temperature, calibration.json beside
# metrics.json), every image's probabilities are scaled by it, as evaluate's were.

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hemaflow.evaluate.calibration import apply_temperature
from hemaflow.data.images import IMAGE_EXTENSIONS, MIN_SIDE, REASONS, SKIP_REASONS, ImageRejected, implausible, load_rgb
from hemaflow.files import write_atomic
from hemaflow.models_io import class_scores, json_safe
from hemaflow.predict.inputs import cell_patients, check_options, list_inputs, patient_pattern, read_patient_sheet
from hemaflow.predict.model import Model, open_model
from hemaflow.augment.preprocess import render_all, variants

UNASSIGNED = "unassigned"  # cells whose patient id could not be found
# Cells without a patient id may come from several patients: they get counts, never a pooled
# positive fraction, decision or report page.
NO_PATIENT = "no decision: no patient id (give --cells or --patient-regex)"


def model_input(rgb: np.ndarray, params: dict) -> np.ndarray:
    """The model's input image (k×k×C uint8) for one decoded source: the deterministic copy
    augment_shard writes for it (rotation 0, no mirror, no random transform)."""
    (variant,) = variants("predict")
    return render_all(rgb, [variant], **params["preprocess"])[0]


def model_inputs(rgb: np.ndarray, params: dict, key: str) -> np.ndarray:
    """Every copy the model's val/test images were scored over (the deterministic one first):
    one image, or with `evaluated_copies` (augmented val/test) the same rotations, mirrors and
    random copies, drawn per `key` (the file) with the recorded seed. Evaluate's extra copies
    of up-sampled classes depend on the true class, which predict cannot know: they are left out."""
    copies = params.get("evaluated_copies")
    if not copies:
        return model_input(rgb, params)[None]
    shape = {k: v for k, v in copies.items() if k not in ("fill", "seed")}
    return render_all(rgb, variants(key, **shape, seed=copies["seed"]), **params["preprocess"], fill=copies["fill"])


def probabilities(keras_model, images: np.ndarray) -> np.ndarray:
    """(N, n_classes) float64 from uint8 model inputs (converted as the training input is)."""
    from hemaflow.augment.records import to_unit

    return class_scores(keras_model, np.asarray(to_unit(images)))


def predict_files(
    model: Model,
    files: Sequence[Path],
    *,
    batch_size: int = 64,
    max_pixels: int = 40_000_000,
    min_side: int = MIN_SIDE,
    keep_inputs: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = tqdm.write,
) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """One row per file: file, status, reason, p_<class>, predicted_label; bad or implausible
    files (`implausible`) are quarantined (one line each through `say`) and never stop the others.

    Returns the table and, with keep_inputs, {row: model input} for the report; `progress`
    shows a tqdm bar.
    """
    classes = model.classes
    rows: list[dict] = []
    inputs: dict[int, np.ndarray] = {}
    batch: list[tuple[int, np.ndarray]] = []
    total, copies = np.zeros((len(files), len(classes))), np.zeros(len(files))

    def flush() -> None:  # a file's probability is the mean over its copies, as evaluate's per_image
        if batch:
            rows_of = np.array([i for i, _ in batch])
            np.add.at(total, rows_of, probabilities(model.keras_model, np.stack([x for _, x in batch])))
            np.add.at(copies, rows_of, 1)
            batch.clear()

    for i, f in enumerate(tqdm(files, desc="predict", unit="image", disable=not progress)):
        row = {"file": str(f), "status": "ok", "reason": None, "detail": None}
        try:
            rgb = load_rgb(f, max_pixels)[0]
            bad = implausible(rgb, min_side)
            if bad:
                raise ImageRejected(bad, f"{rgb.shape[1]}x{rgb.shape[0]} px; {REASONS[bad]}")
            xs = model_inputs(rgb, model.params, str(f))
        except (ImageRejected, OSError) as e:  # OSError: no permission, or an I/O error while reading
            reason, detail = (e.reason, e.detail) if isinstance(e, ImageRejected) else ("unreadable", str(e))
            row.update(status="quarantined", reason=reason, detail=detail or REASONS[reason])
            say(f"quarantined {f}: {reason} ({row['detail']})")
        else:
            batch.extend((i, x) for x in xs)
            if keep_inputs:
                inputs[i] = xs[0]
            if len(batch) >= batch_size:
                flush()
        rows.append(row)
    flush()
    with np.errstate(invalid="ignore"):
        proba = total / copies[:, None]  # NaN for files that were not scored
    scored = copies > 0
    if model.temperature is not None and scored.any():
        # as evaluate: the temperature scales the image's probability (the mean over its copies)
        proba[scored] = apply_temperature(proba[scored], model.temperature)
    table = pd.DataFrame(rows, columns=["file", "status", "reason", "detail"])
    for c, name in enumerate(classes):
        table[f"p_{name}"] = proba[:, c]
    ok = table["status"] == "ok"
    table["predicted_label"] = pd.Series(None, index=table.index, dtype=object)
    if ok.any():
        table.loc[ok, "predicted_label"] = np.asarray(classes, dtype=object)[proba[ok.to_numpy()].argmax(axis=1)]
    return table, inputs


# ---------------------------------------------------------------- patients


def patient_summary(table: pd.DataFrame, model: Model) -> pd.DataFrame:
    """Per patient: n_cells, n_quarantined, per-class counts; binary models add n_positive and
    frac_positive, and with a validation threshold, threshold and decision ("positive for
    <class>" / "negative for <class>"). Skipped files (not images) are not cells; the
    UNASSIGNED row gets counts only (NO_PATIENT)."""
    table = table[table["status"] != "skipped"]
    ok = table[table["status"] == "ok"]
    groups = table.groupby("patient_id", sort=True)
    out = pd.DataFrame({"n_cells": ok.groupby("patient_id").size(),
                        "n_quarantined": groups["status"].apply(lambda s: int((s == "quarantined").sum()))})
    out["n_cells"] = out["n_cells"].fillna(0).astype(int)
    for name in model.classes:
        out[f"n_{name}"] = ok[ok["predicted_label"] == name].groupby("patient_id").size().reindex(out.index).fillna(0).astype(int)
    if model.binary:
        positive = model.positive
        out["n_positive"] = out[f"n_{positive}"]
        assigned = out.index != UNASSIGNED
        out["frac_positive"] = out["n_positive"] / out["n_cells"].where((out["n_cells"] > 0) & assigned)
        if model.threshold is not None:
            t = model.threshold["threshold"]
            out["threshold"] = t
            out["decision"] = np.where(~assigned, NO_PATIENT, np.where(
                out["frac_positive"].isna(), "no usable cells",
                np.where(out["frac_positive"] >= t, f"positive for {positive}", f"negative for {positive}")))
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
    return (f"a patient is positive for {positive!r} when its fraction of {positive!r} cells is >= {t['threshold']:.4g}, "
            f"else negative for {positive!r}; the threshold was chosen on the {t['chosen_on']} patients by evaluate "
            f"({t['source']}); cells without a patient id get no decision")


# ---------------------------------------------------------------- the command


def _replace_dir(new: Path, final: Path) -> None:
    """Put the folder `new` at `final`, the old one (if any) renamed away first and then deleted."""
    old = final.with_name(f".{final.name}.{os.getpid()}.old")
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


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
    min_side: int = MIN_SIDE,
    reports: bool = True,
    say: Callable[[str], None] = tqdm.write,
) -> dict:
    """Predict every input, write predictions.{parquet,csv}, patients.csv, summary.json and
    reports/<patient>.html to `out_dir`; return the summary. Every file under an input folder
    gets a row (status ok, quarantined or skipped, with the reason)."""
    check_options(inputs, out_dir=out_dir, patients=patients, patient_regex=patient_regex, cells=cells,
                  batch_size=batch_size, max_pixels=max_pixels, min_side=min_side)
    loaded = open_model(model, project)
    if patient_regex is None and loaded.params.get("patient_regex"):
        patient_regex = loaded.params["patient_regex"]  # what the model's patients were found with (data.patient_regex)
        patient_pattern(patient_regex)
        say(f"patient ids from file names by the model's recorded data.patient_regex {patient_regex!r}")
    files, listed = list_inputs(inputs)
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, inputs))} (looked for {list(IMAGE_EXTENSIONS)})")
    say(f"model {loaded.combo} ({loaded.path}), params hash {loaded.params_hash}; {len(files)} image(s)")
    table, model_inputs = predict_files(loaded, files, batch_size=batch_size, max_pixels=max_pixels, min_side=min_side,
                                        keep_inputs=reports, say=say)
    if listed:
        # after the decoded rows, so that model_inputs' row numbers still hold
        reasons = [r for _, r in listed]
        table = pd.concat([table, pd.DataFrame({
            "file": [str(f) for f, _ in listed], "status": ["quarantined" if r in REASONS else "skipped" for r in reasons],
            "reason": reasons, "detail": [REASONS.get(r) or SKIP_REASONS[r] for r in reasons]})], ignore_index=True)
        say(f"not decoded: {pd.Series(reasons).value_counts().to_dict()} (one row each in predictions.csv)")
    roots = [Path(p) for p in inputs if Path(p).is_dir()]
    paths = [*files, *(f for f, _ in listed)]
    table.insert(1, "patient_id", [p or UNASSIGNED for p in cell_patients(paths, regex=patient_regex, cells=cells, roots=roots)])
    sheet = read_patient_sheet(patients) if patients else None
    if sheet is not None:
        unknown = sorted(set(table["patient_id"]) - set(sheet.index) - {UNASSIGNED})
        if unknown:
            say(f"{len(unknown)} patient id(s) not in {patients}: {unknown[:10]} (reported without patient fields)")
    per_patient = patient_summary(table, loaded)
    note = threshold_note(loaded)
    assigned = per_patient["patient_id"] != UNASSIGNED
    unassigned = per_patient[~assigned].to_dict("records")
    if unassigned:
        say(f"{unassigned[0]['n_cells']} usable cell(s) without a patient id: {NO_PATIENT}, no report page")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "predictions.parquet", lambda p: table.to_parquet(p, index=False))
    write_atomic(out / "predictions.csv", lambda p: table.to_csv(p, index=False))
    summary = {
        "model": loaded.combo,
        "model_path": str(loaded.path),
        "params_hash": loaded.params_hash,
        "preprocess": loaded.params["preprocess"],
        "classes": loaded.classes,
        "threshold": loaded.threshold,
        # the temperature applied to every probability (evaluate.calibrate), or null: none
        "calibration": loaded.calibration or {"temperature": None},
        "decision_rule": note,
        "improve": "display only" if improve else False,
        "images": int(len(table)),
        "status": {str(k): int(v) for k, v in table["status"].value_counts().sort_index().items()},
        "reasons": {str(k): int(v) for k, v in table["reason"].dropna().value_counts().sort_index().items()},
        "patients": int(assigned.sum()),
    }
    if unassigned:
        summary["unassigned"] = {"cells": int(unassigned[0]["n_cells"]), "quarantined": int(unassigned[0]["n_quarantined"]),
                                 "decision": NO_PATIENT}
    if reports:
        from hemaflow.predict.report import write_patient_reports

        # the pages go to a fresh folder that becomes reports/ once every page is written
        staging = out / f".reports.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            summary["reports"] = write_patient_reports(
                table, per_patient[assigned], model_inputs, loaded, staging, sheet=sheet, note=note, improve=improve
            )
            _replace_dir(staging, out / "reports")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    # Each row names its own page (empty when it has none): ids that differ only in case or accents never share one.
    pages = per_patient["patient_id"].map(summary.get("reports", {}))
    write_atomic(out / "patients.csv", lambda p: per_patient.assign(report=pages).to_csv(p, index=False))
    write_atomic(out / "summary.json", lambda p: p.write_text(json.dumps(json_safe(summary), indent=2) + "\n"))
    say(f"{summary['status']} -> {out}; {note}")
    return summary

