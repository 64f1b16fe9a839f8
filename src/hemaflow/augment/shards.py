"""Shards: preprocessed (and augmented) images as TFRecord files plus Parquet manifests."""

# Images go to shards by a stable hash of image_id, so a shard's content does not depend on
# which machine or process builds it, and each shard is one independent Snakemake job.

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from skimage.util import montage
from tqdm import tqdm

from hemaflow.data.images import ImageRejected, load_rgb
from hemaflow.data.manifest import SCHEMAS, write_manifest
from hemaflow.augment.preprocess import Source, prepare_source, render_many, variants
from hemaflow.augment.records import encode_example, write_records

# augment_params keys that shape the variants (`fill` goes to rendering).
VARIANT_KEYS = ("rotations", "mirror", "random_copies", "flip", "shift", "zoom", "shear", "rotation_range")
# Prepared pixels of the sources held at once while a shard is written in shuffled order
# (one block). A prepared 450 px nucleus on black takes 0.1-0.2 MB (alpha keeps only the
# cell's window), a 450 px natural-background image 0.6 MB: a block holds ~400-2,000
# sources, i.e. 30,000-140,000 records to shuffle at 72 copies each, at a bounded cost.
BLOCK_BYTES = 256 * 2**20
# Outputs rendered together (in write order) to share the per-call costs; a few MB at k = 256.
RENDER_CHUNK = 64
# OpenCV's fast lossless setting (zlib level 1, RLE, SUB filter), pinned so shard bytes do
# not change with OpenCV's defaults.
PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION, 1,
    cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
    cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB,
]  # fmt: skip


def shard_of(image_id: str, n: int) -> int:
    """Shard index in [0, n) from sha256(image_id): the same on every machine and run."""
    return int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:8], "big") % n


def encode_png(img: np.ndarray) -> bytes:
    """RGB(A) uint8 -> PNG bytes holding RGB(A) (OpenCV writes BGR(A) order)."""
    code = cv2.COLOR_RGBA2BGRA if img.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, code), PNG_PARAMS)
    assert ok, "cv2.imencode failed on an in-memory uint8 image"
    return buf.tobytes()


def build_shard(
    rows: pd.DataFrame,
    *,
    root: str | Path,
    split: str,
    shard: int,
    augment: bool,
    preprocess: Mapping,
    augment_params: Mapping,
    seed: int,
    max_pixels: int,
    out_records: str | Path,
    out_manifest: str | Path,
    block_bytes: int = BLOCK_BYTES,
) -> pd.DataFrame:
    """Render every image of `rows` (image_id, rel_path, label_index and optionally
    extra_copies, hemaflow.augment.sampling: this shard's images only) into `out_records` and its
    manifest into `out_manifest`; return the manifest.

    `preprocess`: render_all keywords (background, size, crop_to_content, pad_square,
    filter). `augment_params`: rotations, mirror, random_copies, flip, shift, zoom, shear,
    rotation_range, fill; ignored unless `augment` (then only the deterministic copy is written).

    Order: sources are taken by image_id in blocks that hold about `block_bytes` of prepared
    pixels (each source decoded and prepared once); a block's (source, variant) pairs are
    written in a random permutation seeded by (seed, split, shard, block number), each
    variant rendered when its turn comes (RENDER_CHUNK at a time). So the copies of a cell
    are spread over its block instead of sitting next to each other, memory is bounded by
    the block, and the same inputs give the same bytes. The manifest's `index` is the
    record's position in the file.
    """
    params = augment_params if augment else {}
    vkw = {k: params[k] for k in VARIANT_KEYS if k in params}
    fill = params.get("fill", "nearest")
    rows = rows.sort_values("image_id", kind="stable")
    meta: list[dict] = []

    def blocks() -> Iterator[list[tuple[int, Source, list[dict]]]]:
        block, held = [], 0
        for row in tqdm(rows.itertuples(index=False), total=len(rows), desc=f"{split}/{shard:03d}", unit="image"):
            src = prepare_source(_load(Path(root) / row.rel_path, max_pixels), **preprocess, fill=fill)
            extra = int(getattr(row, "extra_copies", 0)) if augment else 0
            block.append((int(row.label_index), src, variants(row.image_id, **vkw, extra_copies=extra, seed=seed)))
            held += src.nbytes
            if held >= block_bytes:
                yield block
                block, held = [], 0
        if block:
            yield block

    def examples() -> Iterator[bytes]:
        for number, block in enumerate(blocks()):
            pairs = [(label, src, v) for label, src, vs in block for v in vs]
            order = _permutation(len(pairs), seed, split, shard, number)
            for start in range(0, len(order), RENDER_CHUNK):
                chunk = [pairs[p] for p in order[start : start + RENDER_CHUNK]]
                for (label, _, v), img in zip(chunk, render_many([(src, v) for _, src, v in chunk])):
                    meta.append({**v, "split": split, "shard": shard, "index": len(meta), "label_index": label})
                    yield encode_example(encode_png(img), label, v["aug_id"])
            del block, pairs, chunk  # free this block's sources before the next one is prepared

    Path(out_records).parent.mkdir(parents=True, exist_ok=True)
    write_records(out_records, examples())
    manifest = pd.DataFrame(meta, columns=SCHEMAS["augmented"].names)
    write_manifest(manifest, out_manifest, "augmented")
    return manifest


