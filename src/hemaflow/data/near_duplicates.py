"""Near-duplicates: perceptual hashes (imagehash) of the decoded RGB, grouped within a Hamming distance.

A re-saved (re-encoded), rescaled or slightly re-cropped copy of a cell has other pixels, so
its `content_hash` differs, but its perceptual hash stays within a few bits. Ingest hashes
each image it decodes (`perceptual_hash`, no second decode) and `groups` joins every pair
within `max_distance` bits into connected components (a chain a~b~c is one group even when
a and c are further apart). The split keeps a group whole, as it keeps a patient whole.

What is caught depends on the threshold and on the data (measured in docs/architecture.md,
"Near-duplicates"): re-encoded and rescaled copies are; rotations and mirror images are not
(the hash of a rotated or mirrored image is as far as another cell's); crops only partly.
"""

from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# data.near_duplicates.method -> imagehash function (each takes hash_size, gives hash_size² bits)
METHODS = {"phash": imagehash.phash, "dhash": imagehash.dhash}
OFF = "off"
BLOCK = 2048  # rows and columns compared at once: BLOCK² x words x 8 bytes (134 MB for 256-bit hashes)

CAUGHT = "re-encoded copies (JPEG q=75) and rescaled copies (0.5x, 2x) at the default threshold"
NOT_CAUGHT = (
    "rotations and mirror images (not hashed); crops only partly (5 % crops: about half on the "
    "replica, almost none on real smear crops at the default; shifts and larger crops: no); "
    "colour or stain changes beyond the grey-level structure; images whose perceptual hash is further "
    "than data.near_duplicates.max_distance"
)


def perceptual_hash(rgb: np.ndarray, method: str, hash_size: int) -> str:
    """Hex string of the `method` hash of a decoded uint8 RGB image (hash_size² bits)."""
    return str(METHODS[method](Image.fromarray(rgb), hash_size=hash_size))


def to_words(hashes) -> np.ndarray:
    """(n, words) uint64 array of equal-length hex hashes (16 hex digits a word)."""
    hashes = list(hashes)
    if not hashes:
        return np.zeros((0, 1), dtype=np.uint64)
    lengths = {len(h) for h in hashes}
    if len(lengths) != 1:
        raise ValueError(f"perceptual hashes of different lengths {sorted(lengths)}: one method and hash_size per data set")
    n_hex = lengths.pop()
    padded = [h.rjust(-(-n_hex // 16) * 16, "0") for h in hashes]
    raw = np.frombuffer(bytes.fromhex("".join(padded)), dtype=">u8")
    return raw.reshape(len(hashes), -1).astype(np.uint64)


def close_pairs(words: np.ndarray, max_distance: int, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j) whose hashes differ in at most `max_distance` bits.

    All pairs are compared (O(n²) popcounts, numpy), block by block so memory stays at
    block² x words; only the pairs found are kept.
    """
    n = len(words)
    rows, cols = [], []
    for a in range(0, n, block):
        wa = words[a : a + block]
        for b in range(a, n, block):
            wb = words[b : b + block]
            shape = (len(wa), len(wb))
            dist, xor, bits = np.zeros(shape, np.uint16), np.empty(shape, np.uint64), np.empty(shape, np.uint8)
            for w in range(words.shape[1]):  # in place: no temporary arrays per word
                np.bitwise_xor(wa[:, None, w], wb[None, :, w], out=xor)
                np.bitwise_count(xor, out=bits)
                np.add(dist, bits, out=dist)
            i, j = np.nonzero(dist <= max_distance)
            keep = a + i < b + j
            rows.append(a + i[keep])
            cols.append(b + j[keep])
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


def components(hashes, max_distance: int, block: int = BLOCK) -> np.ndarray:
    """Component number of each hash (in input order): hashes within `max_distance` bits,
    directly or through a chain, share one. Deterministic: numbered by first member."""
    words = to_words(hashes)
    n = len(words)
    i, j = close_pairs(words, max_distance, block)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # renumber by first occurrence so the numbers do not depend on scipy's traversal order
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[labels]
