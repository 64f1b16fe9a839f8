"""Every matplotlib figure of the pipeline: each function takes tables, writes one PNG and returns
the (closed) Figure, so tests and notebooks can check what was drawn."""

from __future__ import annotations

import os
import textwrap
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: cluster nodes and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


@contextmanager
def _figure(out_png: str | os.PathLike, **kwargs):
    """Yield (fig, axes); save to `out_png` and close the figure even on error."""
    fig, axes = plt.subplots(**kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        Path(out_png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=100)
    finally:
        plt.close(fig)


def message(out_png, title: str, text: str) -> Figure:
    """A figure that is a sentence: why there is nothing to draw (a workflow output still exists)."""
    with _figure(out_png, figsize=(6.5, 2.5)) as (fig, ax):
        ax.set_axis_off()
        ax.text(0.5, 0.5, textwrap.fill(text, 60), ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
    return fig


def training_curves(history: pd.DataFrame, best_epoch: int | None, out_png) -> Figure:
    """Loss (log axis) and accuracy, train and val, vs epoch; the best epoch dashed (seed 000),
    unless there is none (no finite validation loss)."""
    with _figure(out_png, nrows=2, ncols=1, sharex=True, figsize=(7, 7)) as (fig, (ax1, ax2)):
        ax1.plot(history["epoch"], history["loss"], label="train")
        ax1.plot(history["epoch"], history["val_loss"], label="val")
        ax1.set_yscale("log")
        ax1.set_ylabel("loss")
        ax2.plot(history["epoch"], history["accuracy"], label="train")
        ax2.plot(history["epoch"], history["val_accuracy"], label="val")
        ax2.set_ylabel("accuracy")
        ax2.set_xlabel("epoch")
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in (ax1, ax2):
            if best_epoch is not None:
                ax.axvline(best_epoch, color="black", linestyle="--", label=f"best epoch {best_epoch}")
            ax.legend(loc="best")
        ax1.set_title("training curves")
    return fig


def confusion_matrix(table: pd.DataFrame, out_png, title: str = "confusion matrix") -> Figure:
    """Heatmap of a long confusion table (actual, predicted, count), classes in table order."""
    from sklearn.metrics import ConfusionMatrixDisplay

    names = list(dict.fromkeys(table["actual"]))
    cm = table.pivot(index="actual", columns="predicted", values="count").loc[names, names]
    size = 3.2 + 0.6 * len(names)
    with _figure(out_png, figsize=(size, size)) as (fig, ax):
        ConfusionMatrixDisplay(cm.to_numpy(), display_labels=names).plot(ax=ax, colorbar=False)
        acc = cm.to_numpy().trace() / max(cm.to_numpy().sum(), 1)
        ax.set_title(f"{title} (acc = {acc:.2%})")
    return fig


def roc_curves(roc: pd.DataFrame, out_png, title: str = "ROC curve") -> Figure:
    """ROC curve per class from a table (class, fpr, tpr, ...) with the chance diagonal."""
    from sklearn.metrics import auc

    with _figure(out_png, figsize=(5, 5)) as (fig, ax):
        for name, g in roc.groupby("class", sort=False):
            ax.plot(g["fpr"], g["tpr"], lw=2, label=f"{name} (AUC = {auc(g['fpr'], g['tpr']):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false positive rate", ylabel="true positive rate", title=title)
        if len(roc):
            ax.legend(loc="lower right")
    return fig


def patient_diagnosis(patients: pd.DataFrame, threshold: float | None, out_png, note: str | None = None) -> Figure:
    """Fraction of cells predicted positive per patient, by split and diagnosis; the threshold line.

    `note` says why there is no patient level (no patient ids, multi-class, one diagnosis in
    validation): without patients the figure is that sentence alone; with patients but no
    threshold it is the scatter with the note under the title.
    """
    splits = list(dict.fromkeys(patients["split"]))
    title = "patient-level diagnosis" + (f"\n{textwrap.fill(note, 70)}" if note else "")
    if patients.empty:
        return message(out_png, "patient-level diagnosis", note or "no patients")
    with _figure(out_png, figsize=(max(6.5, 1.5 + 1.8 * len(splits)), 4.5 + (0.5 if note else 0))) as (fig, ax):
        for label, marker, colour in ((0, "o", "tab:blue"), (1, "^", "tab:red")):
            sub = patients[patients["label"] == label]
            x = sub["split"].map({s: i for i, s in enumerate(splits)})
            # spread patients sideways so equal fractions stay visible
            jitter = (sub.groupby("split").cumcount() % 7 - 3) * 0.04 + (0.12 if label else -0.12)
            ax.scatter(x + jitter, sub["frac_positive"], marker=marker, color=colour,
                       label="positive" if label else "negative", alpha=0.8)
        if threshold is not None:
            ax.axhline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f} (val)")
        ax.legend(loc="best", fontsize="small")
        ax.set_xticks(range(len(splits)), splits)
        ax.set(ylim=(-0.03, 1.03), ylabel="fraction of cells predicted positive")
        ax.set_title(title, fontsize="medium")
    return fig


def leaderboard_chart(board: pd.DataFrame, column: str, out_png, rule: str = "", tie_break: str | None = None) -> Figure:
    """The ranked validation figure `column` (e.g. val_balanced_accuracy, patient_val_auc) per
    combo as horizontal bars, best on top, with its interval (`<column>_low`/`_high`, where
    there is one) as error bars, coloured by `vs_best`; the test figure of the selected (top)
    row alone as a marker (other rows' test figures are not drawn: they must not be chosen by).
    `rule` (how the board was ranked, in words) goes above the title; the `tie_break` column's
    figure, if given, is written beside each bar's."""
    board = board.iloc[::-1]  # barh draws bottom-up; the board is sorted best first
    y = np.arange(len(board))
    value = board[column].fillna(0.0).to_numpy()
    low = board.get(f"{column}_low", pd.Series(np.nan, index=board.index)).to_numpy(dtype=float)
    high = board.get(f"{column}_high", pd.Series(np.nan, index=board.index)).to_numpy(dtype=float)
    known = np.isfinite(low) & np.isfinite(high)
    # bar colour = vs_best (hemaflow.evaluate.leaderboard.VS_BEST); "" = no interval to compare
    colours = {"best": "tab:blue", "not distinguishable": "lightsteelblue", "below": "lightgrey",
               "above": "lightgrey", "": "darkgrey"}  # fmt: skip
    names = {"best": "selected (best on validation)", "not distinguishable": "not distinguishable from the best",
             "below": "interval below the best's", "above": "interval above the best's", "": "no interval"}  # fmt: skip
    vs = (board["vs_best"] if "vs_best" in board else pd.Series("", index=board.index)).fillna("")
    label = column.replace("patient_val_", "val patients' ").replace("val_", "val ")
    with _figure(out_png, figsize=(9.5, 3.6 + 0.4 * len(board))) as (fig, ax):
        ax.barh(y, value, height=0.6, color=[colours.get(v, "darkgrey") for v in vs])
        ties = board[tie_break] if tie_break else pd.Series(np.nan, index=board.index)
        tie_label = (tie_break or "").replace("val_", "val cells' ")
        for yi, v, lo, hi, ok, t in zip(y, board[column], low, high, known, ties):  # the figures, readable at a glance
            if pd.notna(v):
                text = f"{v:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if ok else "") + (f"; ties: {tie_label} {t:.3f}" if pd.notna(t) else "")
                ax.text(0.01, yi, text, va="center", fontsize="small")
        handles = [Patch(color=colours[v], label=names[v]) for v in names if v in set(vs)]
        if known.any():
            err = np.vstack([value - low, high - value])[:, known]
            handles.append(ax.errorbar(value[known], y[known], xerr=np.clip(err, 0, None), fmt="none", ecolor="black",
                                       capsize=3, label="validation interval (metrics.json ci)"))  # fmt: skip
            if known[-1]:
                handles.append(ax.axvline(low[-1], color="tab:blue", linestyle="--", linewidth=0.8,
                                          label="best's lower bound"))  # fmt: skip
        test = column.replace("val_", "test_", 1)
        if test in board and np.isfinite(board[test].iloc[-1]):
            t, tl, th = (board[c].iloc[-1] if c in board else np.nan for c in (test, f"{test}_low", f"{test}_high"))
            xerr = [[t - tl], [th - t]] if np.isfinite(tl) and np.isfinite(th) else None
            handles.append(ax.errorbar([t], [y[-1] + 0.38], xerr=xerr, fmt="D", color="tab:orange", capsize=3,
                                       label="test, selected combination only"))  # fmt: skip
        ax.set_yticks(y, board["combo"].astype(str))
        ax.set(xlabel=label, xlim=(0, 1.02))
        ax.set_title(f"leaderboard (ranked by {label})")
        if rule:  # the whole figure's width: long combination ids leave the axes narrow
            fig.suptitle(textwrap.fill(rule, 110), fontsize="small", y=0.995, va="top")
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=2, fontsize="small")
    return fig


