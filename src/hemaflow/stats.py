"""Confidence intervals for evaluation metrics: patient-level (cluster) bootstrap, Wilson, overlap.

Cells of one patient are not independent, so intervals resample patients, not cells.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

# Why the resampling is written here rather than with scipy.stats.bootstrap: scipy resamples
# observations and has no notion of clusters, and a single NaN in its bootstrap distribution
# (AUC of a one-class resample) makes its whole interval NaN, with no count of how many
# resamples were undefined. The draws are a few lines of numpy; the interval is np.quantile.

# Row-weight matrices are built this many elements at a time (float64: 8 bytes each), so
# 1,000 resamples of 100,000 cells do not need 800 MB at once.
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A bootstrap percentile interval and the bookkeeping needed to judge it.

    `n_undefined` resamples (the statistic was NaN there or raised ValueError, e.g. AUC of a
    resample with one class) are left out of the interval; `values` holds every resample's
    value (NaN where undefined), in draw order, for paired comparisons.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    n_undefined: int
    values: np.ndarray = field(repr=False, compare=False)

    def as_dict(self) -> dict:
        """The interval without the resample values (for JSON / DataFrame rows)."""
        return {
            "estimate": self.estimate, "low": self.low, "high": self.high,
            "confidence": self.confidence, "n_resamples": self.n_resamples,
            "n_undefined": self.n_undefined,
        }


def weighted(fn: Callable) -> Callable:
    """Mark `fn(data, resamples: Resamples) -> (b,) array` as a vectorised statistic.

    A bootstrap resample is exactly the original rows, each counted as often as its patient
    was drawn, so a statistic written with multiplicities (`resamples.rows`, or the faster
    cluster-level `resamples.sums`) evaluates a whole block of resamples at once. The point
    estimate is the same function on one "resample" drawing every patient once.
    """
    fn.weighted = True
    return fn


class Resamples:
    """A block of b resamples given as multiplicities, handed to `weighted` statistics.

    counts: (b, G) how often each cluster (patient) was drawn; codes: (n,) cluster of each
    row; memo: dict shared by the statistics of this block (e.g. one confusion matrix for
    accuracy, F1 and recall); data_memo: dict shared over every block of one call, for
    precomputations that depend on the data only.
    """

    def __init__(self, counts: np.ndarray, codes: np.ndarray, data_memo: dict):
        self.counts = counts
        self.codes = codes
        self.memo: dict = {}
        self.data_memo = data_memo
        self._rows = None

    @property
    def n_clusters(self) -> int:
        return self.counts.shape[1]

    @property
    def rows(self) -> np.ndarray:
        """(b, n) row multiplicities."""
        if self._rows is None:
            self._rows = self.counts[:, self.codes]
        return self._rows

    def cluster_totals(self, x) -> np.ndarray:
        """(G, m) per-cluster sums of per-row values x, (n,) or (n, m)."""
        x = np.asarray(x, dtype=np.float64)
        x2 = x.reshape(len(x), -1)
        out = np.zeros((self.n_clusters, x2.shape[1]))
        np.add.at(out, self.codes, x2)
        return out

    def sums(self, x) -> np.ndarray:
        """(b, m) or (b,) weighted sums of per-row values x in each resample."""
        x = np.asarray(x, dtype=np.float64)
        out = self.counts @ self.cluster_totals(x)
        return out[:, 0] if x.ndim == 1 else out


# ------------------------------------------------------------------------- resampling


def _n_rows(data) -> int:
    if isinstance(data, pd.DataFrame):
        return len(data)
    values = list(data.values()) if isinstance(data, Mapping) else list(data)
    lengths = {len(v) for v in values}
    if len(lengths) != 1:
        raise ValueError(f"data arrays have different lengths {sorted(lengths)}; one row per cell expected")
    return lengths.pop()


def _take(data, rows: np.ndarray):
    """The rows `rows` of a DataFrame, a mapping of arrays or a tuple/list of arrays."""
    if isinstance(data, pd.DataFrame):
        return data.iloc[rows]
    if isinstance(data, Mapping):
        return {k: np.asarray(v)[rows] for k, v in data.items()}
    return tuple(np.asarray(v)[rows] for v in data)


def _cluster_codes(data, groups, n: int) -> np.ndarray:
    """Cluster code per row, 0..G-1. groups=None: every row is its own cluster.

    A row whose group is missing (NaN/None) is taken as its own cluster: with no patient id
    there is nothing to tie it to other rows (an assumption, stated in the docstrings).
    """
    if groups is None:
        return np.arange(n)
    if isinstance(groups, str):
        if not isinstance(data, pd.DataFrame):
            raise TypeError("groups given as a column name needs a DataFrame")
        groups = data[groups]
    codes, _ = pd.factorize(pd.Series(np.asarray(groups, dtype=object)), use_na_sentinel=True)
    if len(codes) != n:
        raise ValueError(f"groups has {len(codes)} entries for {n} rows")
    missing = codes < 0
    if missing.any():
        codes = codes.copy()
        codes[missing] = codes.max(initial=-1) + 1 + np.arange(missing.sum())
    return codes


def draw_clusters(n_clusters: int, n_resamples: int, seed) -> np.ndarray:
    """(n_resamples, n_clusters) matrix of drawn cluster indices, with replacement.

    Each resample draws as many clusters as there are; a cluster drawn twice counts twice.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_clusters, size=(n_resamples, n_clusters))


