import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special
from scipy import stats as sps
from sklearn import metrics as skm

from hemaflow import stats


def clustered_cells(rng, n_patients, cells_per_patient, mu=1.0, sigma=1.5):
    """Binary cells whose correctness is strongly clustered: P(correct) = expit(mu + sigma z_patient)."""
    p = special.expit(mu + sigma * rng.standard_normal(n_patients))
    pid = np.repeat(np.arange(n_patients), cells_per_patient)
    correct = rng.random(pid.size) < p[pid]
    y = rng.integers(0, 2, pid.size)
    pred = np.where(correct, y, 1 - y)
    return {"y_true": y, "proba": np.where(pred == 1, 0.9, 0.1)}, pid


def test_patient_bootstrap_covers_truth_and_cell_bootstrap_does_not():
    # True accuracy of the population: E[expit(mu + sigma Z)], Z ~ N(0, 1), equal cells per patient.
    mu, sigma = 1.0, 1.5
    truth = integrate.quad(lambda z: special.expit(mu + sigma * z) * sps.norm.pdf(z), -np.inf, np.inf)[0]
    accuracy = stats.cell_statistics(["hem", "all"])["accuracy"]
    rng = np.random.default_rng(12345)
    repeats, patient_hits, cell_hits = 200, 0, 0
    for r in range(repeats):
        data, pid = clustered_cells(rng, n_patients=60, cells_per_patient=20, mu=mu, sigma=sigma)
        by_patient = stats.cluster_bootstrap(data, accuracy, groups=pid, n_resamples=300, seed=r)
        by_cell = stats.cluster_bootstrap(data, accuracy, groups=None, n_resamples=300, seed=r)
        patient_hits += by_patient.low <= truth <= by_patient.high
        cell_hits += by_cell.low <= truth <= by_cell.high
    assert 0.90 <= patient_hits / repeats <= 0.99
    # cells of one patient are not independent: the naive interval is far too narrow
    assert cell_hits / repeats < 0.80


def multiclass_cells(rng, n_patients=12, cells_per_patient=30, k=3):
    """Every patient has cells of every class, so every resample has every class (all metrics defined)."""
    pid = np.repeat(np.arange(n_patients), cells_per_patient)
    y = np.tile(np.arange(cells_per_patient) % k, n_patients)
    z = rng.normal(size=(pid.size, k))
    z[np.arange(pid.size), y] += 1.0
    # rounded probabilities: plenty of tied scores for the AUC's tie handling
    proba = np.round(special.softmax(z, axis=1), 2)
    return {"y_true": y, "proba": proba}, pid


def sklearn_auc_ovr(y, proba):
    k = proba.shape[1]
    classes = [1] if k == 2 else range(k)
    scores = [skm.roc_auc_score(y == c, proba[:, c]) for c in classes if 0 < (y == c).sum() < len(y)]
    return np.mean(scores) if scores else np.nan


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("path", ["cluster-pairs", "rows"])
def test_vectorised_metrics_equal_sklearn_on_the_same_resamples(k, path, monkeypatch):
    if path == "rows":  # force the row-weight AUC used when clusters are too many for the pair matrix
        monkeypatch.setattr(stats, "_PAIR_ELEMENTS", 0)
    data, pid = multiclass_cells(np.random.default_rng(k), k=k)
    names = [f"c{i}" for i in range(k)]
    fast = stats.cell_statistics(names)
    average = dict(average="binary", pos_label=1) if k == 2 else dict(average="macro")

    def pred(d):
        return d["proba"].argmax(axis=1)

    slow = {
        "accuracy": lambda d: skm.accuracy_score(d["y_true"], pred(d)),
        "balanced_accuracy": lambda d: skm.balanced_accuracy_score(d["y_true"], pred(d)),
        "auc": lambda d: sklearn_auc_ovr(d["y_true"], d["proba"]),
        "f1": lambda d: skm.f1_score(d["y_true"], pred(d), labels=list(range(k)), **average),
        "precision": lambda d: skm.precision_score(d["y_true"], pred(d), labels=list(range(k)), **average),
        "macro_f1": lambda d: skm.f1_score(d["y_true"], pred(d), average="macro"),
        "recall[c0]": lambda d: skm.recall_score(d["y_true"], pred(d), labels=[0], average=None)[0],
    }
    statistics = {**{f"fast {m}": fast[m] for m in slow}, **{f"slow {m}": f for m, f in slow.items()}}
    out = stats.bootstrap_metrics(data, statistics, groups=pid, n_resamples=60, seed=7)
    for m in slow:
        f, s = out[f"fast {m}"], out[f"slow {m}"]
        assert f.estimate == pytest.approx(s.estimate, abs=1e-12), m
        np.testing.assert_allclose(f.values, s.values, atol=1e-12, err_msg=m)
        assert f.n_undefined == s.n_undefined == 0
        assert (f.low, f.high) == pytest.approx((s.low, s.high), abs=1e-12)
    assert np.std(out["fast accuracy"].values) > 0  # the resamples really differ


