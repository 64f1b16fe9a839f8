"""Deterministic synthetic replicas: the C-NMC 2019 release (same layout, names and quirks), or
a class-per-folder set of natural-background smear crops (`generate_folder_replica`)."""

# Each C-NMC cell is drawn from a latent "blast-likeness" s in [0, 1]: size, contour irregularity,
# chromatin coarseness, nucleoli and darkness all grow with s, each with its own noise, and a
# minority of cells take the other class's phenotype, so the task is learnable but not
# trivial. docs/synthetic-replica.md describes the construction.

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from hemaflow.data.cbc import CBC_COLUMNS, PATIENT_FIELDS

# Fraction of cells that look like the other class (seed 000: "healthy-appearing cells in
# leukemic samples and abnormal cells in healthy samples").
ATYPICAL = {"all": 0.05, "hem": 0.03}
# Mean nucleus colour (RGB, 0..1) after the C-NMC stain normalisation: a light violet.
BASE_COLOUR = np.array([0.78, 0.62, 0.90])
PRELIM_DIR = "validation_data/C-NMC_test_prelim_phase_data"
PRELIM_LABELS = "validation_data/C-NMC_test_prelim_phase_data_labels.csv"
FINAL_DIR = "testing_data/C-NMC_test_final_phase_data"


@dataclass(frozen=True)
class Patient:
    pid: str  # as written in file names: "12", "H4"
    label: str  # "all" or "hem"
    part: str  # "train", "prelim" (labelled holdout) or "final" (unlabelled test)
    fold: int = -1
    lower_h: bool = False  # some files spell the prefix "h" (real: UID_h3_10_1_hem.bmp)


def _patients(rng, folds: int, per_fold: dict, holdout: dict) -> list[Patient]:
    """Patient ids, disjoint across folds, holdout and the one final-phase patient per class."""
    out = []
    for label, prefix, pool in (("all", "", 80), ("hem", "H", 50)):
        n = folds * per_fold[label] + holdout[label] + 1
        ids = iter(f"{prefix}{i}" for i in rng.choice(np.arange(1, max(pool, n) + 1), n, replace=False))
        out += [Patient(next(ids), label, "train", k) for k in range(folds) for _ in range(per_fold[label])]
        out += [Patient(next(ids), label, "prelim") for _ in range(holdout[label])]
        out.append(Patient(next(ids), label, "final"))
    train_hem = [i for i, p in enumerate(out) if p.label == "hem" and p.part == "train"]
    if train_hem:
        i = train_hem[rng.integers(len(train_hem))]
        out[i] = Patient(out[i].pid, "hem", "train", out[i].fold, lower_h=True)
    return out


def _cell_names(rng, patient: Patient, n: int) -> list[str]:
    """`UID_<patient>_<image>_<cell>_<label>.bmp`: several cells per smear image, unevenly."""
    per_image = []
    while sum(per_image) < n:
        per_image.append(int(min(rng.geometric(0.45), n - sum(per_image))))
    images = np.sort(rng.choice(np.arange(1, 3 * len(per_image) + 30), len(per_image), replace=False))
    names = []
    for img, k in zip(images, per_image):
        for cell in range(1, k + 1):
            pid = patient.pid
            if patient.lower_h and len(names) % 2 == 1:
                pid = "h" + pid[1:]
            names.append(f"UID_{pid}_{img}_{cell}_{patient.label}.bmp")
    return names


def _stain(rng) -> np.ndarray:
    """A patient's own colour cast: per-channel gain and overall brightness."""
    return BASE_COLOUR * np.exp(rng.normal(0.0, 0.04, 3)) * rng.normal(1.0, 0.025)


def _grid(size: int):
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x - c, y - c