def _cluster_counts(draws: np.ndarray, n_clusters: int) -> np.ndarray:
    """How often each cluster was drawn in each resample: (B, G) from (B, G) indices."""
    b = draws.shape[0]
    flat = (np.arange(b)[:, None] * n_clusters + draws).ravel()
    return np.bincount(flat, minlength=b * n_clusters).reshape(b, n_clusters).astype(np.float64)


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float, int]:
    defined = values[np.isfinite(values)]
    undefined = int(values.size - defined.size)
    if not defined.size:
        return float("nan"), float("nan"), undefined
    alpha = 1.0 - confidence
    low, high = np.quantile(defined, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high), undefined


def _call(statistic, sample) -> float:
    try:
        value = statistic(sample)
    except ValueError:  # sklearn's "only one class present" and friends: undefined, not fatal
        return float("nan")
    return float(value)


def bootstrap_metrics(
    data,
    statistics: Mapping[str, Callable],
    *,
    groups=None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed=0,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals of several statistics on the same resamples.

    data: a DataFrame, a mapping of equal-length arrays (e.g. {"y_true": y, "proba": P}) or a
        tuple of arrays; rows are cells (or patients, for patient-level metrics).
    statistics: name -> statistic. A plain callable gets the resampled data (same type as
        `data`) and returns a float; one marked with `weighted` (e.g. from `cell_statistics`)
        is evaluated on all resamples at once from row multiplicities, which is much faster.
        A NaN result or a ValueError marks the resample undefined: it is counted in
        `n_undefined` and left out of the interval.
    groups: patient id per row (array or, for a DataFrame, a column name). Resamples draw
        patients with replacement, all rows of a drawn patient together; a patient drawn
        twice counts twice. None: rows are resampled (images with no patient id). Rows with
        a missing id are their own cluster.
    seed: same seed, same draws, same intervals; all statistics share the draws.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    n = _n_rows(data)
    if n == 0:
        raise ValueError("no rows to bootstrap")
    codes = _cluster_codes(data, groups, n)
    n_clusters = int(codes.max()) + 1
    draws = draw_clusters(n_clusters, n_resamples, seed)

    values = {name: np.full(n_resamples, np.nan) for name in statistics}
    estimates = {}
    vectorised = {k: f for k, f in statistics.items() if getattr(f, "weighted", False)}
    plain = {k: f for k, f in statistics.items() if k not in vectorised}

    if vectorised:
        data_memo: dict = {}
        full = Resamples(np.ones((1, n_clusters)), codes, data_memo)
        for name, fn in vectorised.items():
            estimates[name] = float(np.asarray(fn(data, full), dtype=float)[0])
        counts = _cluster_counts(draws, n_clusters)
        step = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, n_resamples, step):
            block = Resamples(counts[start : start + step], codes, data_memo)
            b = block.counts.shape[0]
            for name, fn in vectorised.items():
                out = np.asarray(fn(data, block), dtype=float)
                if out.shape != (b,):
                    raise ValueError(f"weighted statistic {name!r} returned shape {out.shape}, expected ({b},)")
                values[name][start : start + step] = out

    if plain:
        for name, fn in plain.items():
            estimates[name] = float(fn(data))
        # rows of each cluster, to assemble a resample from its drawn clusters
        order = np.argsort(codes, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=n_clusters))])
        singletons = n_clusters == n
        for b in range(n_resamples):
            if singletons:
                rows = order[draws[b]]
            else:
                rows = np.concatenate([order[bounds[g] : bounds[g + 1]] for g in draws[b]])
            sample = _take(data, rows)
            for name, fn in plain.items():
                values[name][b] = _call(fn, sample)

    out = {}
    for name in statistics:
        low, high, undefined = _percentile_interval(values[name], confidence)
        out[name] = Interval(estimates[name], low, high, confidence, n_resamples, undefined, values[name])
    return out


