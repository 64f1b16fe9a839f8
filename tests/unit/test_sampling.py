"""Per-class draws of source images and up-sampling to a target, before augmentation."""

import numpy as np
import pandas as pd
import pytest

from hemaflow.augment.sampling import plan


def sources(counts: dict[int, int]) -> pd.DataFrame:
    rows = [{"image_id": f"{label}-{i:04d}", "label_index": label} for label, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_sources_per_class_caps_each_class_and_keeps_smaller_ones_whole():
    out = plan(sources({0: 50, 1: 8, 2: 20}), split="train", seed=1, copies_per_source=4, sources_per_class=12)
    assert out.groupby("label_index").size().to_dict() == {0: 12, 1: 8, 2: 12}
    assert (out["extra_copies"] == 0).all()


def test_the_draw_is_seeded_and_independent_of_row_order_and_of_other_classes():
    rows = sources({0: 50, 1: 30})
    kw = dict(split="train", copies_per_source=1, sources_per_class=10)
    a = plan(rows, seed=1, **kw)
    shuffled = rows.sample(frac=1.0, random_state=3)
    assert a.equals(plan(shuffled, seed=1, **kw))
    alone = plan(rows[rows["label_index"] == 0], seed=1, **kw)
    assert set(alone["image_id"]) == set(a.loc[a["label_index"] == 0, "image_id"])
    assert set(plan(rows, seed=2, **kw)["image_id"]) != set(a["image_id"])
    assert set(plan(rows, seed=1, **{**kw, "split": "val"})["image_id"]) != set(a["image_id"])
    assert not a["image_id"].str.endswith(("0000", "0001", "0002")).all()  # not simply the first rows


@pytest.mark.parametrize("copies", [1, 8])
def test_target_per_class_up_samples_evenly_and_leaves_larger_classes(copies):
    rows = sources({0: 7, 1: 3, 2: 40})
    out = plan(rows, split="train", seed=5, copies_per_source=copies, target_per_class=100)
    images = out.assign(n=copies + out["extra_copies"]).groupby("label_index")["n"].sum().to_dict()
    assert images == {0: max(100, 7 * copies), 1: max(100, 3 * copies), 2: max(100, 40 * copies)}
    spread = out.groupby("label_index")["extra_copies"].agg(lambda e: e.max() - e.min())
    assert (spread <= 1).all()
    assert len(out) == len(rows)


def test_both_together_cap_first_then_fill_up():
    out = plan(sources({0: 30, 1: 4}), split="train", seed=5, copies_per_source=2, sources_per_class=10,
               target_per_class=50)
    assert out.groupby("label_index").size().to_dict() == {0: 10, 1: 4}
    totals = out.assign(n=2 + out["extra_copies"]).groupby("label_index")["n"].sum()
    assert (totals == 50).all()
    assert np.array_equal(out["image_id"], np.sort(out["image_id"]))  # rows come back by image_id


def test_off_changes_nothing():
    rows = sources({0: 5, 1: 9})
    out = plan(rows, split="train", seed=5, copies_per_source=3)
    assert out[["image_id", "label_index"]].equals(rows.sort_values("image_id").reset_index(drop=True))
    assert (out["extra_copies"] == 0).all()
