"""Decode one source image into 8-bit RGB, converting every other mode deliberately."""

# Both ingest (validation, hashing) and augmentation read images through `load_rgb`, so a
# file is judged and converted the same way everywhere.

from __future__ import annotations

import os
import stat
import threading
import warnings
from contextlib import contextmanager
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
    "too_small": "smaller side below data.min_side pixels (a thumbnail or a crop gone wrong)",
    "blank": "near-constant image (grey standard deviation below images.BLANK_STD)",
    "unreadable": "the file or its folder cannot be read (permissions, a symlink loop, an I/O error)",
    "outside_root": "path escapes the data root",
    "bad_label": "label missing, or the folder, file name and labels CSV disagree",
    "duplicate_name": "the same file listed twice",
    "bad_filename": "file name is not valid UTF-8 (rel_path shows the bytes as \\x escapes)",
    "unknown_label": "label is not one of data.classes",
    "unsafe_label": "label cannot be a folder name (a path separator, `.`/`..`, a leading `.` or `-`, too long)",
    "label_conflict": "identical pixels carry different labels elsewhere in the data set",
}

# Why a file under the data root is not a candidate at all (status `skipped`): not an error,
# but recorded, so that every file on disk is accounted for.
SKIP_REASONS = {
    "hidden": "hidden file or folder (name starts with '.')",
    "not_a_regular_file": "a FIFO, socket or device, not a file",
    "empty_class_folder": "folders adapter: a class folder without image files (not a class unless data.classes names it)",
    "not_an_image_extension": "extension is not one of IMAGE_EXTENSIONS",
    "outside_class_folder": "folders adapter: directly under the root, not in a class folder",
    "outside_layout": "C-NMC: not part of the training_data/ or validation_data/ layout",
    "unlabelled": "C-NMC: testing_data/ has no labels",
    "label_file": "the labels CSV or file list itself",
    "not_in_filelist": "filelist adapter: a file under the root that the file list does not name",
    "dropped_by_label_map": "its class is mapped to null in data.label_map",
}

# Transparent pixels show this colour: slide background (bright field), not black.
ALPHA_BACKGROUND = (255, 255, 255)

# Bit depths of the camera data that 16-bit containers hold (10/12/14-bit sensors, or 16).
SENSOR_BITS = (10, 12, 14, 16)

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
    composited over ALPHA_BACKGROUND (white); 16-bit grey is scaled, not clipped, by its real
    bit depth: the smallest of SENSOR_BITS whose range holds the image's maximum (max <= 4095
    is 12-bit data, so it is multiplied by 255/4095); 32-bit integer and float images have
    no fixed range and are scaled by their own maximum. `max_pixels`, above or below Pillow's
    Image.MAX_IMAGE_PIXELS, is the only pixel limit.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageRejected("missing", str(path)) from None
    if not stat.S_ISREG(st.st_mode):  # a folder, FIFO (opening it would block), socket or device
        raise ImageRejected("unreadable", f"{path} is not a regular file")
    if st.st_size == 0:
        raise ImageRejected("empty")
    # Our file object, so that it is closed however Image.open fails (no ResourceWarning).
    with open(path, "rb") as fp, _open_image(fp, max_pixels) as im:
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


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def _open_image(fp, max_pixels: int):
    # Pillow's bomb guard is process-global (MAX_IMAGE_PIXELS, warnings filters): set it to
    # max_pixels under a lock, restore it once the header is read; decoding runs unlocked.
    with _PILLOW_LIMIT:
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(fp)
        except UnidentifiedImageError:
            raise ImageRejected("not_an_image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageRejected("too_large") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    with im:
        yield im


def _to_rgb(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im)
        if mode.startswith("I;16"):
            top = float(next(2**b - 1 for b in SENSOR_BITS if int(a.max()) < 2**b))
        else:
            top = float(max(a.max(), 1))
        grey = np.clip(np.rint(a.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint32)
        alpha = rgba[..., 3:4]
        rgb = (rgba[..., :3] * alpha + np.array(ALPHA_BACKGROUND, np.uint32) * (255 - alpha) + 127) // 255
        return rgb.astype(np.uint8)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


# Implausible cells, for ingest and predict alike: a smaller side below MIN_SIDE (data.min_side,
# predict --min-side; the schema's default is this one), or grey levels (0-255) varying less
# than BLANK_STD: no cell to learn from or classify.
MIN_SIDE = 16
BLANK_STD = 2.0
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's convert("L")


def implausible(rgb: np.ndarray, min_side: int = MIN_SIDE) -> str | None:
    """`too_small` (smaller side below min_side), `blank` (near-constant grey) or None for a decoded image."""
    if min(rgb.shape[:2]) < min_side:
        return "too_small"
    return "blank" if float((rgb @ np.array(GREY_WEIGHTS, np.float32)).std()) < BLANK_STD else None