def cluster_bootstrap(
    data,
    statistic: Callable,
    *,
    groups=None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed=0,
) -> Interval:
    """Percentile bootstrap interval of one statistic, resampling patients (see `bootstrap_metrics`)."""
    return bootstrap_metrics(
        data, {"statistic": statistic}, groups=groups, n_resamples=n_resamples,
        confidence=confidence, seed=seed,
    )["statistic"]


def to_frame(intervals: Mapping[str, Interval]) -> pd.DataFrame:
    """One row per statistic: estimate, low, high, confidence, n_resamples, n_undefined."""
    return pd.DataFrame.from_dict({k: v.as_dict() for k, v in intervals.items()}, orient="index")


# ------------------------------------------------------- vectorised cell-level metrics


def _proba(data, key, k: int | None = None) -> np.ndarray:
    p = data[key]
    p = p.to_numpy() if hasattr(p, "to_numpy") else np.asarray(p)
    if p.dtype == object:  # a DataFrame column holding one probability vector per row
        p = np.stack(p)
    p = p.astype(np.float64)
    if p.ndim == 1:  # binary model: P(class index 1)
        p = np.column_stack([1.0 - p, p])
    if k is not None and p.shape[1] != k:
        raise ValueError(f"proba has {p.shape[1]} columns for {k} classes")
    return p


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _nanmean(x: np.ndarray, axis: int) -> np.ndarray:
    ok = np.isfinite(x)
    count = ok.sum(axis=axis)
    total = np.where(ok, x, 0.0).sum(axis=axis)
    return _ratio(total, count.astype(float))


# The cluster-level AUC keeps a (G, G) matrix; above this many elements (2,000 patients, or a
# row bootstrap, where G = n) the row-level path is used instead.
_PAIR_ELEMENTS = 4_000_000


def weighted_auc(score, is_pos, resamples: Resamples, *, key=None) -> np.ndarray:
    """ROC AUC in each resample (ties count one half, as sklearn); NaN where a class is absent.

    Equals sklearn.metrics.roc_auc_score(is_pos, score, sample_weight=row multiplicities).
    AUC = sum over positive-negative pairs of w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) divided
    by W_pos W_neg. With patients as clusters the numerator is a quadratic form c' M c in
    the cluster counts c, M[g, h] the pair sum between positives of g and negatives of h;
    M is built once (cached under `key`) and every resample then costs O(G^2). For a row
    bootstrap (G = n) it is computed from cumulative negative weight over sorted scores,
    (b, n) arrays per block.
    """
    score = np.asarray(score, dtype=np.float64)
    is_pos = np.asarray(is_pos, dtype=bool)
    n, g = len(score), resamples.n_clusters
    codes = resamples.codes
    memo = resamples.data_memo
    if g * g <= _PAIR_ELEMENTS:
        if key is None or key not in memo:
            # M[:, h]: for each positive row, negatives of cluster h below it (+ half the ties),
            # summed per positive's cluster. Memory O(n + G^2); time O(G * n_pos * log n).
            neg = np.flatnonzero(~is_pos)
            neg = neg[np.lexsort((score[neg], codes[neg]))]  # by cluster, then score
            neg_scores = score[neg]
            cut = np.searchsorted(codes[neg], np.arange(g + 1))
            pos = np.flatnonzero(is_pos)
            s_pos, c_pos = score[pos], codes[pos]
            m = np.zeros((g, g))
            for h in np.flatnonzero(np.diff(cut)):
                sn = neg_scores[cut[h] : cut[h + 1]]
                lo = np.searchsorted(sn, s_pos, side="left")
                hi = np.searchsorted(sn, s_pos, side="right")
                m[:, h] = np.bincount(c_pos, weights=lo + 0.5 * (hi - lo), minlength=g)
            n_pos = np.bincount(c_pos, minlength=g).astype(float)
            n_neg = np.bincount(codes[~is_pos], minlength=g).astype(float)
            memo_value = (m, n_pos, n_neg)
            if key is not None:
                memo[key] = memo_value
        else:
            memo_value = memo[key]
        m, n_pos, n_neg = memo_value
        c = resamples.counts
        num = np.einsum("bg,bg->b", c @ m, c)
        return _ratio(num, (c @ n_pos) * (c @ n_neg))
    order = np.argsort(score, kind="stable")
    s = score[order]
    new = np.concatenate([[True], s[1:] != s[:-1]])
    starts = np.flatnonzero(new)
    ends = np.concatenate([starts[1:], [n]])
    ws = resamples.rows[:, order]
    wp = ws * is_pos[order]
    wn = ws - wp
    zero = np.zeros((ws.shape[0], 1))
    cn = np.concatenate([zero, np.cumsum(wn, axis=1)], axis=1)
    cp = np.concatenate([zero, np.cumsum(wp, axis=1)], axis=1)
    below = cn[:, starts]  # negative weight at strictly lower scores
    pos_level = cp[:, ends] - cp[:, starts]
    num = (pos_level * (below + 0.5 * (cn[:, ends] - below))).sum(axis=1)
    return _ratio(num, cp[:, -1] * cn[:, -1])


