"""List the candidate source files of a data set, with labels, patients and folds, without decoding."""

# Every adapter returns one row per file under the data root (and per listed file), with
# `reason` set for what is known from names alone: a quarantine reason (bad_label,
# outside_root, duplicate_name, bad_filename, unknown_label, unsafe_label) or a skip reason
# (`images.SKIP_REASONS`: hidden, not_an_image_extension, ...); `ingest.build_sources`
# decodes the rest. Labels go through `data.label_map`; the class list (`label_index` order)
# is `data.classes` when given, else the adapter's own.

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from pathlib import Path

import pandas as pd

from hemaflow.data.images import IMAGE_EXTENSIONS
from hemaflow.safenames import name_problem

ADAPTERS = ("cnmc", "folders", "filelist")
ALIASES = {"synthetic": "cnmc"}  # the embedded replica has the C-NMC layout
CNMC_CLASSES = ("hem", "all")  # label_index 0 = normal, 1 = leukemic blast (positive)
COLUMNS = ["image_id", "rel_path", "patient_id", "source_label", "label", "label_index", "fold", "holdout", "reason"]

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
    classes=None,
    label_map: dict | None = None,
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """(candidate rows (COLUMNS), class list) for `root` read by `adapter`; `index` replaces walking `root`.

    cnmc: training folds (fold 0..k) and the prelim-phase set as labelled holdout; unlabelled
    testing_data is skipped (`unlabelled`), the labels CSV is `label_file`, anything else
    outside the layout `outside_layout`. Index paths may carry the release directory
    (`C-NMC_Leukemia/training_data/...`): everything before the first top-level C-NMC folder
    is dropped. Holdout labels and patients come from the prelim labels CSV under `root`;
    when that CSV is absent (a dry run from an index without images) holdout rows get label
    null, label_index -1 and no reason, since nothing is known to be wrong yet; when the
    CSV exists but lacks a file, that file is `bad_label`, and CSV rows whose file is not
    listed are added (ingest marks them `missing`).
    folders: one sub-folder per class (files directly in `root` are `outside_class_folder`;
    a folder without image files is one `empty_class_folder` row, and a class only when
    `classes` names it: the split then stops); `patient_regex` (named group `patient`) is
    searched in the path below the class folder.
    filelist: CSV with columns path,label[,patient_id], paths relative to `root`; files under
    `root` that it does not name are `not_in_filelist`.
    `label_map` renames (`Early: malignant`), merges (several keys, one value) or drops
    (value null: `dropped_by_label_map`) source labels; `classes` fixes the class names and
    their order, and a label outside it is `unknown_label`.
    """
    kind = ALIASES.get(adapter, adapter)
    if kind not in ADAPTERS:
        allowed = ", ".join(ADAPTERS + tuple(ALIASES))
        raise ValueError(f"data.adapter: unknown adapter {adapter!r}; use one of {allowed}")
    root = Path(root)
    regex = _patient_regex(patient_regex)
    if kind == "filelist":
        rows, source_classes = _filelist_rows(root, filelist, regex)
    else:
        paths, folders = _read_index(index) if index else walk_tree(root)
        if kind == "cnmc":
            rows, source_classes = _cnmc_rows(root, paths, from_index=bool(index)), CNMC_CLASSES
        else:
            empty = _empty_folders(paths, folders)  # recorded, but not classes of their own
            rows = _folder_rows(paths, regex) + [_row(f, f, reason="empty_class_folder") for f in sorted(empty)]
            source_classes = tuple(f for f in folders if f not in empty)
    label_map = label_map or {}
    if classes:
        class_list = tuple(classes)
    else:
        class_list = _mapped(source_classes, label_map, keep_order=kind == "cnmc")
    return _finish(rows, root, dataset, class_list, label_map, check=bool(classes)), class_list


def reader(adapter: str, synthetic_layout: str = "cnmc") -> str:
    """The adapter that reads data.adapter's files: the replica of synthetic.layout `folders` is
    read like a user's class folders (the `synthetic` alias otherwise reads it as C-NMC)."""
    return "folders" if adapter == "synthetic" and synthetic_layout == "folders" else adapter


def known_classes(adapter: str, classes=None, label_map: dict | None = None) -> tuple[str, ...] | None:
    """The class list when it is known before reading the data (data.classes, or C-NMC's), else None."""
    if classes:
        return tuple(classes)
    if ALIASES.get(adapter, adapter) == "cnmc":
        return _mapped(CNMC_CLASSES, label_map or {}, keep_order=True)
    return None


def check_positive_class(classes, positive_class: str) -> str | None:
    """`positive_class` when the task is binary (None with more classes, where it is unused);
    ValueError listing the classes when a two-class set lacks it or there are fewer than two."""
    classes = list(classes)
    if len(classes) < 2:
        raise ValueError(f"the data set has {len(classes)} class(es) {classes}; a classifier needs at least two "
                         "(check data.root, data.classes and data.label_map)")  # fmt: skip
    if len(classes) > 2:
        return None
    if positive_class not in classes:
        raise ValueError(
            f"data.positive_class: {positive_class!r} is not a class of this data set; its classes are "
            f"{', '.join(map(repr, classes))}: set data.positive_class to one of them"
        )
    return positive_class