def explanation_panel(cell, gradcam, lime, title: str, out_png) -> None:
    """One explained cell: the cell as the model sees it, its Grad-CAM and LIME overlays (RGB uint8)."""
    with _figure(out_png, ncols=3, figsize=(7.2, 2.9)) as (fig, axes):
        for ax, img, name in zip(axes, (cell, gradcam, lime), ("cell", "Grad-CAM", "LIME (top superpixels outlined)")):
            ax.imshow(img, interpolation="nearest")
            ax.set_title(name, fontsize="small")
            ax.axis("off")
        fig.suptitle(title, fontsize="medium")


def sufficiency_curves(table: pd.DataFrame, out_png) -> None:
    """Per class (columns), against the superpixels kept: accuracy, agreement with the full
    image's prediction, and seed 003's precision with its bar (2/3 of the full image's); LIME's
    top n against as much area at random, the full image and the everything-hidden floor."""
    groups = list(dict.fromkeys(table["class"]))
    styles = {"lime": dict(marker="o"), "random": dict(marker="s", linestyle="--"),
              "full image": dict(color="grey", linestyle=":")}
    measures = {"accuracy": "accuracy", "kept_prediction": "same class as full image", "precision": "precision"}
    with _figure(out_png, nrows=len(measures), ncols=len(groups), figsize=(1.0 + 3.4 * len(groups), 9.5),
                 squeeze=False) as (fig, axes):  # fmt: skip
        for row, (measure, label) in zip(axes, measures.items()):
            for ax, group in zip(row, groups):
                sub = table[table["class"] == group]
                for method, style in styles.items():
                    line = sub[sub["method"] == method].sort_values("n")
                    ax.plot(line["n"], line[measure], label=method if method != "lime" else "LIME top n", **style)
                floor = sub.loc[sub["method"] == "nothing kept", measure]
                if len(floor):
                    ax.axhline(floor.iloc[0], color="black", linewidth=0.8, label="nothing kept (floor)")
                if measure == "precision":
                    full = sub.loc[sub["method"] == "full image", measure]
                    if len(full):
                        ax.axhline(2 / 3 * full.iloc[0], color="tab:red", linestyle="-.", linewidth=0.8,
                                   label="2/3 of full image (seed 003)")  # fmt: skip
                ns = sorted(set(sub.loc[sub["method"] != "nothing kept", "n"]))
                ax.set_xscale("log", base=2)
                ax.set_xticks(ns, [str(n) for n in ns])
                ax.minorticks_off()
                ax.set(xlabel="superpixels kept (n)", ylim=(-0.03, 1.03),
                       title=f"{group} ({int(sub['images'].iloc[0]) if len(sub) else 0} cells)")
            row[0].set_ylabel(label)
            row[0].legend(loc="lower right", fontsize="x-small")


