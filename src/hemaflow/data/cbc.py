"""Per-patient complete blood counts (CBC): the patient sheet, its join to the cells, and the
standardisation statistics fitted on the training patients."""

# Pandas only (no TensorFlow), so the replica generator and the sheet checks stay light; the
# Keras side of blood-count fusion is `hemaflow.train.fusion`.

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# Sheet columns (lower_snake_case) and their units; the differential is % of white cells.
CBC_UNITS = {
    "wbc": "10^9/L",
    "rbc": "10^12/L",
    "haemoglobin": "g/dL",
    "haematocrit": "%",
    "platelets": "10^9/L",
    "neutrophils": "%",
    "lymphocytes": "%",
    "monocytes": "%",
    "eosinophils": "%",
    "basophils": "%",
}
CBC_COLUMNS = tuple(CBC_UNITS)
# Patient fields the sheet may carry for the per-patient report; not model inputs.
PATIENT_FIELDS = ("patient_id", "name", "age", "sex", "sample_date")


def read_sheet(path: str | Path) -> pd.DataFrame:
    """The patient sheet as a table indexed by patient_id, with the CBC columns it has (float, NaN = missing).

    Other columns (name, age, ...) are dropped; patient ids are read as text, stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.patient_sheet: {path} does not exist (a CSV with patient_id and CBC columns)")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw.columns = [c.strip() for c in raw.columns]
    if "patient_id" not in raw.columns:
        raise ValueError(f"{path}: no patient_id column; the sheet needs it and some of {', '.join(CBC_COLUMNS)}")
    columns = [c for c in CBC_COLUMNS if c in raw.columns]
    if not columns:
        raise ValueError(f"{path}: no CBC column; expected some of {', '.join(CBC_COLUMNS)} (lower case)")
    ids = raw["patient_id"].str.strip()
    if (ids == "").any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(ids == '')[0]) + 2} has an empty patient_id")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ValueError(f"{path}: patient_id {dup.iloc[0]!r} appears more than once; keep one row per patient")
    sheet = pd.DataFrame(index=pd.Index(ids, name="patient_id"))
    for col in columns:
        text = raw[col].str.strip()
        values = pd.to_numeric(text.where(text != ""), errors="coerce")
        bad = values.isna() & (text != "")
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{path}: column {col}, row {row + 2} ({ids.iloc[row]}): {text.iloc[row]!r} is not a number "
                "(leave the cell empty for a missing value)"
            )
        sheet[col] = values.to_numpy(dtype=float)
    return sheet


@dataclass(frozen=True)
class Standardisation:
    """Per-column mean and standard deviation over the training patients (one value per patient)."""

    columns: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n_patients: int

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def patients_of(sources: pd.DataFrame, splits: pd.DataFrame, split: str) -> list[str]:
    """Patient ids of the usable images in `split`."""
    ids = splits.loc[splits["split"] == split, "image_id"]
    pids = sources.loc[sources["image_id"].isin(ids), "patient_id"].dropna()
    return sorted(set(pids))


def fit_standardisation(sheet: pd.DataFrame, train_patients) -> Standardisation:
    """Mean and std (ddof 0) of each CBC column over the training patients the sheet has.

    Per patient, not per cell: the count is a property of the patient, and weighting by cells
    would let the patients with most images set the scale. A constant column gets std 1.
    """
    rows = sheet.loc[sheet.index.isin(list(train_patients))]
    if rows.empty:
        raise ValueError(
            "data.patient_sheet: none of the training patients is in the sheet "
            f"(sheet ids e.g. {list(sheet.index[:3])}, training ids e.g. {sorted(train_patients)[:3]}); "
            "patient_id must be spelled as in the image names"
        )
    empty = [c for c in sheet.columns if rows[c].isna().all()]
    if empty:
        raise ValueError(
            f"data.patient_sheet: column(s) {', '.join(empty)} have no value for any training patient, so they "
            "cannot be standardised; fill them in or delete the column(s) from the sheet"
        )
    mean = rows.mean()
    std = rows.std(ddof=0).where(lambda s: s > 0, 1.0)
    return Standardisation(
        columns=tuple(sheet.columns),
        mean=tuple(float(mean[c]) for c in sheet.columns),
        std=tuple(float(std[c]) for c in sheet.columns),
        n_patients=int(len(rows)),
    )


def values_by_aug_id(sheet: pd.DataFrame, augmented: pd.DataFrame, sources: pd.DataFrame, columns) -> pd.DataFrame:
    """Raw CBC values (NaN = missing) for every aug_id of `augmented`, through image_id -> patient_id.

    Cells whose patient is not in the sheet (or who have no patient id) get a row of NaN:
    imputed downstream, with every missing indicator set. Sheet patients without cells are ignored.
    """
    patient = augmented[["aug_id", "image_id"]].merge(sources[["image_id", "patient_id"]], on="image_id", how="left")
    if patient["patient_id"].isna().all() and len(patient):
        raise ValueError(
            "blood-count fusion needs patient ids, and no image has one (folders adapter: set data.patient_regex)"
        )
    values = sheet.reindex(columns=list(columns)).reindex(patient["patient_id"].to_numpy())
    return pd.DataFrame(values.to_numpy(dtype=np.float32), index=pd.Index(patient["aug_id"], name="aug_id"),
                        columns=list(columns))  # fmt: skip
