"""Training batches at seed 000's augmentation (36 rotations x mirror = 72 copies per cell):
shards written by build_shard and read by make_dataset as training reads them must put
many different cells in each batch, not 64 copies of a few."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from hemaflow.train.input import make_dataset  # noqa: E402
from hemaflow.augment.shards import build_shard, shard_of  # noqa: E402

CELLS, SHARDS, BATCH = 1000, 4, 64
AUGMENT = dict(rotations=36, mirror=True, random_copies=0)
PREPROCESS = dict(background="alpha", size=16, crop_to_content=True, pad_square=True, filter="none")


@pytest.fixture(scope="module")
def train_shards(tmp_path_factory):
    """1,000 tiny cells on black in 4 shards (assigned as augment_shard does), 72,000 records."""
    tmp = tmp_path_factory.mktemp("diversity")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(CELLS):
        img = np.zeros((20, 20, 3), np.uint8)
        axes = tuple(int(a) for a in rng.integers(3, 9, 2))
        cv2.ellipse(img, (10, 10), axes, float(rng.uniform(0, 180)), 0, 360, tuple(int(c) for c in rng.integers(60, 255, 3)), -1)
        cv2.imwrite(str(tmp / f"c{i}.png"), img)
        rows.append({"image_id": f"{i:016x}", "rel_path": f"c{i}.png", "label_index": i % 2})
    rows = pd.DataFrame(rows).astype({"label_index": "int16"})
    paths = []
    for s in range(SHARDS):
        paths.append(tmp / f"{s:03d}.tfrecord")
        build_shard(
            rows[rows["image_id"].map(lambda i: shard_of(i, SHARDS)) == s], root=tmp, split="train", shard=s,
            augment=True, preprocess=PREPROCESS, augment_params=AUGMENT, seed=2019, max_pixels=10**6,
            out_records=paths[-1], out_manifest=tmp / f"{s:03d}.parquet",
        )  # fmt: skip
    return paths


def test_a_training_batch_holds_at_least_60_of_64_distinct_cells(train_shards):
    # Exactly training's input (train.train_combo), plus the aug_ids to tell the cells apart.
    ds = make_dataset(train_shards, channels=4, n_classes=2, batch_size=BATCH, shuffle=True, seed=2019, size=16,
                      with_ids=True)  # fmt: skip
    distinct = [len({a.rsplit(b"-", 3)[0] for a in ids.numpy()}) for _, _, ids in ds]
    full = distinct[: CELLS * 72 // BATCH]  # the last batch is short
    # Drawing 64 of 1,000 cells at random gives 62 distinct on average; copies next to each
    # other in the shards and 4 files interleaved gave a median of about 41.
    assert np.median(full) >= 60, f"median distinct cells per batch {np.median(full)}"
    assert np.percentile(full, 5) >= 55
