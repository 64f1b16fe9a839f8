"""Decode every candidate once: size, mode, content hash, perceptual hash, exact and near duplicates, quarantine."""

# Nothing is dropped: a file that cannot be used stays in the sources manifest with status
# `quarantined` and a reason from `images.REASONS`; a file that is not a candidate (hidden,
# not an image, outside the layout, dropped by the label map) has status `skipped` and a
# reason from `images.SKIP_REASONS`. Only `ok` rows go on to the split.

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from hemaflow.data.adapters import similar_labels
from hemaflow.data import near_duplicates as nd
from hemaflow.data.images import REASONS, SKIP_REASONS, ImageRejected, implausible, load_rgb

SOURCE_COLUMNS = [
    "image_id", "dataset", "rel_path", "patient_id", "source_label", "label", "label_index", "fold", "holdout",
    "width", "height", "mode", "format", "content_hash", "duplicate_of", "perceptual_hash", "near_duplicate_of",
    "status", "reason",
]  # fmt: skip


def content_hash(rgb: np.ndarray) -> str:
    """sha256 over the array shape and its pixels: equal for equal decoded images whatever the file format."""
    h = hashlib.sha256(repr(rgb.shape).encode())
    h.update(np.ascontiguousarray(rgb).tobytes())
    return h.hexdigest()


FIRST_FILES = 5  # paths named per reason in ingest.json and the log; quarantine.csv has them all


def _inspect(path: Path, max_pixels: int, min_side: int, near: dict) -> dict:
    try:
        rgb, mode, fmt = load_rgb(path, max_pixels)
    except ImageRejected as e:
        return {"reason": e.reason}
    except OSError:  # the file became unreadable after listing (permissions, I/O error)
        return {"reason": "unreadable"}
    return {
        "width": rgb.shape[1],
        "height": rgb.shape[0],
        "mode": mode,
        "format": fmt,
        "content_hash": content_hash(rgb),
        "perceptual_hash": None if near["method"] == nd.OFF else nd.perceptual_hash(rgb, near["method"], near["hash_size"]),
        "reason": implausible(rgb, min_side),
    }


def _decode_all(paths: list[Path], max_pixels: int, min_side: int, threads: int, near: dict) -> list[dict]:
    inspect = partial(_inspect, max_pixels=max_pixels, min_side=min_side, near=near)
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


def _mark_near_duplicates(df: pd.DataFrame, max_distance: int) -> pd.Series:
    """image_id of the first `ok` row (in path order) of its perceptual-hash group, else null.

    A group holds every image within `max_distance` bits of another member (identical images
    included: their hashes are equal). Null for the first member, for an image in no group,
    and for every image when no perceptual hash was computed (method off)."""
    ok = df[(df["status"] == "ok") & df["perceptual_hash"].notna()]
    if ok.empty:
        return pd.Series(None, index=df.index, dtype="str")
    component = nd.components(ok["perceptual_hash"].tolist(), max_distance)
    first = ok.groupby(component)["image_id"].transform("first")
    return first.where(first != ok["image_id"]).reindex(df.index).astype("str")


ON_LABEL_CONFLICT = ("quarantine", "majority")


def _label_conflicts(df: pd.DataFrame, policy: str) -> pd.Index:
    """Rows to quarantine as `label_conflict`: `ok` rows whose pixels recur under another label.

    quarantine: every member of such a group; majority: the members outside the group's most
    frequent label, or every member when two labels tie (no label can be trusted then).
    """
    if policy not in ON_LABEL_CONFLICT:
        raise ValueError(f"data.on_label_conflict: {policy!r} is not allowed; use one of {', '.join(ON_LABEL_CONFLICT)}")
    ok = df[df["status"] == "ok"]
    n_labels = ok.groupby("content_hash")["label"].transform("nunique")
    bad = []
    for _, group in ok[n_labels > 1].groupby("content_hash", sort=False):
        counts = group["label"].value_counts(dropna=False)
        if policy == "majority" and (counts == counts.iloc[0]).sum() == 1:
            bad.append(group.index[group["label"] != counts.index[0]])
        else:
            bad.append(group.index)
    return bad[0].append(bad[1:]) if bad else pd.Index([], dtype=int)


