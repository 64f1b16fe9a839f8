"""tf.data input streamed from TFRecord shards: memory bounded by the shuffle buffer, not the split."""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf

from hemaflow.augment.records import parse_example, to_unit

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
    cache: bool = False,
) -> tf.data.Dataset:
    """Batches of (image float32 [0,1], label[, aug_id]) from shard files, in a seed-determined order.

    Labels are float32 of shape (1,) for two classes, int32 (sparse) otherwise. `size`
    checks every image is size x size. with_ids adds the aug_id; use it for prediction, not fit.
    cache (only without shuffle: validation) keeps the decoded uint8 records in memory after the
    first full pass, so later passes skip the PNG decode; the batches are the same.
    """
    if cache and shuffle:
        raise ValueError("make_dataset: cache is for an unshuffled split; cached training uses cached_epochs")
    files = _files(records)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = _interleave(ds, len(files))
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = _decoded(ds, channels, n_classes, size, with_ids)
    return _batches(ds.cache() if cache else ds, batch_size)


def decoded_records(
    records: Sequence[str | os.PathLike], *, channels: int, n_classes: int, size: int | None = None,
    with_ids: bool = False,
) -> tf.data.Dataset:  # fmt: skip
    """Every record of `records` decoded (uint8 image, label[, aug_id]) in file order (shards
    interleaved as make_dataset does), cached in memory after the first full pass: for
    cached_epochs. Memory: the split's decoded pixels (n x size x size x channels bytes)."""
    files = _files(records)
    ds = _interleave(tf.data.Dataset.from_tensor_slices(files), len(files))
    return _decoded(ds, channels, n_classes, size, with_ids).cache()


def cached_epochs(decoded: tf.data.Dataset, seeds: Sequence[int], n: int, batch_size: int) -> tf.data.Dataset:
    """Training batches from a decoded_records dataset of n records, one epoch per seed, each the
    whole split shuffled by its own seed (so an epoch's order depends only on its seed, as with
    streaming, and a resumed run sees the same batches)."""
    per_epoch = tf.data.Dataset.from_tensor_slices(tf.constant(list(seeds), tf.int64))
    # The batches are built inside the per-epoch dataset so that no batch spans two epochs.
    return per_epoch.flat_map(lambda s: _batches(decoded.shuffle(n, seed=s, reshuffle_each_iteration=False),
                                                 batch_size))  # fmt: skip


def _files(records) -> list[str]:
    files = [os.fspath(p) for p in records]
    if not files:
        raise ValueError("make_dataset: no TFRecord files given (check the shard list of this split)")
    return files


def _interleave(files: tf.data.Dataset, n_files: int) -> tf.data.Dataset:
    return files.interleave(
        tf.data.TFRecordDataset,
        cycle_length=n_files,  # every shard: consecutive records come from different cells
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _decoded(ds: tf.data.Dataset, channels: int, n_classes: int, size: int | None, with_ids: bool) -> tf.data.Dataset:
    def decode(serialized):
        image, label, aug_id = parse_example(serialized, channels)
        if size is not None:
            image = tf.ensure_shape(image, (size, size, channels))
        label = tf.reshape(tf.cast(label, tf.float32), (1,)) if n_classes == 2 else tf.cast(label, tf.int32)
        return (image, label, aug_id) if with_ids else (image, label)

    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _batches(ds: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Float conversion per batch (cheaper than per image), then prefetch."""
    ds = ds.batch(batch_size)
    ds = ds.map(lambda image, *rest: (to_unit(image), *rest), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
