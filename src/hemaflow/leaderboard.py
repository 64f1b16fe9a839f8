"""Collect every combo's validation and test metrics into one ranked table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hemaflow.evaluate import json_safe

HEADLINE = ("accuracy", "balanced_accuracy", "auc", "f1", "macro_f1")
PARAMS = ("model", "inputs", "optimizer", "lr", "lr_policy", "batch_size", "dropout")
# Patient-level test figures: the honest comparison of image-only and fused (image+cbc) rows.
PATIENT = ("accuracy", "balanced_accuracy", "auc")
# leaderboard column <- key of train.json (as `train.train_combo` writes it; absent ones stay empty).
# epochs and wall_seconds are totals over every leg of a resumed training; `legs` counts them.
TRAIN_INFO = {"status": "status", "epochs": "epochs_run", "best_epoch": "best_epoch", "wall_seconds": "wall_seconds"}
# Whole numbers, empty for the classical baseline (nullable, so they never print as 64.0).
COUNTS = ("batch_size", "epochs", "best_epoch", "legs")
# Per combination in metrics.json, so `dvc metrics show` lists every combination.
PER_COMBO = ("test_balanced_accuracy", "test_auc", "patient_test_accuracy")


def build_leaderboard(entries: dict, rank_by: str) -> pd.DataFrame:
    """One row per combo from {combo: (params, metrics.json, train.json or None)}, best val `rank_by` first.

    Combinations whose training diverged (status `diverged` in train.json) come after all others,
    whatever their score: a collapsed model that always predicts the majority class can score a
    high accuracy. Ties (and combos without the metric, which go last) are ordered by combo id.
    """
    names = list(HEADLINE) + ([rank_by] if rank_by not in HEADLINE else [])
    rows = []
    for combo, (params, scores, info) in entries.items():
        row = {"combo": combo, **{k: params.get(k) for k in PARAMS}}
        row["inputs"] = params.get("inputs", "image")  # image-only combos (and the SVM) have no key
        row.update({col: (info or {}).get(key) for col, key in TRAIN_INFO.items()})
        row["legs"] = len(info["legs"]) if info and "legs" in info else None
        for split in ("val", "test"):
            row.update({f"{split}_{m}": scores.get(split, {}).get(m) for m in names})
        patient = scores.get("patient", {})
        if "threshold" in patient:  # absent when the patient level was skipped (see its note)
            row["patient_threshold"] = patient.get("threshold")
            row.update({f"patient_test_{m}": patient.get("test", {}).get(m) for m in PATIENT})
        rows.append(row)
    board = pd.DataFrame(rows)
    key = f"val_{rank_by}"
    if board.empty or board[key].isna().all():
        raise ValueError(
            f"evaluate.rank_by {rank_by!r}: no combo has this validation metric in metrics.json "
            f"(use one of {list(HEADLINE)}, or another key of metrics.json's 'val' section)"
        )
    numeric = [c for c in board.columns if c.startswith(("val_", "test_", "patient_"))]
    board[numeric] = board[numeric].astype(float)
    board[list(COUNTS)] = board[list(COUNTS)].astype("Int64")
    board = (
        board.sort_values("combo", kind="stable")
        .sort_values(key, ascending=False, na_position="last", kind="stable")
        .sort_values("status", key=lambda status: status == "diverged", kind="stable")
    )
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)


def write_leaderboard(df: pd.DataFrame, csv_path, md_path) -> None:
    """The leaderboard as CSV and as a Markdown table (for the report)."""
    for p in (csv_path, md_path):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv_path, index=False)
    fmt = tuple("g" if c in ("lr", "dropout") else ".1f" if c == "wall_seconds" else ".4f" for c in df.columns)
    cells = df.astype(object).where(df.notna(), None)  # the baseline has no lr, batch size, ...
    Path(md_path).write_text(cells.to_markdown(index=False, floatfmt=fmt, missingval="") + "\n")


def headline(df: pd.DataFrame, rank_by: str) -> dict:
    """Summary for metrics.json: the best combo, its params and val/test figures, n combos, the
    ranking (every combo id, best first), and a few figures of every combo (validation `rank_by`, test balanced accuracy and AUC, patient accuracy)."""
    best = df.iloc[0]
    figures = {
        split: {c.removeprefix(f"{split}_"): best[c] for c in df.columns if c.startswith(f"{split}_")}
        for split in ("val", "test")
    }
    out = {
        "rank_by": rank_by,
        "n_combos": int(len(df)),
        "best": str(best["combo"]),
        "ranking": [str(c) for c in df["combo"]],  # leaderboard order: what best_of reads
        "params": {k: best[k] for k in PARAMS if pd.notna(best[k])},
        **figures,
    }
    if "patient_test_accuracy" in df:
        out["patient"] = {"threshold": best["patient_threshold"], "test_accuracy": best["patient_test_accuracy"]}
    columns = [f"val_{rank_by}", *(c for c in PER_COMBO if c in df and c != f"val_{rank_by}")]
    out["combos"] = {row["combo"]: {c: row[c] for c in columns} for _, row in df.iterrows()}
    return json_safe(out)


def best_of(metrics: dict, candidates, source: str = "metrics.json") -> str:
    """The highest-ranked of `candidates` in a headline (metrics.json): the one answer to "which
    model is best" for explain, predict and the report. Its `combos` map is keyed alphabetically
    (DVC sorts it), so only `ranking` holds the order."""
    if "ranking" not in metrics:
        raise ValueError(f"{source} has no ranking (written by an older hemaflow): rerun the leaderboard "
                         "(snakemake --cores all evaluation)")  # fmt: skip
    allowed = set(candidates)
    for combo in metrics["ranking"]:
        if combo in allowed:
            return combo
    raise ValueError(f"none of the ranked combinations in {source} ({', '.join(metrics['ranking'])}) is one of "
                     f"{sorted(allowed) or 'none'}: an image-only CNN is needed (the SVM baseline and fused models take no lone image)")