def render_cell(rng, s: float, stain: np.ndarray, size: int, grid=None) -> np.ndarray:
    """One nucleus centred on pure black; every pixel of the nucleus has some colour."""
    f = size / 450.0
    # Shape: perturbed ellipse; irregularity (higher harmonics, a cleft) grows with s.
    radius = f * (60.0 + 38.0 * s + rng.normal(0.0, 7.0))
    aspect = np.sqrt(1.0 + rng.uniform(0.0, 0.25))
    phi = rng.uniform(0.0, np.pi)
    angles = np.linspace(-np.pi, np.pi, 721)
    k = np.arange(2, 8)[:, None]
    amp = (0.01 + 0.08 * s) * rng.uniform(0.6, 1.4, (k.size, 1)) / np.sqrt(k - 1)
    contour = 1.0 + (amp * np.cos(k * angles + rng.uniform(0, 2 * np.pi, (k.size, 1)))).sum(0)
    if rng.random() < s**2:
        notch_at, depth = rng.uniform(-np.pi, np.pi), rng.uniform(0.12, 0.3)
        d = np.angle(np.exp(1j * (angles - notch_at)))
        contour -= depth * np.exp(-(d**2) / (2 * 0.18**2))
    radius = min(radius, 0.47 * size / aspect / contour.max())
    grain = f * (2.0 + 7.0 * s + rng.uniform(-1.0, 1.0))
    value = 0.70 - 0.28 * s + rng.normal(0.0, 0.03)

    # Work in the nucleus' bounding square only: most of the canvas stays black.
    x, y = grid if grid is not None else _grid(size)
    half = int(np.ceil(radius * contour.max() * aspect)) + 2
    lo, hi = max(size // 2 - half, 0), min(size // 2 + half, size)
    x, y = x[lo:hi, lo:hi], y[lo:hi, lo:hi]
    u = (x * np.cos(phi) + y * np.sin(phi)) / aspect
    w = (y * np.cos(phi) - x * np.sin(phi)) * aspect
    edge = radius * np.interp(np.arctan2(w, u), angles, contour)
    rel = np.hypot(u, w) / edge
    inside = rel < 1.0

    # Chromatin: smoothed noise, coarser grain and stronger contrast with s.
    tex = cv2.GaussianBlur(rng.standard_normal(x.shape, dtype=np.float32), (0, 0), max(grain, 0.5))
    tex /= max(float(tex[inside].std()), 1e-6)
    shade = value * (1.0 + (0.05 + 0.18 * s) * tex) * (1.0 - 0.12 * np.minimum(rel, 1.0) ** 4)

    # Nucleoli: pale round spots, frequent in blasts.
    for _ in range(rng.binomial(3, 0.75 * s**1.5)):
        r0, a0 = rng.uniform(0, 0.5) * radius, rng.uniform(-np.pi, np.pi)
        cx, cy = r0 * np.cos(a0 + phi), r0 * np.sin(a0 + phi)
        rad = f * rng.uniform(9.0, 16.0)
        shade += 0.28 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * rad**2))

    rgb = shade[..., None] * stain + rng.normal(0.0, 0.012, (*x.shape, 1)).astype(np.float32)
    patch = np.clip(np.rint(rgb * 255.0), 8, 255).astype(np.uint8)
    patch[~inside] = 0
    out = np.zeros((size, size, 3), np.uint8)
    out[lo:hi, lo:hi] = patch
    return out


def _blast_likeness(rng, label: str) -> float:
    phenotype = label if rng.random() >= ATYPICAL[label] else ("hem" if label == "all" else "all")
    centre = 0.74 if phenotype == "all" else 0.26
    return float(np.clip(rng.normal(centre, 0.12), 0.0, 1.0))


def _draw_cells(rng, patient: Patient, n: int, size: int, grid):
    """Yield (file name, image) for one patient's cells, all under the patient's stain."""
    stain = _stain(rng)
    for name in _cell_names(rng, patient, n):
        yield name, render_cell(rng, _blast_likeness(rng, patient.label), stain, size, grid)


