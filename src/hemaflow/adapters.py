"""List the candidate source files of a data set, with labels, patients and folds, without decoding.

Every adapter returns one row per candidate file (bad ones included, with `reason` set for
what is already known to be wrong from names alone: bad_label, outside_root,
duplicate_name); `ingest.build_sources` decodes the rest.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from pathlib import Path

import pandas as pd

ADAPTERS = ("cnmc", "folders", "filelist")
ALIASES = {"synthetic": "cnmc"}  # the embedded replica has the C-NMC layout
CNMC_CLASSES = ("hem", "all")  # label_index 0 = normal, 1 = leukemic blast (positive)
COLUMNS = ["image_id", "rel_path", "patient_id", "label", "label_index", "fold", "holdout", "reason"]

CNMC_TOP = ("training_data", "validation_data", "testing_data")
CNMC_TRAIN = re.compile(r"^training_data/fold_(?P<fold>\d+)/(?P<folder>all|hem)/(?P<name>[^/]+)$")
CNMC_PRELIM_DIR = "validation_data/C-NMC_test_prelim_phase_data"
CNMC_PRELIM_LABELS = "validation_data/C-NMC_test_prelim_phase_data_labels.csv"
CNMC_NAME = re.compile(r"^UID_(?P<patient>[Hh]?\d+)_(?P<image>\d+)_(?P<cell>\d+)_(?P<label>all|hem)\.bmp$", re.I)


def image_id(dataset: str, rel_path: str, repeat: int = 0) -> str:
    """16 hex chars of sha1(`dataset/rel_path`); a path listed again gets `#n` appended."""
    key = f"{dataset}/{rel_path}" + (f"#{repeat}" if repeat else "")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def list_candidates(
    adapter: str,
    root,
    *,
    index=None,
    patient_regex: str | None = None,
    filelist=None,
    dataset: str,
) -> pd.DataFrame:
    """Candidate rows (COLUMNS) for `root` read by `adapter`; `index` replaces walking `root`.

    cnmc: training folds (fold 0..k) and the prelim-phase set as labelled holdout; unlabelled
    testing_data is ignored. Index paths may carry the release directory
    (`C-NMC_Leukemia/training_data/...`): everything before the first top-level C-NMC folder
    is dropped. Holdout labels and patients come from the prelim labels CSV under `root`;
    when that CSV is absent (a dry run from an index without images) holdout rows get label
    null, label_index -1 and no reason, since nothing is known to be wrong yet; when the
    CSV exists but lacks a file, that file is `bad_label`, and CSV rows whose file is not
    listed are added (ingest marks them `missing`).
    folders: one sub-folder per class (files directly in `root` are ignored); `patient_regex`
    (named group `patient`) is searched in the path below the class folder.
    filelist: CSV with columns path,label[,patient_id], paths relative to `root`.
    """
    kind = ALIASES.get(adapter, adapter)
    if kind not in ADAPTERS:
        allowed = ", ".join(ADAPTERS + tuple(ALIASES))
        raise ValueError(f"data.adapter: unknown adapter {adapter!r}; use one of {allowed}")
    root = Path(root)
    regex = _patient_regex(patient_regex)
    if kind == "filelist":
        rows = _filelist_rows(root, filelist, regex)
    else:
        paths = _read_index(index) if index else _walk(root)
        rows = _cnmc_rows(root, paths, from_index=bool(index)) if kind == "cnmc" else _folder_rows(paths, regex)
    return _finish(rows, root, dataset)


# ---------------------------------------------------------------- listing


def _within(root_real: str, real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _walk(root: Path) -> list[str]:
    """Relative POSIX paths of every non-hidden file under `root`; links out of it are listed, not followed."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: {root} is not a directory (set data.root, or data.index for a dry run)")
    root_real = os.path.realpath(root)
    out, seen = [], set()

    def visit(folder: str, rel: str) -> None:
        real = os.path.realpath(folder)
        if real in seen:  # a link back to a folder already walked
            return
        seen.add(real)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            path = rel + entry.name
            if entry.is_symlink() and not _within(root_real, os.path.realpath(entry.path)):
                out.append(path)
            elif entry.is_dir():
                visit(entry.path, path + "/")
            elif entry.is_file() or entry.is_symlink():
                out.append(path)

    visit(str(root), "")
    return out


def _read_index(index) -> list[str]:
    try:
        lines = Path(index).read_text().splitlines()
    except OSError as e:
        raise FileNotFoundError(f"data.index: cannot read {index}: {e.strerror}") from None
    return [line.strip() for line in lines if line.strip()]


def _locate(root: Path, raw: str) -> tuple[str, bool]:
    """(normalised POSIX path relative to `root`, whether it escapes `root` by `..`, absolute path or link)."""
    raw = raw.replace("\\", "/")
    root_real = os.path.realpath(root)
    if posixpath.isabs(raw):
        real = os.path.realpath(raw)
        if not _within(root_real, real):
            return raw, True
        raw = os.path.relpath(raw, root).replace(os.sep, "/")
    rel = posixpath.normpath(raw)
    if rel == ".." or rel.startswith("../"):
        return raw, True
    return rel, not _within(root_real, os.path.realpath(root / rel))


# ---------------------------------------------------------------- adapters


def _row(rel_path, label=None, classes=(), patient=None, fold=-1, holdout=False, reason=None) -> dict:
    return {
        "rel_path": rel_path,
        "patient_id": patient,
        "label": label,
        "label_index": classes.index(label) if label in classes else -1,
        "fold": fold,
        "holdout": holdout,
        "reason": reason,
    }


