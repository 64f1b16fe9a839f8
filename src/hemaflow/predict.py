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

import io
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hemaflow import model_params
from hemaflow.adapters import walk_tree
from hemaflow.evaluate import json_safe
from hemaflow.grid import is_fused
from hemaflow.leaderboard import best_of
from hemaflow.explain import class_scores
from hemaflow.images import IMAGE_EXTENSIONS, MIN_SIDE, REASONS, SKIP_REASONS, ImageRejected, implausible, load_rgb
from hemaflow.preprocess import render_all, variants

# A folder's files ending in images.IMAGE_EXTENSIONS are decoded (a GIF is quarantined as
# unsupported_format); every other file gets a skipped row. Named files are always decoded.
# C-NMC cell names, UID_<patient>_<image>_<cell>_<label>.bmp (adapters.CNMC_NAME, which also
# upper-cases the patient: h3 and H3 are one patient).
CNMC_PATIENT_REGEX = r"^UID_(?P<patient>[Hh]?\d+)_"
# A C-NMC holdout folder's cells are renamed 1..N; the labels CSV beside it maps each new
# name to the original UID_ name (column Patient_ID), which carries the patient.
CNMC_CELL_SHEET = "{folder}_labels.csv"
PATIENT_FIELDS = ("patient_id", "name", "age", "sex", "sample_date")
UNASSIGNED = "unassigned"  # cells whose patient id could not be found
# Cells without a patient id may come from several patients: they get counts, never a pooled
# positive fraction, decision or report page.
NO_PATIENT = "no decision: no patient id (give --cells or --patient-regex)"


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


def load_model(spec: str, project: str | Path = ".") -> Model:
    """Load the model with its recorded preprocessing, training params and validation threshold."""
    from hemaflow import fusion  # TensorFlow only once a model is loaded

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