def cell_statistics(class_names, *, positive: int = 1, y: str = "y_true", proba: str = "proba") -> dict[str, Callable]:
    """Vectorised versions of the cell-level metrics, for `bootstrap_metrics`.

    Data: `data[y]` integer class indices, `data[proba]` (n, k) probabilities or, binary,
    P(class index 1). Keys as in metrics.cell_metrics: accuracy, balanced_accuracy, auc
    (binary: of `positive`; multi-class: macro one-vs-rest over the classes scorable in the
    resample), precision, recall, f1 (binary: of `positive`; multi-class: macro), macro_f1;
    binary also sensitivity and specificity; and per class `recall[<name>]`.

    Where cell_metrics fills a zero denominator with 0 (sklearn's zero_division=0) these
    return NaN: in a resample with no patient of a class, that class's recall and F1 are not 0
    but undefined, and counting them as 0 would drag the interval down. Macro averages (macro F1,
    balanced accuracy, macro AUC) average the classes defined in the resample. Whenever
    every denominator is positive the values equal cell_metrics / sklearn (tested).
    """
    names = list(class_names)
    k = len(names)
    binary = k == 2

    def arrays(data, r):
        if "arrays" not in r.data_memo:
            p = _proba(data, proba, k)
            r.data_memo["arrays"] = (np.asarray(data[y], dtype=int), p)
        return r.data_memo["arrays"]

    def per_class(data, r):
        """(recall, precision, f1), each (b, k), from one confusion matrix per block."""
        if "per_class" not in r.memo:
            if "cluster_confusion" not in r.data_memo:
                yy, p = arrays(data, r)
                cell = yy * k + p.argmax(axis=1)
                g = r.n_clusters
                flat = np.bincount(r.codes * (k * k) + cell, minlength=g * k * k)
                r.data_memo["cluster_confusion"] = flat.reshape(g, k * k).astype(float)
            cm = (r.counts @ r.data_memo["cluster_confusion"]).reshape(-1, k, k)
            tp = np.diagonal(cm, axis1=1, axis2=2)
            actual, predicted = cm.sum(axis=2), cm.sum(axis=1)
            # A class with no true cell in the resample has no recall and no F1 (not 0: a few false
            # positives would then drag macro F1 of a 6-patient validation split to about 0.5).
            f1 = np.where(actual > 0, _ratio(2 * tp, actual + predicted), np.nan)
            r.memo["per_class"] = (_ratio(tp, actual), _ratio(tp, predicted), f1)
            r.memo["accuracy"] = _ratio(tp.sum(axis=1), actual.sum(axis=1))
        return r.memo["per_class"]

    @weighted
    def accuracy(data, r):
        per_class(data, r)
        return r.memo["accuracy"]

    @weighted
    def balanced_accuracy(data, r):
        return _nanmean(per_class(data, r)[0], axis=1)

    @weighted
    def macro_f1(data, r):
        return _nanmean(per_class(data, r)[2], axis=1)

    def _pick(i):  # 0 recall, 1 precision, 2 F1: of `positive` if binary, else macro
        @weighted
        def fn(data, r):
            m = per_class(data, r)[i]
            return m[:, positive] if binary else _nanmean(m, axis=1)
        return fn

    def _recall_of(c):
        return weighted(lambda data, r: per_class(data, r)[0][:, c])

    @weighted
    def auc(data, r):
        yy, p = arrays(data, r)
        classes = [positive] if binary else range(k)
        aucs = np.column_stack([weighted_auc(p[:, c], yy == c, r, key=("auc", c)) for c in classes])
        return _nanmean(aucs, axis=1)

    out = {
        "accuracy": accuracy,
        "balanced_accuracy": balanced_accuracy,
        "auc": auc,
        "precision": _pick(1),
        "recall": _pick(0),
        "f1": _pick(2),
        "macro_f1": macro_f1,
    }
    if binary:
        out["sensitivity"] = _recall_of(positive)
        out["specificity"] = _recall_of(1 - positive)
    for c, name in enumerate(names):
        out[f"recall[{name}]"] = _recall_of(c)
    return out