def reliability_diagram(bins: pd.DataFrame, out_png, title: str = "reliability", *, ece: float | None = None,
                        temperature: float | None = None, uncalibrated: pd.DataFrame | None = None) -> Figure:
    """Accuracy against mean top-class probability per bin (`calibration.reliability_table`), the
    diagonal of perfect calibration, and the images per bin below; with a temperature, the
    uncalibrated points too. Points under the diagonal: over-confident."""
    with _figure(out_png, nrows=2, ncols=1, sharex=True, figsize=(5, 6),
                 gridspec_kw={"height_ratios": [3, 1]}) as (fig, (ax, ax_n)):
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
        if uncalibrated is not None:
            u = uncalibrated[uncalibrated["count"] > 0]
            ax.plot(u["confidence"], u["accuracy"], "s:", color="tab:grey", alpha=0.7, label="before temperature")
        filled = bins[bins["count"] > 0]
        label = "after temperature" if temperature is not None else "model"
        ax.plot(filled["confidence"], filled["accuracy"], "o-", color="tab:blue", label=label)
        extra = ([f"ECE {ece:.3f}"] if ece is not None else []) + ([f"T = {temperature:.3g}"] if temperature is not None else [])
        ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy (fraction correct)",
               title=title + (f" ({', '.join(extra)})" if extra else ""))
        ax.legend(loc="upper left", fontsize="small")
        ax_n.bar((bins["lower"] + bins["upper"]) / 2, bins["count"], width=(bins["upper"] - bins["lower"]) * 0.9,
                 color="tab:blue", alpha=0.6)
        ax_n.set(xlabel="top-class probability (bin mean)", ylabel="images")
    return fig
