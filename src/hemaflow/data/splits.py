"""Train/val/test assignment that never lets a patient or a set of identical or near-identical images straddle splits."""

from __future__ import annotations

import warnings

import networkx as nx
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from hemaflow.data.ingest import FIRST_FILES, FIRST_GROUPS, near_duplicate_groups
from hemaflow.data.manifest import SPLITS

PRIORITY = ("test", "val", "train")  # a group seen in several splits goes to the first one here


def _present(value) -> bool:
    """A real id: not None/NaN/pd.NA (any pandas version's missing string) and not empty."""
    return pd.notna(value) and str(value) != ""


def groups(ok: pd.DataFrame) -> pd.Series:
    """Per image: its patient merged with every duplicate and near-duplicate group touching it
    (connected components). A near-duplicate group (`near_duplicate_of`, perceptual hash) is
    treated exactly like a group of identical images: spanning two patients, it joins them."""
    graph = nx.Graph()
    graph.add_nodes_from(("image", i) for i in ok["image_id"])
    images = set(ok["image_id"])
    for img, pid, dup, near in zip(ok["image_id"], ok["patient_id"], ok["duplicate_of"], ok["near_duplicate_of"]):
        if _present(pid):
            graph.add_edge(("image", img), ("patient", pid))
        # only a usable image can join a group: a missing value spelt as text (pandas 2's
        # astype("str") gives "nan") would otherwise tie every image to one node
        for other in (dup, near):
            if _present(other) and other in images:
                graph.add_edge(("image", img), ("image", other))
    name = {}
    for component in nx.connected_components(graph):
        patients = sorted(v for k, v in component if k == "patient")
        label = "+".join(patients) if patients else min(v for k, v in component if k == "image")
        name.update({v: label for k, v in component if k == "image"})
    return ok["image_id"].map(name)


def _dataset_splits(ok: pd.DataFrame, val_fold: int, notes: list[str]) -> pd.Series:
    folds = sorted(set(ok.loc[ok["fold"] >= 0, "fold"].tolist()))
    if val_fold not in folds:
        raise ValueError(f"split.val_fold: fold {val_fold} is not one of the dataset's folds {folds}")
    split = pd.Series(
        np.select([ok["holdout"], ok["fold"] == val_fold], ["test", "val"], default="train"), index=ok.index
    )
    loose = int(((ok["fold"] < 0) & ~ok["holdout"]).sum())
    if loose:
        notes.append(f"{loose} image(s) have neither a dataset fold nor holdout membership; they go to train")
    if not ok["holdout"].any():
        notes.append("the dataset has no labelled holdout: the test split is empty")
    return split


def _merge_straddlers(split: pd.Series, group: pd.Series, notes: list[str]) -> pd.Series:
    """Move every group found in several splits wholly into the highest-priority one."""
    split = split.copy()
    for g, members in split.groupby(group):
        present = set(members)
        if len(present) > 1:
            target = next(s for s in PRIORITY if s in present)
            moved = members[members != target]
            split[moved.index] = target
            notes.append(
                f"group {g}: patient or identical or near-identical images span {sorted(present)}; "
                f"{len(moved)} image(s) moved to {target}"
            )
    return split


def _stratified_splits(ok: pd.DataFrame, group: pd.Series, seed: int, ratios, notes: list[str]) -> pd.Series:
    n_test, n_val = ratios[2], ratios[1]
    n_splits = sum(ratios)
    n_groups = group.nunique()
    if n_groups < n_splits:
        raise ValueError(f"split.ratios: {list(ratios)} needs at least {n_splits} groups (patients or images), found {n_groups}")
    fold = np.empty(len(ok), dtype=int)
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k, (_, idx) in enumerate(cv.split(np.zeros(len(ok)), ok["label_index"], group)):
            fold[idx] = k
    notes += [str(w.message) for w in caught]
    split = np.where(fold < n_test, "test", np.where(fold < n_test + n_val, "val", "train"))
    return pd.Series(split, index=ok.index)


