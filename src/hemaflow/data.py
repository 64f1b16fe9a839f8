"""tf.data input streamed from TFRecord shards: memory bounded by the shuffle buffer, not the split."""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf

from hemaflow.records import parse_example, to_unit

# Serialized records (a few kB each) held for shuffling. Shards are written in a shuffled
# order (shards.build_shard) and read one record from each shard of the split in turn, so
# this buffer mixes records of many shards at a fixed memory cost.
SHUFFLE_BUFFER = 2048


def make_dataset(
    records: Sequence[str | os.PathLike],
    *,
    channels: int,
    n_classes: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    with_ids: bool = False,
    size: int | None = None,
    shuffle_buffer: int = SHUFFLE_BUFFER,
) -> tf.data.Dataset:
    """Batches of (image float32 [0,1], label[, aug_id]) from shard files, in a seed-determined order.

    Labels are float32 of shape (1,) for two classes, int32 (sparse) otherwise. `size`
    checks every image is size x size. with_ids adds the aug_id; use it for prediction, not fit.
    """
    files = [os.fspath(p) for p in records]
    if not files:
        raise ValueError("make_dataset: no TFRecord files given (check the shard list of this split)")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=len(files),  # every shard: consecutive records come from different cells
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

    def decode(serialized):
        image, label, aug_id = parse_example(serialized, channels)
        if size is not None:
            image = tf.ensure_shape(image, (size, size, channels))
        label = tf.reshape(tf.cast(label, tf.float32), (1,)) if n_classes == 2 else tf.cast(label, tf.int32)
        return (image, label, aug_id) if with_ids else (image, label)

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
    ds = ds.map(lambda image, *rest: (to_unit(image), *rest), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