def _permutation(n: int, seed: int, split: str, shard: int, block: int) -> np.ndarray:
    """Write order of one block: the same on every machine, whatever else is in the split."""
    digest = hashlib.sha256(f"{seed}/{split}/{shard}/{block}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(n)


def _load(path: Path, max_pixels: int) -> np.ndarray:
    try:
        return load_rgb(path, max_pixels)[0]
    except ImageRejected as e:
        raise RuntimeError(
            f"{path}: {e}. It passed ingest, so it has changed since; rerun ingest "
            "(snakemake --forcerun ingest) to re-validate and quarantine it."
        ) from e


def merge_manifests(paths: Sequence[str | Path], out_path: str | Path) -> pd.DataFrame:
    """Concatenate shard manifests with Dask into one Parquet file sorted by split, shard, index."""
    import dask.dataframe as dd

    df = dd.read_parquet([str(p) for p in paths]).compute()
    df = df.sort_values(["split", "shard", "index"], kind="stable").reset_index(drop=True)
    write_manifest(df, out_path, "augmented")
    return df


# ---------------------------------------------------------------- contact sheet


def contact_sheet(
    records_paths: Sequence[str | Path],
    manifest: pd.DataFrame,
    out_png: str | Path,
    *,
    per_class: int,
    class_names: Mapping[int, str] | Sequence[str],
    channels: int,
    seed: int,
) -> np.ndarray:
    """PNG grid of what the model sees for one split: a titled block of up to `per_class`
    random records per class; transparency shown over a grey checkerboard. Returns the sheet."""
    names = class_names if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    groups = {int(k): g for k, g in manifest.sort_values("aug_id").groupby("label_index")}
    picks = {k: g.sample(min(per_class, len(g)), random_state=seed)["aug_id"].tolist() for k, g in groups.items()}
    images = _read_records(records_paths, {a for ids in picks.values() for a in ids}, channels)
    cols = min(per_class, 12)
    shape = (math.ceil(per_class / cols), cols)
    blocks = []
    for label, ids in sorted(picks.items()):
        tiles = np.stack([_visible(images[a]) for a in ids])
        grid = montage(tiles, grid_shape=shape, fill=(255, 255, 255), padding_width=2, channel_axis=-1)
        title = f"{names.get(label, label)} (label {label}): {len(ids)} of {len(groups[label])} images"
        blocks += [_caption(title, grid.shape[1]), grid]
    sheet = np.vstack(blocks) if blocks else _caption("no images in this split", 400)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    Path(out_png).write_bytes(encode_png(sheet))
    return sheet


def _read_records(paths: Sequence[str | Path], wanted: set[str], channels: int) -> dict[str, np.ndarray]:
    """Decode only the wanted records: a training split can hold millions of images."""
    import tensorflow as tf

    from hemaflow.augment.records import parse_example

    if not wanted:
        return {}
    keys = tf.constant(sorted(wanted))
    spec = {"aug_id": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset([str(p) for p in paths])
    ds = ds.filter(lambda raw: tf.reduce_any(tf.equal(tf.io.parse_single_example(raw, spec)["aug_id"], keys)))
    ds = ds.map(lambda raw: parse_example(raw, channels))
    return {a.numpy().decode(): img.numpy() for img, _, a in ds}


def _visible(img: np.ndarray, min_side: int = 96) -> np.ndarray:
    """RGB tile, enlarged (nearest) to at least `min_side`, alpha composited over a checkerboard."""
    if img.shape[2] == 4:
        yy, xx = np.indices(img.shape[:2])
        board = np.where(((yy // 4 + xx // 4) % 2 == 0)[..., None], 200, 150).astype(np.float32)
        a = img[..., 3:].astype(np.float32) / 255
        img = np.rint(img[..., :3] * a + board * (1 - a)).astype(np.uint8)
    factor = max(1, math.ceil(min_side / img.shape[0]))
    return cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def _caption(text: str, width: int, height: int = 28) -> np.ndarray:
    strip = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(strip, text, (4, height - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    return strip