def list_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files to decode, [(file, reason)] not decoded): folders are walked as ingest walks a data
    root (adapters.walk_tree), so every file under them is accounted for; named files are always
    decoded. A reason is a key of images.REASONS (quarantined: a name that is not UTF-8, a
    symlink loop) or of images.SKIP_REASONS (skipped: hidden, a FIFO or device, not an image)."""
    files, listed = [], []
    for p in map(Path, paths):
        if not p.is_dir():
            files.append(p)
            continue
        for rel, reason in walk_tree(p)[0]:  # rel shows an undecodable name as \x escapes
            if reason is None and not rel.lower().endswith(IMAGE_EXTENSIONS):
                reason = "not_an_image_extension"
            if reason is None:
                files.append(p / rel)
            else:
                listed.append((p / rel, reason))
    return files, listed


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
    from hemaflow.records import to_unit

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
    table = pd.DataFrame(rows, columns=["file", "status", "reason", "detail"])
    for c, name in enumerate(classes):
        table[f"p_{name}"] = proba[:, c]
    ok = table["status"] == "ok"
    table["predicted_label"] = pd.Series(None, index=table.index, dtype=object)
    if ok.any():
        table.loc[ok, "predicted_label"] = np.asarray(classes, dtype=object)[proba[ok.to_numpy()].argmax(axis=1)]
    return table, inputs


# ---------------------------------------------------------------- patients


def patient_pattern(regex: str | None) -> re.Pattern:
    """--patient-regex compiled (default the C-NMC name pattern); it must have a group `patient`."""
    try:
        pattern = re.compile(regex or CNMC_PATIENT_REGEX)
    except re.error as e:
        raise ValueError(f"--patient-regex {regex!r} does not compile: {e}; fix the expression, e.g. ^(?P<patient>[^_]+)_") from None
    if "patient" not in pattern.groupindex:
        raise ValueError(f"--patient-regex {pattern.pattern!r} needs a named group, e.g. (?P<patient>[^_]+)")
    return pattern


def cell_patients(
    files: Sequence[Path], *, regex: str | None = None, cells: str | Path | None = None, roots: Sequence[str | Path] = ()
) -> list[str | None]:
    """The patient id of each file: from a cell sheet (columns file,patient_id; or a C-NMC
    labels CSV, new_names,Patient_ID), else from `regex` (named group `patient`, searched in
    the file name; default the C-NMC name pattern). A C-NMC holdout folder's labels CSV beside
    it is used without being named.

    A --cells row names its file by absolute path, by path relative to one of the input
    folders `roots` (or as given on the command line), or by a bare base name when exactly one
    file has it: the same name in two folders is an error, never a guess."""
    pattern = patient_pattern(regex)

    def from_name(name: str) -> str | None:
        m = pattern.search(name)
        if not m or not m["patient"]:
            return None
        return m["patient"].upper() if regex is None else m["patient"]

    if cells:
        listed = _match_cell_sheet(Path(cells), _read_cell_sheet(Path(cells), from_name), files, roots)
        return [listed.get(i) or from_name(f.name) for i, f in enumerate(files)]

    beside: dict[Path, dict[str, str | None]] = {}

    def sheet_for(f: Path) -> dict[str, str | None]:  # its cells are the files of that one folder
        path = _sheet_beside(f.parent)
        if path not in beside:
            beside[path] = {Path(v).name: p for _, v, p in _read_cell_sheet(path, from_name)} if path.is_file() else {}
        return beside[path]

    return [sheet_for(f).get(f.name) or from_name(f.name) for f in files]


def _sheet_beside(folder: Path) -> Path:
    """<folder>_labels.csv next to `folder` (absolute first: `.` has no name to build it from)."""
    folder = folder.absolute()
    return folder.with_name(CNMC_CELL_SHEET.format(folder=folder.name)) if folder.name else folder / CNMC_CELL_SHEET.format(folder="")


def _read_cell_sheet(path: Path, from_name: Callable[[str], str | None]) -> list[tuple[int, str, str | None]]:
    """[(CSV line, file as written, patient id or None)]; a file listed twice is an error."""
    table = _read_csv(path, "--cells")
    if {"file", "patient_id"} <= set(table.columns):
        rows = [(f, p or None) for f, p in zip(table["file"], table["patient_id"])]
    elif {"new_names", "Patient_ID"} <= set(table.columns):  # C-NMC: Patient_ID is the original UID_ name
        rows = [(n, from_name(p)) for n, p in zip(table["new_names"], table["Patient_ID"])]
    else:
        raise ValueError(f"--cells {path}: a cell sheet needs columns file,patient_id (or C-NMC's "
                         f"new_names,Patient_ID); its header line 1 has {list(table.columns)}")
    lines: dict[str, int] = {}
    out = []
    for line, (f, p) in enumerate(rows, start=2):  # line 1 is the header
        if not f:
            raise ValueError(f"--cells {path} line {line}: empty file name; fill it in or delete the row")
        if f in lines:
            raise ValueError(f"--cells {path} lines {lines[f]} and {line}: {f!r} is listed twice; keep one row per file")
        lines[f] = line
        out.append((line, f, p))
    return out


def _match_cell_sheet(path: Path, rows, files: Sequence[Path], roots: Sequence[str | Path]) -> dict[int, str | None]:
    """{index into files: patient id} for the sheet rows (see cell_patients)."""
    exact: dict[str, list[int]] = {}
    by_name: dict[str, list[int]] = {}
    for i, f in enumerate(map(Path, files)):
        keys = {os.path.abspath(f), f.as_posix()} | {f.relative_to(r).as_posix() for r in map(Path, roots) if f.is_relative_to(r)}
        for key in keys:
            exact.setdefault(key, []).append(i)
        by_name.setdefault(f.name, []).append(i)
    out: dict[int, str | None] = {}
    for line, value, patient in rows:
        key = os.path.abspath(value) if os.path.isabs(value) else Path(value).as_posix()
        hits = exact.get(key) or ([] if "/" in key else by_name.get(key, []))
        if len(hits) > 1:
            raise ValueError(f"--cells {path} line {line}: {value!r} is the base name of {len(hits)} files "
                             f"({', '.join(str(files[i]) for i in hits)}); write the path relative to the input folder instead")
        for i in hits:
            out[i] = patient
    return out


def _read_csv(path: str | Path, option: str, **kwargs) -> pd.DataFrame:
    """A sheet as strings; a missing, binary, non-UTF-8 or malformed file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{option} {path}: no such file" + (" (it is a folder)" if path.is_dir() else "")
                                + "; give the path of a CSV file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot be read ({e.strerror}); check its permissions") from None
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Excel's "CSV UTF-8") is fine
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(f"{option} {path} line {line}: not UTF-8 text (byte {raw[e.start]:#04x}); "
                         "save the sheet as CSV UTF-8") from None
    if "\0" in text:
        raise ValueError(f"{option} {path}: a binary file, not a CSV (a spreadsheet? export it as CSV UTF-8)")
    if not text.strip():
        raise ValueError(f"{option} {path}: empty file; a CSV with a header line is expected")
    try:
        return pd.read_csv(io.StringIO(text), **{"dtype": str, "keep_default_na": False, **kwargs})
    except (pd.errors.ParserError, ValueError) as e:
        raise ValueError(f"{option} {path}: not a readable CSV ({e}); check its commas and quotes") from None


