"""Decode one source image into 8-bit RGB, converting every other mode deliberately.

Both ingest (validation, hashing) and augmentation read images through `load_rgb`, so a
file is judged and converted the same way everywhere.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Formats seen in blood-cell sets (C-NMC: BMP; BCCD/PBC: JPEG/PNG; BMC: JPEG/TIFF).
SUPPORTED_FORMATS = frozenset({"BMP", "PNG", "JPEG", "TIFF"})

# Quarantine reasons, one word each, stable across releases (they are data in manifests).
REASONS = {
    "missing": "file does not exist",
    "empty": "zero-byte file",
    "not_an_image": "not a decodable image",
    "unsupported_format": "image format not supported",
    "truncated": "image data truncated or corrupt",
    "too_large": "more pixels than data.max_pixels (decompression-bomb guard)",
    "outside_root": "path escapes the data root",
    "bad_label": "label missing, or the folder, file name and labels CSV disagree",
    "duplicate_name": "the same file listed twice",
    "bad_filename": "file name is not valid UTF-8 (rel_path shows the bytes as \\x escapes)",
    "unknown_label": "label is not one of data.classes",
    "label_conflict": "identical pixels carry different labels elsewhere in the data set",
}

# Why a file under the data root is not a candidate at all (status `skipped`): not an error,
# but recorded, so that every file on disk is accounted for.
SKIP_REASONS = {
    "hidden": "hidden file or folder (name starts with '.')",
    "not_an_image_extension": "extension is not one of IMAGE_EXTENSIONS",
    "outside_class_folder": "folders adapter: directly under the root, not in a class folder",
    "outside_layout": "C-NMC: not part of the training_data/ or validation_data/ layout",
    "unlabelled": "C-NMC: testing_data/ has no labels",
    "label_file": "the labels CSV or file list itself",
    "not_in_filelist": "filelist adapter: a file under the root that the file list does not name",
    "dropped_by_label_map": "its class is mapped to null in data.label_map",
}

# What a walked file must end with to be decoded (any case); listed files are always decoded.
IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".webp")


class ImageRejected(Exception):
    """A source image that must be quarantined; `reason` is a key of REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail or REASONS[reason]}")


def load_rgb(path: str | os.PathLike, max_pixels: int = 40_000_000) -> tuple[np.ndarray, str, str]:
    """Return (H×W×3 uint8 RGB array, original PIL mode, format) or raise ImageRejected.

    Conversions: grey and 1-bit are replicated to RGB; palette goes through RGBA; alpha is
    composited over black (the C-NMC background); 16/32-bit integer images are scaled to
    the full 8-bit range by their dtype maximum, not clipped.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageRejected("missing", str(path)) from None
    if size == 0:
        raise ImageRejected("empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("too_large") from None
    with im:
        fmt = im.format or "?"
        if fmt not in SUPPORTED_FORMATS:
            raise ImageRejected("unsupported_format", fmt)
        w, h = im.size
        if w * h > max_pixels:
            raise ImageRejected("too_large", f"{w}x{h}")
        mode = im.mode
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageRejected("truncated", str(e)) from None
        return _to_rgb(im), mode, fmt


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im)
        top = 65535.0 if mode.startswith("I;16") else float(max(a.max(), 1))
        grey = np.clip(np.rint(a.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:4] + 127) // 255
        return rgb.astype(np.uint8)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
