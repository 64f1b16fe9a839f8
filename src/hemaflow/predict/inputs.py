"""Predict's inputs, checked before any image is decoded: the files under each input folder, the
patient of each cell (a regex on the file name or a --cells sheet), the --patients sheet."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hemaflow.data.adapters import walk_tree
from hemaflow.data.images import IMAGE_EXTENSIONS, MIN_SIDE

# A folder's files ending in images.IMAGE_EXTENSIONS are decoded (a GIF is quarantined as
# unsupported_format); every other file gets a skipped row. Named files are always decoded.
# C-NMC cell names, UID_<patient>_<image>_<cell>_<label>.bmp (adapters.CNMC_NAME, which also
# upper-cases the patient: h3 and H3 are one patient).
CNMC_PATIENT_REGEX = r"^UID_(?P<patient>[Hh]?\d+)_"
# A C-NMC holdout folder's cells are renamed 1..N; the labels CSV beside it maps each new
# name to the original UID_ name (column Patient_ID), which carries the patient.
CNMC_CELL_SHEET = "{folder}_labels.csv"
PATIENT_FIELDS = ("patient_id", "name", "age", "sex", "sample_date")


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
