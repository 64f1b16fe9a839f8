"""Decode every candidate once: size, mode, content hash, exact duplicates and quarantine.

Nothing is dropped: a file that cannot be used stays in the sources manifest with
status `quarantined` and a reason from `images.REASONS`.
"""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hemaflow.images import REASONS, ImageRejected, load_rgb

SOURCE_COLUMNS = [
    "image_id", "dataset", "rel_path", "patient_id", "label", "label_index", "fold", "holdout",
    "width", "height", "mode", "format", "content_hash", "duplicate_of", "status", "reason",
]  # fmt: skip


def content_hash(rgb: np.ndarray) -> str:
    """sha256 over the array shape and its pixels: equal for equal decoded images whatever the file format."""
    h = hashlib.sha256(repr(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


def _inspect(path: Path, max_pixels: int) -> dict:
    try:
        rgb, mode, fmt = load_rgb(path, max_pixels)
    except ImageRejected as e:
        return {"reason": e.reason}
    return {
        "width": rgb.shape[1],
        "height": rgb.shape[0],
        "mode": mode,
        "format": fmt,
        "content_hash": content_hash(rgb),
        "reason": None,
    }


def _decode_all(paths: list[Path], max_pixels: int, threads: int) -> list[dict]:
    inspect = partial(_inspect, max_pixels=max_pixels)
    bar = partial(tqdm, total=len(paths), desc="decode", unit="img", file=sys.stderr, mininterval=1.0)
    if threads <= 1:
        return list(bar(map(inspect, paths)))
    with ThreadPoolExecutor(threads) as pool:  # PIL decoding and hashing release the GIL
        return list(bar(pool.map(inspect, paths)))


def _mark_duplicates(df: pd.DataFrame) -> pd.Series:
    """image_id of the first `ok` row (in path order) with the same content hash, else null."""
    ok = df[df["status"] == "ok"]
    first = ok.groupby("content_hash", sort=False)["image_id"].transform("first")
    dup = first.where(first != ok["image_id"])
    return dup.reindex(df.index).astype("str")


def build_sources(
    candidates: pd.DataFrame,
    root,
    *,
    dataset: str,
    strict: bool = False,
    max_pixels: int,
    threads: int = 1,
) -> pd.DataFrame:
    """The sources manifest (SOURCE_COLUMNS) for `candidates` from `adapters.list_candidates`."""
    if candidates["image_id"].duplicated().any():
        raise ValueError("candidates have repeated image_id values; build them with adapters.list_candidates")
    root = Path(root)
    df = candidates.reset_index(drop=True).copy()
    df["dataset"] = dataset
    todo = df.index[df["reason"].isna()]
    decoded = pd.DataFrame(
        _decode_all([root / p for p in df.loc[todo, "rel_path"]], max_pixels, threads),
        index=todo,
        columns=["width", "height", "mode", "format", "content_hash", "reason"],
    )
    df.loc[todo, "reason"] = decoded["reason"]
    df["width"] = decoded["width"].reindex(df.index).fillna(0).astype("int32")
    df["height"] = decoded["height"].reindex(df.index).fillna(0).astype("int32")
    for col in ("mode", "format"):  # empty when the file could not be decoded
        df[col] = decoded[col].reindex(df.index).fillna("").astype("str")
    df["content_hash"] = decoded["content_hash"].reindex(df.index).astype("str")
    df["status"] = np.where(df["reason"].isna(), "ok", "quarantined")
    df["duplicate_of"] = _mark_duplicates(df)
    df = df[SOURCE_COLUMNS]
    if strict and (df["status"] != "ok").any():
        raise ValueError(_strict_message(df, root))
    return df


def _strict_message(df: pd.DataFrame, root: Path) -> str:
    bad = df[df["status"] != "ok"]
    lines = "\n".join(f"  {r.rel_path}: {r.reason} ({REASONS[r.reason]})" for r in bad.itertuples())
    return (
        f"{len(bad)} bad input file(s) under {root} (data.strict is true; set it to false to "
        f"quarantine them and carry on):\n{lines}"
    )


def summary(sources: pd.DataFrame) -> dict:
    """Counts for the run summary: status, quarantine reasons, classes of usable files, duplicates."""
    ok = sources[sources["status"] == "ok"]
    dups = ok["duplicate_of"].dropna()

    def counts(s: pd.Series) -> dict:
        return {str(k): int(v) for k, v in s.value_counts().sort_index().items()}

    return {
        "files": len(sources),
        "status": counts(sources["status"]),
        "reasons": counts(sources["reason"].dropna()),
        "classes": counts(ok["label"].fillna("(unlabelled)")),
        "patients": int(ok["patient_id"].nunique()),
        "duplicate_groups": int(dups.nunique()),
        "duplicate_files": len(dups),
    }