# Complete blood count by diagnosis: (median, spread) of a log-normal (sigma of the log) or a
# normal (sd) draw. Leukaemia (all): white count up with a very wide spread (from leukopenic to
# hyperleukocytosis), anaemia and thrombocytopenia, lymphocyte share up (an analyser counts
# blasts as lymphocytes). Each value alone separates the groups only partly (per-value AUC
# about 0.6-0.9; tests/unit/test_synth.py).
CBC_DRAW = {
    "hem": {"wbc": ("log", 7.0, 0.25), "rbc": ("normal", 4.8, 0.45), "haemoglobin": ("normal", 14.0, 1.4),
            "platelets": ("normal", 260.0, 60.0), "lymphocytes": ("normal", 30.0, 8.0)},
    "all": {"wbc": ("log", 11.0, 0.9), "rbc": ("normal", 4.1, 0.6), "haemoglobin": ("normal", 11.5, 2.3),
            "platelets": ("log", 160.0, 0.6), "lymphocytes": ("normal", 42.0, 15.0)},
}  # fmt: skip
# Each value is missing with this probability; the whole differential with CBC_NO_DIFF.
CBC_MISSING, CBC_NO_DIFF = 0.05, 0.1
DIGITS = {"wbc": 1, "rbc": 2, "haemoglobin": 1, "haematocrit": 1, "platelets": 0}


def cbc_sheet(rng, patients) -> pd.DataFrame:
    """One row per (patient id, diagnosis): PATIENT_FIELDS, then CBC_COLUMNS (NaN = missing).

    Name, age, sex and sample date are made up and independent of the diagnosis; haematocrit
    follows haemoglobin (about 3x), the differential sums to 100 %.
    """
    rows = []
    for pid, label in patients:
        draw = CBC_DRAW[label]
        v = {k: float(rng.lognormal(np.log(m), s) if kind == "log" else rng.normal(m, s))
             for k, (kind, m, s) in draw.items()}
        v["haematocrit"] = 2.95 * v["haemoglobin"] + rng.normal(0.0, 1.2)
        lympho = float(np.clip(v.pop("lymphocytes"), 5.0, 90.0))
        mono, eos, baso = rng.normal(6.0, 2.0), rng.gamma(2.0, 1.2), rng.gamma(2.0, 0.25)
        rest = np.clip([mono, eos, baso], 0.0, None)
        diff = {"lymphocytes": lympho, "monocytes": rest[0], "eosinophils": rest[1], "basophils": rest[2]}
        diff["neutrophils"] = max(100.0 - sum(diff.values()), 1.0)
        total = sum(diff.values())
        values = {**v, **{k: 100.0 * x / total for k, x in diff.items()}}
        values = {k: round(max(float(values[k]), 0.0), DIGITS.get(k, 1)) for k in CBC_COLUMNS}
        missing = rng.random(len(CBC_COLUMNS)) < CBC_MISSING
        if rng.random() < CBC_NO_DIFF:
            missing |= np.isin(CBC_COLUMNS, ["neutrophils", "lymphocytes", "monocytes", "eosinophils", "basophils"])
        values = {k: (np.nan if gone else values[k]) for k, gone in zip(CBC_COLUMNS, missing)}
        fields = {
            "patient_id": pid,
            "name": f"Replica patient {pid}",
            "age": int(rng.integers(2, 80)),
            "sex": str(rng.choice(["F", "M"])),
            "sample_date": str(np.datetime64("2019-01-01") + int(rng.integers(0, 365))),
        }
        rows.append({**fields, **values})
    return pd.DataFrame(rows, columns=[*PATIENT_FIELDS, *CBC_COLUMNS])


def _save(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, "RGB").save(path, format="BMP")