def _mapped(names, label_map: dict, keep_order: bool) -> tuple[str, ...]:
    out = [label_map.get(n, n) for n in names]
    out = [n for n in dict.fromkeys(out) if n is not None and not name_problem(n)]  # unsafe: quarantined
    return tuple(out if keep_order else sorted(out))


def similar_labels(names) -> list[tuple[str, str]]:
    """Pairs of class names that differ only by case, whitespace or one character (likely typos)."""
    names = sorted(names)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            na, nb = " ".join(a.split()).casefold(), " ".join(b.split()).casefold()
            if na == nb or _one_edit(na, nb):
                pairs.append((a, b))
    return pairs


def _one_edit(a: str, b: str) -> bool:
    """Levenshtein distance of `a` and `b` is exactly one."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        return a[i + 1 :] == b[i + 1 :]
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[i + 1 :] == shorter[i:]


# ---------------------------------------------------------------- listing


def _within(root_real: str, real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _printable(name: str) -> tuple[str, bool]:
    """(`name`, False), or for a name that is not valid UTF-8 its bytes as \\x escapes and True."""
    try:
        name.encode("utf-8")
        return name, False
    except UnicodeEncodeError:  # undecodable bytes arrive as surrogates (PEP 383)
        return os.fsencode(name).decode("utf-8", "backslashreplace"), True


def _name_reason(rel: str) -> str | None:
    """`hidden` when a part of `rel` starts with '.', `bad_filename` when it is not valid UTF-8."""
    if any(part.startswith(".") and part not in (".", "..") for part in rel.split("/")):
        return "hidden"
    return "bad_filename" if _printable(rel)[1] else None


def _is_image(rel: str) -> bool:
    return rel.lower().endswith(IMAGE_EXTENSIONS)


def walk_tree(root: Path) -> tuple[list[tuple[str, str | None]], tuple[str, ...]]:
    """(every file under `root` as (relative POSIX path, a name or listing reason or None), the
    readable top-level folders). Links out of `root` are listed, not followed; a folder that
    cannot be listed or a link loop is one `unreadable` entry; FIFOs, sockets and devices are
    `not_a_regular_file` (opening a FIFO would block)."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: {root} is not a directory (set data.root, or data.index for a dry run)")
    root_real = os.path.realpath(root)
    out, folders, seen = [], [], set()

    def visit(folder: str, rel: str, inherited: str | None) -> bool:
        real = os.path.realpath(folder)
        if real in seen:  # a link back to a folder already walked
            return True
        seen.add(real)
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError:  # no permission, or gone meanwhile
            out.append((rel.rstrip("/"), inherited or "unreadable"))
            return False
        for entry in entries:
            name, bad = _printable(entry.name)
            reason = inherited or ("hidden" if name.startswith(".") else "bad_filename" if bad else None)
            path = rel + name
            try:
                kind = _entry_kind(entry, root_real)
            except OSError:  # a symlink loop (ELOOP), or an entry that cannot be stat'ed
                kind, reason = "file", reason or "unreadable"
            if kind == "dir":
                if visit(entry.path, path + "/", reason) and not rel and reason is None:
                    folders.append(name)
            else:
                out.append((path, reason or (None if kind == "file" else "not_a_regular_file")))
        return True

    if not visit(str(root), "", None):
        raise FileNotFoundError(f"data.root: cannot list {root} (check its permissions)")
    return out, tuple(folders)


def _entry_kind(entry: os.DirEntry, root_real: str) -> str:
    """`dir` to walk into; `file` to list (a link out of the root or a broken link too: ingest
    flags them); `other` for a FIFO, socket or device."""
    if entry.is_symlink() and not _within(root_real, os.path.realpath(entry.path)):
        return "file"
    if entry.is_dir():
        return "dir"
    if entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
        return "file"
    return "other"


def _empty_folders(entries, folders) -> set[str]:
    """The top-level folders that hold no image file (anything else in them is skipped anyway)."""
    used = {p.split("/", 1)[0] for p, pre in entries if pre is None and "/" in p and _is_image(p)}
    return set(folders) - used


def _read_index(index) -> tuple[list[tuple[str, str | None]], tuple[str, ...]]:
    try:
        lines = Path(index).read_text(errors="surrogateescape").splitlines()
    except OSError as e:
        raise FileNotFoundError(f"data.index: cannot read {index}: {e.strerror}") from None
    entries = [(_printable(line.strip())[0], _name_reason(line.strip())) for line in lines if line.strip()]
    folders = sorted({p.split("/", 1)[0] for p, r in entries if "/" in p and r is None})
    return entries, tuple(folders)


def _locate(root: Path, raw: str) -> tuple[str, bool]:
    """(normalised POSIX path relative to `root`, whether it escapes `root` by `..`, absolute path or link)."""
    if "\\" in raw and not os.path.lexists(root / raw):  # a Windows-style list; else a backslash in a file name
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