def test_patient_statistics_equal_a_direct_computation_on_the_same_resamples():
    rng = np.random.default_rng(5)
    label = rng.integers(0, 2, 15)
    frac = np.round(np.clip(0.3 + 0.35 * label + rng.normal(0, 0.2, 15), 0, 1), 1)  # ties
    patients = pd.DataFrame({"patient_id": [f"p{i}" for i in range(15)], "label": label, "frac_positive": frac})
    t = 0.5

    def direct(d, name):
        y, f = d["label"].to_numpy(), d["frac_positive"].to_numpy()
        pred = f >= t
        if name == "auc":
            return skm.roc_auc_score(y, f) if len(np.unique(y)) == 2 else np.nan
        sens = pred[y == 1].mean() if (y == 1).any() else np.nan
        spec = (~pred[y == 0]).mean() if (y == 0).any() else np.nan
        return {"accuracy": (pred == y).mean(), "sensitivity": sens, "specificity": spec,
                "balanced_accuracy": (sens + spec) / 2}[name]

    fast = stats.patient_statistics(t)
    slow = {f"slow {m}": (lambda d, m=m: direct(d, m)) for m in fast}
    out = stats.bootstrap_metrics(patients, {**fast, **slow}, n_resamples=150, seed=2)
    for m in fast:
        np.testing.assert_allclose(out[m].values, out[f"slow {m}"].values, atol=1e-12, err_msg=m)
        assert out[m].n_undefined == out[f"slow {m}"].n_undefined
        assert out[m].estimate == pytest.approx(direct(patients, m))
    assert out["auc"].n_undefined == 0 and np.std(out["auc"].values) > 0


def test_same_seed_same_interval_different_seed_different():
    data, pid = clustered_cells(np.random.default_rng(0), 40, 25)
    st = stats.cell_statistics(["hem", "all"])
    a = stats.bootstrap_metrics(data, st, groups=pid, n_resamples=200, seed=3)
    b = stats.bootstrap_metrics(data, st, groups=pid, n_resamples=200, seed=3)
    c = stats.bootstrap_metrics(data, st, groups=pid, n_resamples=200, seed=4)
    for m in st:
        assert a[m] == b[m]
        np.testing.assert_array_equal(a[m].values, b[m].values)
    assert (a["accuracy"].low, a["accuracy"].high) != (c["accuracy"].low, c["accuracy"].high)
    assert a["accuracy"].estimate == c["accuracy"].estimate


def raising_auc(d):
    if len(np.unique(d["y_true"])) < 2:
        raise ValueError("Only one class present in y_true")
    return skm.roc_auc_score(d["y_true"], d["proba"])


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_undefined_resamples_are_counted_and_skipped():
    # C-NMC style: each patient's cells share one label; 2 positive and 2 negative patients.
    # A resample of 4 patients is one-class (AUC undefined) with probability 2 * (1/2)^4 = 1/8.
    rng = np.random.default_rng(1)
    pid = np.repeat(np.arange(4), 25)
    y = (pid >= 2).astype(int)
    p1 = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, y.size), 0, 1)
    data = {"y_true": y, "proba": p1}
    fast = stats.cell_statistics(["hem", "all"])
    out = stats.bootstrap_metrics(
        data,
        {
            "auc": fast["auc"],
            "sklearn auc": lambda d: skm.roc_auc_score(d["y_true"], d["proba"]),  # NaN + warning
            "raising auc": raising_auc,
            "specificity": fast["specificity"],
            "accuracy": fast["accuracy"],
        },
        groups=pid, n_resamples=400, seed=0,
    )
    auc = out["auc"]
    assert 25 <= auc.n_undefined <= 75  # binomial(400, 1/8): mean 50, sd 6.6
    assert out["sklearn auc"].n_undefined == out["raising auc"].n_undefined == auc.n_undefined
    np.testing.assert_array_equal(np.isnan(auc.values), np.isnan(out["sklearn auc"].values))
    # no negative patient drawn: 1/16 of resamples; specificity undefined there (not 0)
    assert 8 <= out["specificity"].n_undefined <= 45  # binomial(400, 1/16): mean 25, sd 4.8
    assert out["specificity"].n_undefined < auc.n_undefined
    assert out["accuracy"].n_undefined == 0
    assert np.isfinite([auc.low, auc.high]).all() and auc.low <= auc.high
    assert auc.estimate == pytest.approx(skm.roc_auc_score(y, p1))


def test_all_resamples_undefined_gives_nan_interval():
    data = {"y_true": np.ones(10, dtype=int), "proba": np.linspace(0, 1, 10)}
    out = stats.cluster_bootstrap(data, stats.cell_statistics(["a", "b"])["auc"], n_resamples=50)
    assert math.isnan(out.estimate) and math.isnan(out.low) and math.isnan(out.high)
    assert out.n_undefined == 50


