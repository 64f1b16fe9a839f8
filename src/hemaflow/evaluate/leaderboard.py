"""Rank every combo on validation figures only; test figures are reported for the selected one alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from hemaflow.models_io import json_safe
from hemaflow.stats import overlaps

HEADLINE = ("accuracy", "balanced_accuracy", "auc", "f1", "macro_f1")
PARAMS = ("model", "inputs", "optimizer", "lr", "lr_policy", "batch_size", "dropout")
# Patient-level figures: the honest comparison of image-only and fused (image+cbc) rows.
PATIENT = ("accuracy", "balanced_accuracy", "auc")
# evaluate.rank_by values that name a patient metric -> that metric in metrics.json's patient section.
PATIENT_RANK = {f"patient_{m}": m for m in PATIENT}
# leaderboard column <- key of train.json (as `train.train_combo` writes it; absent ones stay empty).
# epochs and wall_seconds are totals over every leg of a resumed training; `legs` counts them.
TRAIN_INFO = {"status": "status", "epochs": "epochs_run", "best_epoch": "best_epoch", "wall_seconds": "wall_seconds"}
# Whole numbers, empty for the classical baseline (nullable, so they never print as 64.0).
COUNTS = ("batch_size", "epochs", "best_epoch", "legs")
# The separate file of every combination's test figures (never to choose by: see its caption).
EVERY_TEST = "test_of_every_combination.csv"


class Ranking(NamedTuple):
    """What the leaderboard is sorted by: `column` (a validation figure), then `tie_break`
    (None or another validation figure), then combo id; `rule` says why, in words."""

    column: str
    tie_break: str | None
    rule: str


def _is_test(column: str) -> bool:
    return column.startswith(("test_", "patient_test_"))


def _interval(section: dict, metric: str) -> tuple[float, float]:
    """(low, high) of `metric` from a metrics.json section's "ci" (cell level: "metrics";
    patient level: "metrics", else "wilson"); (nan, nan) when absent or undefined."""
    ci = (section or {}).get("ci") or {}
    pair = (ci.get("metrics") or {}).get(metric) or (ci.get("wilson") or {}).get(metric)
    if not pair or pair[0] is None or pair[1] is None:
        return math.nan, math.nan
    return float(pair[0]), float(pair[1])


def choose_ranking(board: pd.DataFrame, rank_by: str) -> Ranking:
    """How `evaluate.rank_by` ranks this board.

    A patient metric (patient_accuracy, patient_balanced_accuracy, patient_auc) ranks every row
    by the validation patients' figure, ties by the cells' same metric. A cell metric ranks by
    the validation cells' figure, except when a fused (image+cbc) row is on the board and the
    data have validation patients: every cell of a patient carries the patient's one blood
    count, so a fused model's cell figures count one decision per patient many times over
    (README, "Blood counts and the diagnosis come from the same patient"). Then every row, the
    image-only ones too, is ranked by the patient counterpart (accuracy, balanced_accuracy and
    auc are their own; f1 and macro_f1 have none at patient level: balanced_accuracy), ties
    by the cells' `rank_by`. Without validation patients (no patient ids, a multi-class task,
    or validation patients of one diagnosis only) the cell figure ranks, and `rule` says so.
    """
    has = lambda col: col in board and board[col].notna().any()  # noqa: E731
    if rank_by in PATIENT_RANK:
        metric = PATIENT_RANK[rank_by]
        if has(f"patient_val_{metric}"):
            return Ranking(f"patient_val_{metric}", f"val_{metric}",
                           f"evaluate.rank_by {rank_by}: validation patients' {metric}, ties by the validation cells' {metric}")  # fmt: skip
        return Ranking(f"val_{metric}", None,
                       f"evaluate.rank_by {rank_by}, but no combination has patient-level validation figures "
                       f"(see patient.skipped in results/evaluation/<combo>/metrics.json): ranked by the validation cells' {metric}")  # fmt: skip
    counterpart = rank_by if rank_by in PATIENT else "balanced_accuracy"
    fused = "inputs" in board and (board["inputs"].fillna("image") != "image").any()
    if fused and has(f"patient_val_{counterpart}"):
        return Ranking(f"patient_val_{counterpart}", f"val_{rank_by}",
                       f"fused (image+cbc) combinations on the board and patients in the data: every row ranked by the "
                       f"validation patients' {counterpart} (a fused model's cell figures are inflated), ties by the "
                       f"validation cells' {rank_by}")  # fmt: skip
    if fused:
        return Ranking(f"val_{rank_by}", None,
                       f"validation cells' {rank_by}: fused (image+cbc) combinations are on the board but no combination "
                       "has patient-level validation figures, so fused rows are ranked by their inflated cell figures")  # fmt: skip
    return Ranking(f"val_{rank_by}", None, f"validation cells' {rank_by}")


def build_leaderboard(entries: dict, rank_by: str) -> pd.DataFrame:
    """One row per combo from {combo: (params, metrics.json, train.json or None)}, best first.

    The order is `choose_ranking`'s (validation figures only). Combinations whose training
    diverged (status `diverged` in train.json) come after all others, whatever their score: a
    collapsed model that always predicts the majority class can score a high accuracy. Ties
    (and combos without the metric, which go last) are ordered by combo id.

    The frame holds every combination's test figures too, for `every_test`; the leaderboard
    itself (`for_reporting`, `write_leaderboard`, the chart) shows the selected row's alone.
    Columns `<ranked>_low`/`_high` hold the ranked figure's interval (metrics.json "ci"; empty
    where evaluate wrote none) and `vs_best` compares it with the best's (`VS_BEST`).
    """
    cell_rank = PATIENT_RANK.get(rank_by, rank_by)
    names = list(HEADLINE) + ([cell_rank] if cell_rank not in HEADLINE else [])
    rows = []
    for combo, (params, scores, info) in entries.items():
        row = {"combo": combo, **{k: params.get(k) for k in PARAMS}}
        row["inputs"] = params.get("inputs", "image")  # image-only combos (and the SVM) have no key
        row.update({col: (info or {}).get(key) for col, key in TRAIN_INFO.items()})
        row["legs"] = len(info["legs"]) if info and "legs" in info else None
        for split in ("val", "test"):
            section = scores.get(split, {})
            row.update({f"{split}_{m}": section.get(m) for m in names})
            for m in names:
                row[f"{split}_{m}_low"], row[f"{split}_{m}_high"] = _interval(section, m)
        patient = scores.get("patient", {})
        if "threshold" in patient:  # absent when the patient level was skipped (see its note)
            row["patient_threshold"] = patient.get("threshold")
            for split in ("val", "test"):
                section = patient.get(split, {})
                for m in PATIENT:
                    row[f"patient_{split}_{m}"] = section.get(m)
                    row[f"patient_{split}_{m}_low"], row[f"patient_{split}_{m}_high"] = _interval(section, m)
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty or f"val_{cell_rank}" not in board or board[f"val_{cell_rank}"].isna().all():
        raise ValueError(
            f"evaluate.rank_by {rank_by!r}: no combo has this validation metric in metrics.json "
            f"(use one of {list(HEADLINE) + list(PATIENT_RANK)}, or another key of metrics.json's 'val' section)"
        )
    numeric = [c for c in board.columns if c.startswith(("val_", "test_", "patient_"))]
    board[numeric] = board[numeric].astype(float)
    board[list(COUNTS)] = board[list(COUNTS)].astype("Int64")
    ranking = choose_ranking(board, rank_by)
    board = board.sort_values("combo", kind="stable")
    if ranking.tie_break:
        board = board.sort_values(ranking.tie_break, ascending=False, na_position="last", kind="stable")
    board = (
        board.sort_values(ranking.column, ascending=False, na_position="last", kind="stable")
        .sort_values("status", key=lambda status: status == "diverged", kind="stable")
        .reset_index(drop=True)
    )
    board.insert(0, "rank", range(1, len(board) + 1))
    board["vs_best"] = vs_best(board[f"{ranking.column}_low"], board[f"{ranking.column}_high"])
    return board


VS_BEST = {
    "best": "the selected (first) row",
    "not distinguishable": "its validation interval overlaps the best's (hemaflow.stats.overlaps)",
    "below": "its whole interval lies below the best's",
    "above": "its whole interval lies above the best's (a diverged row ranked last)",
    "": "no interval (evaluate wrote none, or it is undefined, for this row or the best)",
}


def vs_best(low: pd.Series, high: pd.Series) -> list[str]:
    """Each row's interval against the first row's, as one of VS_BEST's keys."""
    best = (low.iloc[0], high.iloc[0])
    out = ["best"]
    for lo, hi in zip(low.iloc[1:], high.iloc[1:]):
        if any(math.isnan(v) for v in (lo, hi, *best)):
            out.append("")  # overlaps() is False for undefined intervals: that is "unknown", not "different"
        elif overlaps((lo, hi), best):
            out.append("not distinguishable")
        else:
            out.append("below" if hi < best[0] else "above")
    return out