def read_patient_sheet(path: str | Path) -> pd.DataFrame:
    """patient_id, name, age, sex, sample_date and any further (e.g. CBC) columns; one row per patient."""
    sheet = _read_csv(path, "--patients", dtype={"patient_id": str}, na_values=[""])
    missing = [c for c in PATIENT_FIELDS if c not in sheet.columns]
    if missing:
        raise ValueError(f"--patients {path}: header line 1 lacks column(s) {missing}; expected "
                         f"{list(PATIENT_FIELDS)} plus optional CBC columns")
    first: dict[str, int] = {}
    for line, pid in enumerate(sheet["patient_id"], start=2):  # line 1 is the header
        if pd.isna(pid):
            raise ValueError(f"--patients {path} line {line}: empty patient_id; fill it in or delete the row")
        if pid in first:
            raise ValueError(f"--patients {path} lines {first[pid]} and {line}: patient_id {pid!r} listed twice; "
                             "keep one row per patient")
        first[pid] = line
    return sheet.set_index("patient_id", drop=False)


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


def check_options(
    inputs: Sequence[str | Path],
    *,
    out_dir: str | Path,
    patients: str | Path | None = None,
    patient_regex: str | None = None,
    cells: str | Path | None = None,
    batch_size: int = 64,
    max_pixels: int = 40_000_000,
    min_side: int = MIN_SIDE,
) -> None:
    """Raise ValueError / FileNotFoundError for the first bad option, naming the option, the file
    (and line) and the fix, before any model is loaded or image decoded."""
    for option, value in (("--batch-size", batch_size), ("--max-pixels", max_pixels), ("--min-side", min_side)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{option} must be a whole number of at least 1 (got {value!r})")
    if not inputs:
        raise ValueError("no input: name at least one folder or image file")
    missing = [str(p) for p in inputs if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"input(s) not found: {', '.join(missing)}; check the path (a folder or an image file)")
    closed = [str(p) for p in inputs if os.path.isdir(p) and not os.access(p, os.R_OK | os.X_OK)]
    if closed:
        raise ValueError(f"input folder(s) cannot be listed: {', '.join(closed)}; check their permissions")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: an existing file, not a folder; give a folder path (it is created if needed)")
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not parent.is_dir():
        raise ValueError(f"--out {out}: cannot be created, {parent} is a file; give another folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {parent} is not writable; give a folder you can write to")
    patient_pattern(patient_regex)
    if patients:
        read_patient_sheet(patients)
    # else a C-NMC holdout folder's labels CSV beside it, if any
    sheets = [Path(cells)] if cells else [s for p in inputs if os.path.isdir(p) and (s := _sheet_beside(Path(p))).is_file()]
    for sheet in sheets:
        _read_cell_sheet(sheet, lambda _: None)


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp) to a file beside `path`, then rename it to `path`: a full disk or a crash
    leaves the previous file or none, never a truncated one under the final name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same folder: os.replace is a rename
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    loaded = load_model(model, project)
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
        from hemaflow.report import write_patient_reports

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