def test_groups_keep_patients_together_and_none_resamples_rows():
    sizes = np.array([1, 2, 3, 10])
    pid = np.repeat(np.arange(4), sizes)
    frame = pd.DataFrame({"patient_id": pid, "x": np.arange(pid.size, dtype=float)})

    def whole_patients(d):
        """1 if every patient present has all its rows, each the same number of times."""
        for patient, part in d.groupby("patient_id"):
            times = part["x"].value_counts()
            if len(times) != sizes[patient] or times.nunique() != 1:
                return 0.0
        return 1.0

    grouped = stats.cluster_bootstrap(frame, whole_patients, groups="patient_id", n_resamples=200, seed=1)
    assert np.all(grouped.values == 1.0)
    n_rows = stats.cluster_bootstrap(frame, lambda d: len(d), groups="patient_id", n_resamples=200, seed=1)
    assert n_rows.values.min() < pid.size < n_rows.values.max()  # 4 patients drawn, sizes vary

    # groups=None: every resample has n rows, drawn individually (about 1 - 1/e distinct)
    rows = stats.cluster_bootstrap(frame, lambda d: len(d), n_resamples=200, seed=1)
    assert np.all(rows.values == pid.size)
    distinct = stats.cluster_bootstrap(frame, lambda d: d["x"].nunique() / len(d), n_resamples=300, seed=1)
    assert 0.55 < distinct.values.mean() < 0.72
    split = stats.cluster_bootstrap(frame, whole_patients, n_resamples=200, seed=1)
    assert split.values.mean() < 0.1  # rows, not patients: patients get split up


def test_missing_patient_id_is_its_own_cluster():
    pid = np.array(["p1", "p1", None, None], dtype=object)
    codes = stats._cluster_codes(None, pid, 4)
    assert codes[0] == codes[1] and len({codes[0], codes[2], codes[3]}) == 3


def test_wilson_known_values():
    low, high = stats.wilson(8, 8)
    assert low == pytest.approx(0.6756, abs=1e-4) and high == pytest.approx(1.0)
    # closed form (Wilson 1927), z = 1.959964
    z = sps.norm.ppf(0.975)
    k, n = 3, 10
    centre = (k + z * z / 2) / (n + z * z)
    half = z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
    assert stats.wilson(3, 10) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert stats.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    narrow, wide = stats.wilson(5, 10, confidence=0.8), stats.wilson(5, 10, confidence=0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    assert all(math.isnan(v) for v in stats.wilson(0, 0))
    with pytest.raises(ValueError):
        stats.wilson(5, 4)


def test_overlaps():
    assert stats.overlaps((0.1, 0.5), (0.4, 0.9))
    assert stats.overlaps((0.4, 0.9), (0.1, 0.5))
    assert stats.overlaps((0.1, 0.5), (0.5, 0.9))  # closed intervals touch
    assert stats.overlaps((0.1, 0.9), (0.3, 0.4))  # nested
    assert not stats.overlaps((0.1, 0.3), (0.4, 0.9))
    assert not stats.overlaps((0.4, 0.9), (0.1, 0.3))
    assert not stats.overlaps((float("nan"), 0.5), (0.1, 0.9))
    iv = stats.Interval(0.5, 0.45, 0.55, 0.95, 100, 0, np.zeros(100))
    assert stats.overlaps(iv, (0.5, 0.6)) and not stats.overlaps(iv, (0.56, 0.6))


def test_to_frame():
    data, pid = clustered_cells(np.random.default_rng(0), 10, 5)
    frame = stats.to_frame(stats.bootstrap_metrics(data, stats.cell_statistics(["a", "b"]), groups=pid, n_resamples=20))
    assert list(frame.columns) == ["estimate", "low", "high", "confidence", "n_resamples", "n_undefined"]
    assert {"accuracy", "auc", "sensitivity", "specificity", "recall[a]", "recall[b]"} <= set(frame.index)


def test_a_class_absent_from_a_resample_has_no_f1_rather_than_zero():
    """Patient A: two class-0 cells, one called 1. Patient B: two class-1 cells, both right.
    A resample of A alone has no true class-1 cell but one called 1: macro F1 is class 0's
    (2/3), not dragged to 1/3 by a zero F1 for the absent class."""
    data = {"y_true": np.array([0, 0, 1, 1]), "proba": np.array([0.1, 0.9, 0.8, 0.9])}
    fns = stats.cell_statistics(["a", "b"], positive=1)
    out = stats.bootstrap_metrics(data, {"macro_f1": fns["macro_f1"]}, groups=np.array(["A", "A", "B", "B"]),
                                  n_resamples=400, seed=3)  # fmt: skip
    values = out["macro_f1"].values
    assert set(np.round(values, 3)) == {0.667, 0.733, 1.0}  # A alone, both, B alone