def build_sources(
    candidates: pd.DataFrame,
    root,
    *,
    dataset: str,
    strict: bool = False,
    max_pixels: int,
    min_side: int = 1,
    threads: int = 1,
    on_label_conflict: str = "quarantine",
    near_duplicates: dict | None = None,
) -> pd.DataFrame:
    """The sources manifest (SOURCE_COLUMNS) for `candidates` from `adapters.list_candidates`.

    A decoded image whose smaller side is below `min_side` is quarantined `too_small` (the
    workflow passes data.min_side; 1 checks nothing), a near-constant one `blank`.
    `near_duplicates` is data.near_duplicates ({method, hash_size, max_distance}; the workflow
    passes it, None is method off: no perceptual hash, `near_duplicate_of` empty).
    """
    near = near_duplicates or {"method": nd.OFF}
    if near["method"] != nd.OFF and near["method"] not in nd.METHODS:
        raise ValueError(f"data.near_duplicates.method: {near['method']!r} is not one of {', '.join([nd.OFF, *nd.METHODS])}")
    if candidates["image_id"].duplicated().any():
        raise ValueError("candidates have repeated image_id values; build them with adapters.list_candidates")
    root = Path(root)
    df = candidates.reset_index(drop=True).copy()
    df["dataset"] = dataset
    todo = df.index[df["reason"].isna()]
    decoded = pd.DataFrame(
        _decode_all([root / p for p in df.loc[todo, "rel_path"]], max_pixels, min_side, threads, near),
        index=todo,
        columns=["width", "height", "mode", "format", "content_hash", "perceptual_hash", "reason"],
    )
    df.loc[todo, "reason"] = decoded["reason"]
    df["width"] = decoded["width"].reindex(df.index).fillna(0).astype("int32")
    df["height"] = decoded["height"].reindex(df.index).fillna(0).astype("int32")
    for col in ("mode", "format"):  # empty when the file could not be decoded
        df[col] = decoded[col].reindex(df.index).fillna("").astype("str")
    df["content_hash"] = decoded["content_hash"].reindex(df.index).astype("str")
    df["perceptual_hash"] = decoded["perceptual_hash"].reindex(df.index).astype("str")
    df["status"] = np.select([df["reason"].isna(), df["reason"].isin(list(SKIP_REASONS))], ["ok", "skipped"], "quarantined")
    conflicts = _label_conflicts(df, on_label_conflict)
    df.loc[conflicts, ["reason", "status"]] = ["label_conflict", "quarantined"]
    df["duplicate_of"] = _mark_duplicates(df)
    df["near_duplicate_of"] = _mark_near_duplicates(df, near.get("max_distance", 0))
    df = df[SOURCE_COLUMNS]
    if strict and (df["status"] == "quarantined").any():
        raise ValueError(_strict_message(df, root))
    return df


def _strict_message(df: pd.DataFrame, root: Path) -> str:
    bad = df[df["status"] == "quarantined"]
    lines = "\n".join(f"  {r.rel_path}: {r.reason} ({REASONS[r.reason]})" for r in bad.itertuples())
    return (
        f"{len(bad)} bad input file(s) under {root} (data.strict is true; set it to false to "
        f"quarantine them and carry on):\n{lines}"
    )