def _row(rel_path, label=None, patient=None, fold=-1, holdout=False, reason=None) -> dict:
    return {"rel_path": rel_path, "patient_id": patient, "label": label, "fold": fold, "holdout": holdout, "reason": reason}


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


def _cnmc_skip(raw: str, in_layout: bool) -> str | None:
    """Why a file under a C-NMC root is not a candidate, or None."""
    if raw == CNMC_PRELIM_LABELS:
        return "label_file"
    if raw.startswith("testing_data/"):
        return "unlabelled"
    if not in_layout:
        return "outside_layout"
    return None if _is_image(raw) else "not_an_image_extension"


def _cnmc_rows(root: Path, entries, from_index: bool) -> list[dict]:
    labels = _prelim_labels(root)
    rows, seen_cells, listed_prelim, in_layout = [], set(), set(), 0
    stripped = (((_strip_release_dir(p) if from_index else p), r) for p, r in entries)
    for raw, pre in sorted(stripped, key=lambda e: e[0]):
        m = CNMC_TRAIN.match(raw)
        prelim = posixpath.dirname(raw) == CNMC_PRELIM_DIR
        skip = pre or _cnmc_skip(raw, bool(m) or prelim)
        if skip:
            rows.append(_row(raw, reason=skip))
            continue
        in_layout += 1
        if m:
            patient, name_label, cell = _cnmc_patient(m["name"])
            row = _row(raw, m["folder"], patient, int(m["fold"]))
            if name_label and name_label != m["folder"]:
                row["reason"] = "bad_label"
        else:
            name = posixpath.basename(raw)
            listed_prelim.add(name)
            row, cell = _prelim_row(raw, name, labels)
        if cell and cell in seen_cells:
            row["reason"] = "duplicate_name"
        seen_cells.add(cell)
        rows.append(row)
    for name in sorted(set(labels or ()) - listed_prelim):
        row, _ = _prelim_row(f"{CNMC_PRELIM_DIR}/{name}", name, labels)
        rows.append(row)
        in_layout += 1
    if not in_layout:
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
    row = _row(rel, label, patient, holdout=True)
    if label is None or (name_label and name_label != label):
        row.update(label=None, reason="bad_label")
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


def _folder_rows(entries, regex) -> list[dict]:
    rows = []
    for p, pre in entries:
        skip = pre or ("outside_class_folder" if "/" not in p else None if _is_image(p) else "not_an_image_extension")
        if skip:
            rows.append(_row(p, reason=skip))
        else:
            folder, below = p.split("/", 1)
            rows.append(_row(p, folder, _search_patient(regex, below)))
    return rows


def _filelist_rows(root: Path, filelist, regex) -> tuple[list[dict], tuple[str, ...]]:
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
    has_patient = "patient_id" in table.columns
    rows = []
    for r in table.itertuples():
        patient = (r.patient_id.strip() or None) if has_patient else _search_patient(regex, r.path)
        rows.append(_row(r.path.strip(), r.label or None, patient, reason=None if r.label else "bad_label"))
    listed = {_locate(root, row["rel_path"])[0] for row in rows}
    own = os.path.realpath(filelist)
    for rel, pre in walk_tree(root)[0] if root.is_dir() else []:
        if rel not in listed:
            itself = os.path.realpath(root / rel) == own
            rows.append(_row(rel, reason=pre or ("label_file" if itself else "not_in_filelist")))
    return rows, tuple(sorted(set(table["label"]) - {""}))


# ---------------------------------------------------------------- common


def _finish(rows: list[dict], root: Path, dataset: str, classes: tuple, label_map: dict, check: bool) -> pd.DataFrame:
    """Flag escapes and repeated paths, map labels, index classes, add image ids, fix dtypes; rows sorted by path."""
    seen: dict[str, int] = {}
    for row in rows:
        if row["reason"] != "bad_filename":  # its escaped name is shown, not a path to open
            row["rel_path"], outside = _locate(root, row["rel_path"])
            if outside:
                row["reason"] = "outside_root"
        repeat = seen.get(row["rel_path"], 0)
        seen[row["rel_path"]] = repeat + 1
        if repeat and row["reason"] != "outside_root":
            row["reason"] = "duplicate_name"
        row["image_id"] = image_id(dataset, row["rel_path"], repeat)
        row["source_label"] = source = row["label"]
        if source is not None:
            row["label"] = label = label_map.get(source, source)
            if label is None:
                row["reason"] = row["reason"] or "dropped_by_label_map"
            elif name_problem(label):  # a class name becomes a folder name (overlays, plots): `../x` must not
                row["reason"] = row["reason"] or "unsafe_label"
            elif check and label not in classes:
                row["reason"] = row["reason"] or "unknown_label"
        row["label_index"] = classes.index(row["label"]) if row["label"] in classes else -1
    df = pd.DataFrame(rows, columns=COLUMNS)
    df = df.sort_values("rel_path", kind="stable", ignore_index=True)
    strings = dict.fromkeys(["image_id", "rel_path", "patient_id", "source_label", "label", "reason"], "str")
    return df.astype({**strings, "label_index": "int16", "fold": "int8", "holdout": "bool"})