def for_reporting(board: pd.DataFrame, rank_by: str) -> pd.DataFrame:
    """The leaderboard as published: parameters, training totals, validation figures, the
    ranked figure's interval and `vs_best`, then test figures (and the ranked metric's test
    interval) of the selected (first) row only; other rows' test cells are empty."""
    ranking = choose_ranking(board, rank_by)
    ranked_test = ranking.column.replace("val_", "test_", 1)
    interval = [f"{ranking.column}_low", f"{ranking.column}_high"]
    keep = [c for c in board.columns if not c.endswith(("_low", "_high")) or c in interval]
    keep = [c for c in keep if not _is_test(c)] + [c for c in keep if _is_test(c)]
    keep += [c for c in (f"{ranked_test}_low", f"{ranked_test}_high") if c in board]
    out = board[keep].copy()
    tests = [c for c in keep if _is_test(c)]
    out.loc[out.index[1:], tests] = math.nan
    return out


def every_test(board: pd.DataFrame) -> pd.DataFrame:
    """Every combination's test figures in leaderboard (validation) order, for EVERY_TEST:
    how far test falls from validation across the grid, never a basis for choosing."""
    tests = [c for c in board.columns if _is_test(c) and not c.endswith(("_low", "_high"))]
    return board[["rank", "combo", "inputs", *tests]]