def generate_cnmc_replica(
    root,
    *,
    seed: int,
    folds: int,
    patients_per_fold: dict,
    holdout_patients: dict,
    cells_per_patient: tuple[int, int],
    image_size: int,
    patient_sheet=None,
) -> None:
    """Write the replica under `root` (built beside it, then renamed: no half-written replica)
    and, if `patient_sheet` is a path, the patients' blood counts there (`cbc_sheet`)."""
    lo, hi = cells_per_patient
    if not 1 <= lo <= hi:
        raise ValueError(f"synthetic.cells_per_patient must be [min, max] with 1 <= min <= max, got {cells_per_patient}")
    root, tmp = _partial_root(root)
    ss = np.random.SeedSequence(seed)
    rng = np.random.default_rng(ss.spawn(1)[0])
    patients = _patients(rng, folds, patients_per_fold, holdout_patients)
    counts = [int(rng.integers(lo, hi + 1)) if p.part != "final" else max(1, lo // 2) for p in patients]
    # The release renamed holdout and final-phase cells 1..N in shuffled order.
    renamed = {
        part: iter(rng.permutation(sum(n for p, n in zip(patients, counts) if p.part == part)) + 1)
        for part in ("prelim", "final")
    }
    grid = _grid(image_size)
    labels = []
    for patient, n, child in zip(patients, counts, ss.spawn(len(patients))):
        for name, rgb in _draw_cells(np.random.default_rng(child), patient, n, image_size, grid):
            if patient.part == "train":
                _save(tmp / f"training_data/fold_{patient.fold}/{patient.label}/{name}", rgb)
                continue
            new = f"{next(renamed[patient.part])}.bmp"
            _save(tmp / (PRELIM_DIR if patient.part == "prelim" else FINAL_DIR) / new, rgb)
            if patient.part == "prelim":
                labels.append((name, new, int(patient.label == "all")))
    labels.sort(key=lambda row: int(row[1][:-4]))
    (tmp / PRELIM_LABELS).parent.mkdir(parents=True, exist_ok=True)
    with open(tmp / PRELIM_LABELS, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["Patient_ID", "new_names", "labels"])
        writer.writerows(labels)

    if patient_sheet is not None:
        # its own child seed, spawned after the images': the images do not change with or without a sheet
        sheet = cbc_sheet(np.random.default_rng(ss.spawn(1)[0]), [(p.pid, p.label) for p in patients])
        sheet_path = Path(patient_sheet)
        sheet_path.parent.mkdir(parents=True, exist_ok=True)
        partial = sheet_path.with_name(sheet_path.name + ".partial")
        sheet.to_csv(partial, index=False, lineterminator="\n")
        partial.replace(sheet_path)
    _publish(tmp, root)


def _partial_root(root) -> tuple[Path, Path]:
    """(root, the empty directory beside it to build the replica in); refuses a non-empty root."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; delete it or choose another data.root")
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    return root, tmp


def _publish(tmp: Path, root: Path) -> None:
    """Rename the finished replica into place: no half-written replica is ever at `root`."""
    if root.exists():
        root.rmdir()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root)


# ---------------------------------------------------------------- class-per-folder replica
# Smear background (RGB, 0..1): pale pink plasma, and the red cells scattered over it.
PLASMA = np.array([0.93, 0.87, 0.89])
RED_CELL = np.array([0.90, 0.66, 0.70])


def class_names(classes) -> list[str]:
    """synthetic.classes: a list of names, or a count (class_00, class_01, ...)."""
    if isinstance(classes, int):
        return [f"class_{i:02d}" for i in range(classes)]
    return [str(c) for c in classes]


def class_counts(n_classes: int, cells_per_class, imbalance: float) -> list[int]:
    """Cells per class: the given list, or `cells_per_class` for the first class falling
    geometrically to `cells_per_class / imbalance` for the last (imbalance 1 = balanced)."""
    if isinstance(cells_per_class, list):
        if len(cells_per_class) != n_classes:
            raise ValueError(f"synthetic.cells_per_class lists {len(cells_per_class)} counts for "
                             f"{n_classes} classes; give one count per class or a single number")  # fmt: skip
        return [int(c) for c in cells_per_class]
    ratio = np.float64(imbalance) ** (-np.arange(n_classes) / max(n_classes - 1, 1))
    return [max(1, int(round(cells_per_class * r))) for r in ratio]


def _phenotypes(rng, n: int) -> list[dict]:
    """Each class's centre in blast-likeness, its tint and its cytoplasm-to-nucleus ratio: close
    enough between neighbouring classes that single cells overlap."""
    s = rng.permutation(np.linspace(0.3, 0.7, n))
    tint = rng.permutation(np.linspace(-0.07, 0.07, n))
    cyto = rng.permutation(np.linspace(1.15, 1.9, n))
    return [{"s": float(a), "tint": float(b), "cyto": float(c)} for a, b, c in zip(s, tint, cyto)]


def _owners(rng, counts: list[int], n_patients: int) -> list[np.ndarray]:
    """Each class's cells' patient indices, every patient with cells. Two classes: a diagnosis per
    patient (patients alternate between the classes, as C-NMC's), which patient-level evaluation
    needs; more classes: the cell types of one smear, every patient with cells of several classes."""
    if len(counts) == 2 and n_patients >= 2:
        return [np.arange(c, n_patients, 2)[rng.permutation(np.arange(n) % len(range(c, n_patients, 2)))]
                for c, n in enumerate(counts)]  # fmt: skip
    return np.split(rng.permutation(np.arange(sum(counts)) % n_patients), np.cumsum(counts)[:-1])


def render_smear_cell(rng, phenotype: dict, stain: np.ndarray, size: int, grid) -> np.ndarray:
    """One cell on a smear background: red cells on plasma, a cytoplasm disc, `render_cell`'s nucleus."""
    x, y = grid
    out = np.broadcast_to(PLASMA * rng.normal(1.0, 0.01), (size, size, 3)).copy()
    for _ in range(rng.integers(1, 4)):  # red cells, partly off the crop
        cx, cy = rng.uniform(-0.6, 0.6, 2) * size
        r = size * rng.uniform(0.12, 0.18)
        disc = np.clip((r - np.hypot(x - cx, y - cy)) / 1.5, 0.0, 1.0)[..., None]
        out = out * (1 - disc) + disc * RED_CELL
    s = float(np.clip(rng.normal(phenotype["s"], 0.12), 0.0, 1.0))
    tint = phenotype["tint"] + rng.normal(0.0, 0.03)
    tinted = stain * np.exp(np.array([tint, 0.0, -tint]))
    nucleus = render_cell(rng, s, tinted, size, grid)
    inside = nucleus.any(axis=2)
    r_cyto = min(np.sqrt(inside.sum() / np.pi) * phenotype["cyto"] * rng.normal(1.0, 0.08), 0.48 * size)
    cyto = np.clip((r_cyto - np.hypot(x, y)) / 1.5, 0.0, 1.0)[..., None]
    out = out * (1 - cyto) + cyto * np.clip(tinted * 1.05 + 0.1, 0.0, 1.0)
    out = np.where(inside[..., None], nucleus / 255.0, out)
    out += rng.normal(0.0, 0.01, out.shape)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def generate_folder_replica(
    root,
    *,
    seed: int,
    classes,
    cells_per_class,
    imbalance: float,
    patients: int,
    image_size: int,
) -> list[str]:
    """Write a class-per-folder replica under `root`: `<class>/<name>.png` RGB smear crops, read
    by the folders adapter like a user's own folders; returns the class names.

    Names are `P007_0003.png` (patient 7, its cell 3; `data.patient_regex: '^(?P<patient>P\\d+)_'`)
    with `patients` > 0, each patient with its own stain (`_owners` assigns cells), else `0003.png`.
    """
    names = class_names(classes)
    counts = class_counts(len(names), cells_per_class, imbalance)
    root, tmp = _partial_root(root)
    ss = np.random.SeedSequence(seed)
    rng = np.random.default_rng(ss.spawn(1)[0])
    phenotypes = _phenotypes(rng, len(names))
    stains = [_stain(rng) for _ in range(max(patients, 1))]
    owners_all = _owners(rng, counts, len(stains))
    grid = _grid(image_size)
    for name, owners, phenotype, child in zip(names, owners_all, phenotypes, ss.spawn(len(names))):
        crng = np.random.default_rng(child)
        seen = {}
        for owner in owners:
            seen[owner] = seen.get(owner, 0) + 1
            stem = f"P{owner + 1:03d}_{seen[owner]:04d}" if patients else f"{seen[owner]:04d}"
            rgb = render_smear_cell(crng, phenotype, stains[owner], image_size, grid)
            path = tmp / name / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb, "RGB").save(path, format="PNG")
    _publish(tmp, root)
    return names