def patient_statistics(threshold: float, *, label: str = "label", score: str = "frac_positive") -> dict[str, Callable]:
    """Vectorised patient-level diagnosis metrics, for `bootstrap_metrics` with groups=None.

    Data: one row per patient (metrics.patient_fractions): `label` (1 = positive diagnosis)
    and `score` (positive-cell fraction); predicted positive iff score >= threshold, the
    threshold chosen on validation patients and held fixed. Keys as in
    metrics.patient_metrics: accuracy, sensitivity, specificity, balanced_accuracy, auc (of
    the score). NaN (undefined) where a diagnosis is absent from the resample.
    """

    def arrays(data, r):
        if "patient arrays" not in r.data_memo:
            pos = np.asarray(data[label], dtype=int) == 1
            s = np.asarray(data[score], dtype=np.float64)
            r.data_memo["patient arrays"] = (pos, s, s >= threshold)
        return r.data_memo["patient arrays"]

    def rates(data, r):
        if "rates" not in r.memo:
            pos, _, pred = arrays(data, r)
            n, n_pos, tp, fp = r.sums(np.column_stack([np.ones_like(pos), pos, pos & pred, ~pos & pred])).T
            sens = _ratio(tp, n_pos)
            spec = _ratio((n - n_pos) - fp, n - n_pos)
            r.memo["rates"] = {
                "accuracy": _ratio(tp + (n - n_pos) - fp, n),
                "sensitivity": sens,
                "specificity": spec,
                "balanced_accuracy": (sens + spec) / 2,  # NaN unless both diagnoses are present
            }
        return r.memo["rates"]

    def _rate(name):
        return weighted(lambda data, r: rates(data, r)[name])

    @weighted
    def auc(data, r):
        pos, s, _ = arrays(data, r)
        return weighted_auc(s, pos, r, key="patient auc")

    out = {name: _rate(name) for name in ("accuracy", "sensitivity", "specificity", "balanced_accuracy")}
    out["auc"] = auc
    return out


# ------------------------------------------------------------------ intervals, compare


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes / n.

    n = 0 gives (nan, nan): no trials, no information. Uses scipy.stats.binomtest's
    proportion_ci(method="wilson") (Wilson 1927; Newcombe 1998, method 3).
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return float("nan"), float("nan")
    ci = sps.binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _bounds(x) -> tuple[float, float]:
    if isinstance(x, Interval):
        return x.low, x.high
    low, high = x
    return float(low), float(high)


def overlaps(a, b) -> bool:
    """Whether two closed intervals (Interval or (low, high)) share a point.

    Used to mark a model "not distinguishable from the best": its interval overlaps the
    best one's. An interval with a NaN bound (undefined) overlaps nothing, so the caller
    should report undefined intervals separately rather than read False as "different".
    """
    a_low, a_high = _bounds(a)
    b_low, b_high = _bounds(b)
    if any(math.isnan(v) for v in (a_low, a_high, b_low, b_high)):
        return False
    return a_low <= b_high and b_low <= a_high