def summary(sources: pd.DataFrame, classes, *, warn_similar: bool = True, near_duplicates: dict | None = None) -> dict:
    """The ingest report: status counts (ok + quarantined + skipped = rows), file counts per
    quarantine and skip reason with the first FIRST_FILES paths of each (`first_files`), usable
    images per class (empty classes listed), label-conflict groups, near-duplicate groups
    (`near_duplicates`: data.near_duplicates, None = off) and, with `warn_similar` (no
    data.classes to check against), class names that look like typos of each other."""
    ok = sources[sources["status"] == "ok"]
    dups = ok["duplicate_of"].dropna()

    def counts(s: pd.Series) -> dict:
        return {str(k): int(v) for k, v in s.value_counts().sort_index().items()}

    per_class = {c: int((ok["label"] == c).sum()) for c in classes}
    unlabelled = int(ok["label"].isna().sum())
    info = {
        "files": len(sources),
        "status": {s: int((sources["status"] == s).sum()) for s in ("ok", "quarantined", "skipped")},
        "reasons": counts(sources.loc[sources["status"] == "quarantined", "reason"]),
        "skipped": counts(sources.loc[sources["status"] == "skipped", "reason"]),
        "first_files": _first_files(sources[sources["status"] != "ok"]),
        "classes": {**per_class, **({"(unlabelled)": unlabelled} if unlabelled else {})},
        "empty_classes": [c for c, n in per_class.items() if n == 0],
        "patients": int(ok["patient_id"].nunique()),
        "duplicate_groups": int(dups.nunique()),
        "duplicate_files": len(dups),
        "label_conflicts": _conflict_groups(sources),
        "near_duplicates": near_duplicate_report(sources, near_duplicates),
    }
    if warn_similar:
        info["similar_labels"] = [list(p) for p in similar_labels(classes)]
    return info


def _first_files(bad: pd.DataFrame) -> dict[str, list[str]]:
    by_reason = bad.sort_values("rel_path").groupby("reason")["rel_path"]
    return {str(r): paths.head(FIRST_FILES).tolist() for r, paths in by_reason}


def _conflict_groups(sources: pd.DataFrame) -> list[dict]:
    """Every group of identical images with several labels: its files, labels and the label kept (if any)."""
    hashes = sources.loc[sources["reason"] == "label_conflict", "content_hash"].unique()
    groups = []
    for h in sorted(hashes):
        same = sources["content_hash"] == h
        members = sources[same & ((sources["status"] == "ok") | (sources["reason"] == "label_conflict"))]
        kept = members.loc[members["status"] == "ok", "label"].unique()
        groups.append({
            "content_hash": h[:16],
            "files": {r.rel_path: r.label for r in members.itertuples()},
            "kept": str(kept[0]) if len(kept) else None,
        })  # fmt: skip
    return groups


FIRST_GROUPS = 5  # near-duplicate groups named in ingest.json and split_notes.txt (FIRST_FILES members each)


def near_duplicate_groups(sources: pd.DataFrame) -> list[pd.DataFrame]:
    """The perceptual-hash groups that identical pixels alone do not explain (members with more
    than one content hash), each as its `ok` rows in path order; groups ordered by first member."""
    ok = sources[sources["status"] == "ok"]
    head = ok["near_duplicate_of"].where(ok["near_duplicate_of"].notna(), ok["image_id"])
    grouped = ok.groupby(head, sort=False)
    found = [g for _, g in grouped if len(g) > 1 and g["content_hash"].nunique() > 1]
    return sorted(found, key=lambda g: g["rel_path"].min())


def near_duplicate_report(sources: pd.DataFrame, near: dict | None) -> dict:
    """ingest.json's `near_duplicates`: the parameters, group and file counts, groups spanning
    several patients or labels, the first FIRST_GROUPS groups' first FIRST_FILES files, and
    what the method does and does not catch."""
    near = near or {"method": nd.OFF}
    if near["method"] == nd.OFF:
        return {"method": nd.OFF, "caught": "nothing beyond identical pixels (duplicate_of)"}
    found = near_duplicate_groups(sources)
    return {
        **near,
        "groups": len(found),
        "files": int(sum(len(g) for g in found)),
        "largest": int(max((len(g) for g in found), default=0)),
        "across_patients": int(sum(g["patient_id"].nunique() > 1 for g in found)),
        "across_labels": int(sum(g["label"].nunique() > 1 for g in found)),
        "first_groups": [g["rel_path"].head(FIRST_FILES).tolist() for g in found[:FIRST_GROUPS]],
        "caught": nd.CAUGHT,
        "not_caught": nd.NOT_CAUGHT,
    }