def assign_splits(
    sources: pd.DataFrame,
    *,
    seed: int,
    ratios=(7, 2, 1),
    use_dataset_folds: bool = True,
    val_fold: int = 2,
) -> tuple[pd.DataFrame, list[str]]:
    """(image_id, split, group) for every `ok` source, and notes on merges and leakage risks.

    With dataset folds (C-NMC): test = holdout, val = fold `val_fold`, train = other folds.
    Otherwise a seeded, class-stratified, group-disjoint split in `ratios` (train:val:test).
    """
    _check_named_folders_have_images(sources)
    ok = sources[sources["status"] == "ok"].reset_index(drop=True)
    if ok.empty:
        raise ValueError("no usable source image (every file is quarantined); see results/reports/quarantine.csv")
    notes: list[str] = []
    group = groups(ok)
    notes += _near_duplicate_notes(ok)
    missing = int((~ok["patient_id"].map(_present)).sum())
    if missing == len(ok):
        notes.append(
            "no patient ids: split by image (identical images kept together); "
            "patient leakage across splits cannot be ruled out"
        )
    elif missing:
        notes.append(f"{missing} image(s) without patient id were split as single images; leakage cannot be ruled out for them")
    if use_dataset_folds and ((ok["fold"] >= 0).any() or ok["holdout"].any()):
        split = _merge_straddlers(_dataset_splits(ok, val_fold, notes), group, notes)
    else:
        split = _stratified_splits(ok, group, seed, ratios, notes)
    folds = use_dataset_folds and ((ok["fold"] >= 0).any() or ok["holdout"].any())
    _check_every_class_in_every_split(ok, split, folds)
    out = pd.DataFrame({"image_id": ok["image_id"], "split": split, "group": group})
    return out.astype("str"), notes


def _near_duplicate_notes(ok: pd.DataFrame) -> list[str]:
    """What the perceptual-hash grouping found (ingest.json `near_duplicates` has the method,
    the threshold and what is not caught): the groups, and those that join patients."""
    if not ok["perceptual_hash"].map(_present).any():
        return [
            "near-duplicates were not looked for (data.near_duplicates.method: off): only identical "
            "pixels are kept together; re-encoded, rescaled or re-cropped copies may straddle splits"
        ]
    found = near_duplicate_groups(ok)
    notes = [
        f"near-duplicates (perceptual hash, see ingest.json): {len(found)} group(s) beyond identical pixels, "
        f"{sum(len(g) for g in found)} image(s), each kept in one split; rotations, mirror images and "
        "most crops are not caught"
    ]
    for g in found[:FIRST_GROUPS]:
        more = f", ... ({len(g) - FIRST_FILES} more)" if len(g) > FIRST_FILES else ""
        notes.append(f"near-duplicate group of {len(g)}: {', '.join(g['rel_path'].head(FIRST_FILES))}{more}")
    for g in found:
        patients = sorted(str(p) for p in g["patient_id"].dropna().unique() if _present(p))
        if len(patients) > 1:
            notes.append(
                f"near-identical images of patients {', '.join(patients)} ({', '.join(g['rel_path'].head(FIRST_FILES))}): "
                "these patients are one group and stay in one split, as patients sharing identical images do"
            )
    return notes


def _check_named_folders_have_images(sources: pd.DataFrame) -> None:
    """ValueError naming each class folder without images that data.classes makes a class of its own
    (merged by data.label_map into a class that has images elsewhere, it is harmless)."""
    used = set(sources.loc[sources["status"] == "ok", "label"])
    empty = (sources["reason"] == "empty_class_folder") & (sources["label_index"] >= 0) & ~sources["label"].isin(used)
    named = sources.loc[empty, "rel_path"]
    if len(named):
        folders = ", ".join(f"{p}/" for p in sorted(named))
        raise ValueError(
            f"data.classes names class folder(s) without any image file under data.root: {folders}. "
            "Add images to them, or remove them from data.classes"
        )


def _check_every_class_in_every_split(ok: pd.DataFrame, split: pd.Series, dataset_folds: bool) -> None:
    """ValueError naming each (split, class) without images, and the option that changes it.

    With dataset folds and no labelled holdout the test split is empty by design (a note says so).
    """
    expected = [s for s in SPLITS if not (s == "test" and dataset_folds and not ok["holdout"].any())]
    classes = ok.drop_duplicates("label_index").sort_values("label_index")["label"].fillna("(unlabelled)")
    labels = ok["label"].fillna("(unlabelled)")
    gaps = [f"split {s!r} has no {c!r} image" for s in expected for c in classes if not ((split == s) & (labels == c)).any()]
    if gaps:
        fix = (
            "choose another split.val_fold, set split.use_dataset_folds: false, or add data of that class"
            if dataset_folds
            else "change split.ratios (a larger share for that split) or add patients of that class"
        )
        raise ValueError(f"the split leaves a class out: {'; '.join(gaps)}. Every class needs images in train, val and test: {fix}")


def split_summary(sources: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """Patients and cells per split and class."""
    df = splits.merge(sources[["image_id", "patient_id", "label"]], on="image_id", how="left")
    df["label"] = df["label"].fillna("(unlabelled)")
    table = (
        df.groupby(["split", "label"])
        .agg(patients=("patient_id", "nunique"), cells=("image_id", "size"))
        .reset_index()
    )
    table["split"] = pd.Categorical(table["split"], SPLITS, ordered=True)
    return table.sort_values(["split", "label"], ignore_index=True).astype({"split": "str"})
