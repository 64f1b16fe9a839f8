"""The shard format: one TFRecord file of tf.train.Example records per shard."""

# Each record holds a lossless PNG (`image`, RGBA or RGB), the class index (`label`) and the
# augmented-image id (`aug_id`) that joins it to the Parquet manifests. Training streams
# these files with tf.data; nothing loads a whole split into memory.

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from hemaflow.augment.preprocess import DETERMINISTIC_SUFFIX


def _tf():
    import tensorflow as tf  # imported lazily: TensorFlow takes seconds to import

    return tf


def encode_example(png: bytes, label: int, aug_id: str) -> bytes:
    tf = _tf()
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "aug_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[aug_id.encode()])),
    }
    # deterministic: protobuf writes map entries (the features) in an order that varies from
    # process to process unless asked to sort them, and shards must be byte-reproducible.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def write_records(path: str | Path, examples: Iterable[bytes]) -> int:
    """Write serialized examples to `path` atomically (a killed job leaves no shard behind)."""
    tf = _tf()
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    n = 0
    try:
        with tf.io.TFRecordWriter(str(tmp)) as w:
            for ex in examples:
                w.write(ex)
                n += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return n


def parse_example(serialized, channels: int):
    """tf.data map function: serialized Example -> (image uint8 H×W×C, label, aug_id)."""
    tf = _tf()
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "aug_id": tf.io.FixedLenFeature([], tf.string),
    }
    ex = tf.io.parse_single_example(serialized, spec)
    return tf.io.decode_png(ex["image"], channels=channels), ex["label"], ex["aug_id"]


def to_unit(images):
    """uint8 images -> float32 in [0, 1], the models' input. Map it over batches, not single
    images: one op per batch instead of one per image (10-15 % faster input, benchmarks/README.md)."""
    tf = _tf()
    return tf.cast(images, tf.float32) / 255.0


def deterministic_copies(ds):
    """Keep the serialized records of deterministic copies (rotation 0, no mirror, copy 0),
    chosen by aug_id before any PNG is decoded: one record per source image."""
    tf = _tf()
    spec = {"aug_id": tf.io.FixedLenFeature([], tf.string)}
    n = len(DETERMINISTIC_SUFFIX)
    def keep(raw):
        return tf.equal(tf.strings.substr(tf.io.parse_single_example(raw, spec)["aug_id"], -n, n), DETERMINISTIC_SUFFIX)

    return ds.filter(keep)


def iter_records(
    paths: Iterable[str | Path], channels: int, deterministic_only: bool = False
) -> Iterator[tuple[np.ndarray, int, str]]:
    """Eager iteration for small jobs and tests: yields (H×W×C uint8, label, aug_id);
    `deterministic_only`: one record per source image (see deterministic_copies)."""
    tf = _tf()
    for path in paths:
        ds = tf.data.TFRecordDataset(str(path))
        for raw in deterministic_copies(ds) if deterministic_only else ds:
            img, label, aug_id = parse_example(raw, channels)
            yield img.numpy(), int(label.numpy()), aug_id.numpy().decode()