def _cnmc_patient(name: str):
    """(normalised patient id, label, cell key) from a `UID_..._{all,hem}.bmp` name, or Nones."""
    m = CNMC_NAME.match(name)
    if not m:
        return None, None, None
    patient = m["patient"].upper()  # `h3` and `H3` are one patient
    label = m["label"].lower()
    return patient, label, f"UID_{patient}_{int(m['image'])}_{int(m['cell'])}_{label}"


def _strip_release_dir(rel: str) -> str:
    parts = rel.split("/")
    for i, part in enumerate(parts):
        if part in CNMC_TOP:
            return "/".join(parts[i:])
    return rel


def _prelim_labels(root: Path) -> dict | None:
    """new_names -> (Patient_ID, labels) from the prelim labels CSV, or None when it is absent."""
    path = root / CNMC_PRELIM_LABELS
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("Patient_ID", "new_names", "labels") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected Patient_ID,new_names,labels")
    return {r.new_names.strip(): (r.Patient_ID.strip(), r.labels.strip()) for r in table.itertuples()}


def _cnmc_rows(root: Path, paths: list[str], from_index: bool) -> list[dict]:
    labels = _prelim_labels(root)
    rows, seen_cells, listed_prelim = [], set(), set()
    for raw in sorted(_strip_release_dir(p) if from_index else p for p in paths):
        m = CNMC_TRAIN.match(raw)
        if m:
            patient, name_label, cell = _cnmc_patient(m["name"])
            row = _row(raw, m["folder"], CNMC_CLASSES, patient, int(m["fold"]))
            if name_label and name_label != m["folder"]:
                row["reason"] = "bad_label"
        elif posixpath.dirname(raw) == CNMC_PRELIM_DIR:
            name = posixpath.basename(raw)
            listed_prelim.add(name)
            row, cell = _prelim_row(raw, name, labels)
        else:
            continue  # testing_data (unlabelled), the labels CSV, anything outside the layout
        if cell and cell in seen_cells:
            row["reason"] = "duplicate_name"
        seen_cells.add(cell)
        rows.append(row)
    for name in sorted(set(labels or ()) - listed_prelim):
        row, _ = _prelim_row(f"{CNMC_PRELIM_DIR}/{name}", name, labels)
        rows.append(row)
    if not rows:
        raise ValueError(
            f"data.root: no C-NMC training_data/ or validation_data/ files under {root}; "
            "data.root must be the folder that holds training_data/ (e.g. .../C-NMC_Leukemia)"
        )
    return rows


def _prelim_row(rel: str, name: str, labels: dict | None) -> tuple[dict, str | None]:
    if labels is None:
        return _row(rel, holdout=True), None
    if name not in labels:
        return _row(rel, holdout=True, reason="bad_label"), None
    original, value = labels[name]
    patient, name_label, cell = _cnmc_patient(original)
    label = {"1": "all", "0": "hem"}.get(value)
    row = _row(rel, label, CNMC_CLASSES, patient, holdout=True)
    if label is None or (name_label and name_label != label):
        row.update(label=None, label_index=-1, reason="bad_label")
    return row, cell


def _patient_regex(pattern: str | None):
    if not pattern:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"data.patient_regex: {pattern!r} is not a valid regular expression ({e})") from None
    if "patient" not in regex.groupindex:
        raise ValueError(f"data.patient_regex: {pattern!r} needs a named group, e.g. (?P<patient>[^_]+)")
    return regex


def _search_patient(regex, text: str):
    m = regex.search(text) if regex else None
    return m["patient"] if m and m["patient"] else None


def _folder_rows(paths: list[str], regex) -> list[dict]:
    paths = [p for p in paths if "/" in p]
    classes = tuple(sorted({p.split("/", 1)[0] for p in paths}))
    return [_row(p, p.split("/", 1)[0], classes, _search_patient(regex, p.split("/", 1)[1])) for p in paths]


def _filelist_rows(root: Path, filelist, regex) -> list[dict]:
    if not filelist:
        raise ValueError("data.filelist: the filelist adapter needs a CSV with columns path,label[,patient_id]")
    try:
        table = pd.read_csv(filelist, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"data.filelist: {filelist} does not exist") from None
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise ValueError(f"data.filelist: {filelist} lacks column(s) {', '.join(missing)}; expected path,label[,patient_id]")
    table["label"] = table["label"].str.strip()
    classes = tuple(sorted(set(table["label"]) - {""}))
    has_patient = "patient_id" in table.columns
    rows = []
    for r in table.itertuples():
        patient = (r.patient_id.strip() or None) if has_patient else _search_patient(regex, r.path)
        rows.append(_row(r.path.strip(), r.label or None, classes, patient, reason=None if r.label else "bad_label"))
    return rows


# ---------------------------------------------------------------- common


def _finish(rows: list[dict], root: Path, dataset: str) -> pd.DataFrame:
    """Flag escapes and repeated paths, add image ids, fix dtypes; rows sorted by path."""
    seen: dict[str, int] = {}
    for row in rows:
        row["rel_path"], outside = _locate(root, row["rel_path"])
        if outside:
            row["reason"] = "outside_root"
        repeat = seen.get(row["rel_path"], 0)
        seen[row["rel_path"]] = repeat + 1
        if repeat and row["reason"] != "outside_root":
            row["reason"] = "duplicate_name"
        row["image_id"] = image_id(dataset, row["rel_path"], repeat)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df.sort_values("rel_path", kind="stable", ignore_index=True)
    strings = dict.fromkeys(["image_id", "rel_path", "patient_id", "label", "reason"], "str")
    return df.astype({**strings, "label_index": "int16", "fold": "int8", "holdout": "bool"})