def write_leaderboard(board: pd.DataFrame, rank_by: str, csv_path, md_path, every_test_path=None) -> None:
    """The leaderboard (`for_reporting`) as CSV and as a Markdown table (for the report), and
    optionally every combination's test figures (`every_test`) as CSV."""
    for p in (csv_path, md_path, every_test_path):
        if p is not None:
            Path(p).parent.mkdir(parents=True, exist_ok=True)
    df = for_reporting(board, rank_by)
    df.to_csv(csv_path, index=False)
    fmt = tuple("g" if c in ("lr", "dropout") else ".1f" if c == "wall_seconds" else ".4f" for c in df.columns)
    cells = df.astype(object).where(df.notna(), None)  # the baseline has no lr, batch size, ...
    Path(md_path).write_text(cells.to_markdown(index=False, floatfmt=fmt, missingval="") + "\n")
    if every_test_path is not None:
        every_test(board).to_csv(every_test_path, index=False)


def _figures(section: dict, names) -> dict:
    """A metrics.json split section's headline figures, with its "ci" and "calibration" if any,
    and the ci's bounds again as numbers (`interval`: {metric: {low, high}}), since `dvc metrics
    show` and `diff` leave out lists such as the ci's [low, high]."""
    out = {m: section[m] for m in names if m in section}
    out.update({k: section[k] for k in ("ci", "calibration", "n_patients", "n_positive", "sensitivity", "specificity")
                if k in section})  # fmt: skip
    ci = section.get("ci") or {}
    pairs = {**(ci.get("wilson") or {}), **(ci.get("metrics") or {})}  # the bootstrap's where both exist
    if pairs:
        out["interval"] = {m: {"low": pair[0], "high": pair[1]} for m, pair in pairs.items()}
    return out


def headline(board: pd.DataFrame, rank_by: str, entries: dict) -> dict:
    """results/reports/metrics.json: how the board was ranked, the selected (first) combo, its
    params, its validation and test figures with their intervals and calibration (copied from
    its results/evaluation/<combo>/metrics.json, `entries` as for build_leaderboard), its
    patient-level figures, `ranking` (every combo id, best first: what best_of reads), the
    combos not distinguishable from it, and per combo its validation figures only."""
    ranking = choose_ranking(board, rank_by)
    best = board.iloc[0]
    scores = entries[best["combo"]][1]
    names = list(HEADLINE) + ([rank_by] if rank_by not in HEADLINE and rank_by not in PATIENT_RANK else [])
    out = {
        "rank_by": rank_by,
        "ranked_on": ranking.column,
        "tie_break": ranking.tie_break,
        "ranking_rule": ranking.rule,
        "n_combos": int(len(board)),
        "best": str(best["combo"]),
        "ranking": [str(c) for c in board["combo"]],  # leaderboard order: what best_of reads
        "not_distinguishable_from_best": [str(c) for c, v in zip(board["combo"], board["vs_best"]) if v == "not distinguishable"],
        "params": {k: best[k] for k in PARAMS if pd.notna(best[k])},
        **{split: _figures(scores.get(split, {}), names) for split in ("val", "test")},
    }
    patient = scores.get("patient", {})
    if "threshold" in patient:
        out["patient"] = {"threshold": patient["threshold"],
                          **{split: _figures(patient.get(split, {}), PATIENT) for split in ("val", "test")}}  # fmt: skip
    elif "skipped" in patient:
        out["patient"] = {"skipped": patient["skipped"]}
    # Validation only: a per-combination test figure here would be one `dvc metrics show` away
    # from choosing on test (each combination's own metrics.json still has its test section).
    columns = list(dict.fromkeys([f"val_{m}" for m in names if f"val_{m}" in board]
                                 + [c for c in board.columns if c.startswith("patient_val_") and not c.endswith(("_low", "_high"))]
                                 + [f"{ranking.column}_low", f"{ranking.column}_high"]))  # fmt: skip
    out["combos"] = {row["combo"]: {**{c: row[c] for c in columns}, "vs_best": row["vs_best"]} for _, row in board.iterrows()}
    return json_safe(out)
