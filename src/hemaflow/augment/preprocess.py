"""Preprocessing and offline augmentation, one affine warp per output image."""

# Every geometric step — rotation about the centre with the canvas expanded, crop to the
# content's bounding box, centred pad to a square, resize to k×k, mirror, and the random
# flip/shift/zoom/shear — is an affine map, so each output is one 3×3 matrix and one
# `cv2.warpAffine` straight into the k×k result: every output pixel is interpolated once
# (seed 000 rotated, saved, reopened, cropped and resized: two interpolations and full-size
# intermediate files).
#
# Decisions (see also `render_all`):
# - Coordinates are OpenCV's: pixel centres at integers, pixel i covers [i - 0.5, i + 0.5].
# - The content box after rotation is the box of the rotated corners of the foreground's
#   convex-hull pixels, i.e. exactly the crop of the rotated image, without rotating it.
# - Foreground (seed 000): every pixel that is not exactly (0, 0, 0). With `alpha`, the mask
#   rides through the warp as a fourth channel and is re-binarised at 50 % coverage;
#   transparent pixels are exactly (0, 0, 0, 0). Cell colours are first carried a little past
#   the edge (once per source), so interpolating across it mixes cell colours, not black: no
#   dark fringe (the seed re-thresholded the rotated RGB and kept one).
# - Downscaling is anti-aliased by a Gaussian prefilter, sigma = (f - 1) / 2 (scikit-image's
#   rule), f the deterministic copy's downscale factor, so one bilinear sample does not alias.
# - Outside the source: transparent with `alpha`; with `natural`, reflected for the
#   deterministic copy and filled by `fill` for random copies (Keras ImageDataGenerator modes).

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

BACKGROUNDS = ("alpha", "natural")
FILTERS = ("none", "median_sharpen")
# Keras/scipy fill modes -> OpenCV borders ('reflect' is half-sample symmetric: dcba|abcd).
FILLS = {"nearest": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT, "constant": cv2.BORDER_CONSTANT}

_PIXEL_CORNERS = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])


# The random parameters of the deterministic copy (copy 0).
IDENTITY = {"flip_h": False, "flip_v": False, "shift_x": 0.0, "shift_y": 0.0, "zoom": 1.0, "shear": 0.0}


def aug_id(image_id: str, rotation_index: int, mirror: bool, copy: int) -> str:
    return f"{image_id}-r{rotation_index:03d}-m{int(mirror)}-c{copy}"


# How every deterministic (unaugmented) copy's aug_id ends: rotation 0, not mirrored, copy 0.
DETERMINISTIC_SUFFIX = aug_id("", 0, False, 0)


def variants(
    image_id: str,
    *,
    rotations: int = 1,
    mirror: bool = False,
    random_copies: int = 0,
    flip: bool = False,
    shift: float = 0.0,
    zoom: float = 0.0,
    shear: float = 0.0,
    rotation_range: float = 0.0,
    extra_copies: int = 0,
    seed: int = 0,
) -> list[dict]:
    """One dict per output: rotations × (plain, mirrored) × (deterministic copy 0, random copies),
    then `extra_copies` more random copies of rotation 0, unmirrored (up-sampling to a class
    target, hemaflow.augment.sampling).

    Random parameters are drawn from a generator seeded by (seed, aug_id), so they do not
    depend on processing order or on which other images share the shard. Ranges follow
    Keras' ImageDataGenerator: shift in [-shift, shift] of the side, zoom in
    [1 - zoom, 1 + zoom], shear in [-shear, shear] degrees, each flip with p = 0.5, and an
    angle in [-rotation_range, rotation_range] degrees added to the copy's fixed rotation.
    """
    if rotations < 1:
        raise ValueError(f"augment.rotations must be at least 1 (got {rotations})")
    if random_copies < 0:
        raise ValueError(f"augment.random_copies must be 0 or more (got {random_copies})")
    out = []

    def add(r: int, m: bool, copy: int) -> None:
        aid = aug_id(image_id, r, m, copy)
        v = {"aug_id": aid, "image_id": image_id, "rotation": 360.0 * r / rotations, "mirror": m, "copy": copy}
        if copy:
            v.update(_random_params(aid, seed, flip, shift, zoom, shear, rotation_range))
            v["rotation"] = (v["rotation"] + v.pop("turn")) % 360.0
        else:
            v.update(IDENTITY)
        out.append(v)

    for r in range(rotations):
        for m in (False, True) if mirror else (False,):
            for copy in range(1 + random_copies):
                add(r, m, copy)
    for copy in range(1 + random_copies, 1 + random_copies + extra_copies):
        add(0, False, copy)
    return out


def _random_params(aid: str, seed: int, flip: bool, shift: float, zoom: float, shear: float, turn: float) -> dict:
    digest = hashlib.sha256(f"{seed}/{aid}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    # Always draw every value, in this order, so turning one range off (or adding one) does
    # not change the others.
    fh, fv = rng.random(2) < 0.5
    sx, sy = rng.uniform(-shift, shift, 2)
    return {
        "flip_h": bool(flip and fh),
        "flip_v": bool(flip and fv),
        "shift_x": float(sx),
        "shift_y": float(sy),
        "zoom": float(rng.uniform(1 - zoom, 1 + zoom)),
        "shear": float(rng.uniform(-shear, shear)),
        "turn": float(rng.uniform(-turn, turn)),
    }


# ---------------------------------------------------------------- masks and points


def foreground(rgb: np.ndarray) -> np.ndarray:
    """uint8 mask: 255 where the pixel is not exactly (0, 0, 0) (seed 000), else 0."""
    return cv2.bitwise_not(cv2.inRange(rgb, (0, 0, 0), (0, 0, 0)))


# Point sets are 2×N arrays (row 0: x, row 1: y), so a matrix applies as M[:2, :2] @ P.


def content_corners(mask: np.ndarray) -> np.ndarray | None:
    """Convex hull of the foreground pixels' corners, 2×N; None if the mask is empty."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    centres = cv2.convexHull(np.concatenate(contours)).reshape(-1, 1, 2)
    corners = (centres + _PIXEL_CORNERS).reshape(-1, 2).astype(np.float32)  # exact: half-integers
    return cv2.convexHull(corners).reshape(-1, 2).T.astype(np.float64)


def image_corners(shape: tuple[int, ...]) -> np.ndarray:
    """The whole image's outline, 2×4."""
    h, w = shape[:2]
    return np.array([[-0.5, w - 0.5, w - 0.5, -0.5], [-0.5, -0.5, h - 0.5, h - 0.5]])


# ---------------------------------------------------------------- matrices (3×3, forward)


def rotation(angle: float) -> np.ndarray:
    """Counter-clockwise on screen by `angle` degrees (cv2.getRotationMatrix2D, as seed 000).

    About the origin: where the rotated content lands is decided by the crop box anyway.
    """
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return matrix[:2, :2] @ points + matrix[:2, 2:]


def bounding_box(points: np.ndarray) -> tuple[float, float, float, float]:
    (x0, y0), (x1, y1) = points.min(axis=1), points.max(axis=1)
    return float(x0), float(y0), float(x1), float(y1)


def square(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The square with side max(w, h) centred on `box` (pad to square)."""
    x0, y0, x1, y1 = box
    half = max(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - half, cy - half, cx + half, cy + half


def box_to_output(box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Map `box` onto the k×k output: crop and resize in one matrix."""
    x0, y0, x1, y1 = box
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    return np.array([[sx, 0.0, -x0 * sx - 0.5], [0.0, sy, -y0 * sy - 0.5], [0.0, 0.0, 1.0]])


def flip(size: int, horizontal: bool, vertical: bool) -> np.ndarray:
    """Flip the k×k output left-right and/or top-bottom (mirror = flip across the y axis)."""
    fx, fy = (-1.0 if horizontal else 1.0), (-1.0 if vertical else 1.0)
    return np.array([[fx, 0.0, (size - 1) * (1 - fx) / 2], [0.0, fy, (size - 1) * (1 - fy) / 2], [0.0, 0.0, 1.0]])


def random_affine(size: int, *, shift_x: float, shift_y: float, zoom: float, shear: float) -> np.ndarray:
    """Shear (degrees, x += tan(shear)·y), scale the content by `zoom`, then shift it by a
    fraction of the side; all about the output centre."""
    c = (size - 1) / 2
    t = math.tan(math.radians(shear))
    return np.array(
        [
            [zoom, zoom * t, c + shift_x * size - c * zoom * (1 + t)],
            [0.0, zoom, c + shift_y * size - c * zoom],
            [0.0, 0.0, 1.0],
        ]
    )


def variant_matrix(variant: dict, points: np.ndarray, *, size: int, pad_square: bool) -> np.ndarray:
    """Source -> output for one variant; `points` outline the frame (content or whole image)."""
    rot = rotation(variant["rotation"])
    box = bounding_box(transform(rot, points))
    if pad_square:
        box = square(box)
    m = flip(size, bool(variant["mirror"]), False) @ box_to_output(box, size) @ rot
    if variant["copy"]:
        rnd = random_affine(
            size, shift_x=variant["shift_x"], shift_y=variant["shift_y"], zoom=variant["zoom"], shear=variant["shear"]
        )
        m = flip(size, variant["flip_h"], variant["flip_v"]) @ rnd @ m
    return m


# ---------------------------------------------------------------- pixels


@dataclass(frozen=True)
class _Prepared:
    """A decoded source made ready for warping: done once per source, shared by its variants."""

    pixels: np.ndarray  # anti-aliased RGB + coverage (alpha) or RGB (natural)
    offset: np.ndarray  # 3×3: `pixels` coordinates -> source coordinates
    points: np.ndarray  # the frame outline in source coordinates, 2×N


def antialias_sigma(points: np.ndarray, size: int, pad_square: bool) -> float:
    """Gaussian sigma for the deterministic copy's downscale factor f: (f - 1) / 2, 0 if upscaling."""
    x0, y0, x1, y1 = square(bounding_box(points)) if pad_square else bounding_box(points)
    f = max(x1 - x0, y1 - y0) / size
    return max(0.0, (f - 1) / 2)


def gaussian(img: np.ndarray, sigma: float, border: int) -> np.ndarray:
    """Gaussian blur truncated at 3 sigma, as one separable filter (several times faster than
    cv2.GaussianBlur's bit-exact 8-bit path)."""
    kernel = cv2.getGaussianKernel(2 * math.ceil(3 * sigma) + 1, sigma)
    return cv2.sepFilter2D(img, -1, kernel, kernel, borderType=border)


def prefilter_alpha(rgb: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """RGB + mask ready to warp: anti-aliased by `sigma`, with straight cell colours carried
    past the cell edge, so interpolating across it mixes cell colours, not black."""
    # Over black, RGB is premultiplied by the mask: blur both, then divide the mask out
    # (normalised convolution). At least one pixel of spread, for the bilinear sample.
    blurred = gaussian(cv2.merge([rgb, mask]), max(sigma, 1.0), cv2.BORDER_CONSTANT)
    weight = cv2.extractChannel(blurred, 3)
    colour = cv2.divide(cv2.cvtColor(blurred, cv2.COLOR_RGBA2RGB), cv2.merge([weight, weight, weight]), scale=255)
    if sigma >= 1:
        return cv2.merge([colour, weight])
    cv2.copyTo(rgb, mask, colour)  # barely downscaled: keep the cell sharp, use only the spread
    pixels = cv2.merge([colour, mask])
    return gaussian(pixels, sigma, cv2.BORDER_CONSTANT) if sigma > 0 else pixels


def prepare(rgb: np.ndarray, *, background: str, size: int, crop_to_content: bool, pad_square: bool) -> _Prepared:
    mask = foreground(rgb)
    content = content_corners(mask) if crop_to_content else None
    # A blank image has no content box: fall back to the whole frame (all transparent).
    points = content if content is not None else image_corners(rgb.shape)
    sigma = antialias_sigma(points, size, pad_square)
    if background == "natural":
        # Beyond the image is reflected, like the natural padding.
        return _Prepared(gaussian(rgb, sigma, cv2.BORDER_REFLECT) if sigma > 0 else rgb, np.eye(3), points)
    offset = np.eye(3)
    if cv2.countNonZero(mask):
        # Everything outside the content is transparent, as is the warp's border, so only
        # the content plus the reach of the blur and the interpolation is kept.
        x, y, w, h = cv2.boundingRect(mask)
        reach = math.ceil(3 * max(sigma, 1.0)) + 2
        x0, y0 = max(0, x - reach), max(0, y - reach)
        window = np.s_[y0 : y + h + reach, x0 : x + w + reach]
        offset = np.array([[1.0, 0.0, x0], [0.0, 1.0, y0], [0.0, 0.0, 1.0]])
        rgb, mask = rgb[window], mask[window]
    return _Prepared(prefilter_alpha(rgb, mask, sigma), offset, points)


def binarize_alpha(rgba: np.ndarray) -> np.ndarray:
    """Alpha 255 where the warped coverage is at least 50 %; every other pixel (0, 0, 0, 0)."""
    opaque = cv2.compare(cv2.extractChannel(rgba, 3), 128, cv2.CMP_GE)
    out = cv2.bitwise_and(rgba, rgba, mask=opaque)
    cv2.insertChannel(opaque, out, 3)
    return out


def median_sharpen(img: np.ndarray) -> np.ndarray:
    """Seed 002: median 3×3, then img - 0.9 · Laplacian (3×3), on the RGB channels, clipped."""
    med = cv2.medianBlur(np.ascontiguousarray(img[..., :3]), 3)
    sharp = med - 0.9 * cv2.Laplacian(med, cv2.CV_32F, ksize=1)
    out = img.copy()
    out[..., :3] = np.clip(np.rint(sharp), 0, 255)
    if img.shape[2] == 4:
        out[img[..., 3] == 0] = 0  # keep the background exactly transparent black
    return out


@dataclass(frozen=True)
class Source:
    """A prepared source and how to render it: what `render_many` needs, nothing decoded twice."""

    prepared: _Prepared
    alpha: bool
    size: int
    pad_square: bool
    filter: str
    fill: str

    @property
    def nbytes(self) -> int:
        """Memory held by the prepared pixels (what a block of sources costs, see shards.py)."""
        return self.prepared.pixels.nbytes


def prepare_source(
    rgb: np.ndarray,
    *,
    background: str = "alpha",
    size: int = 48,
    crop_to_content: bool = True,
    pad_square: bool = True,
    filter: str = "none",
    fill: str = "nearest",
) -> Source:
    """Check the rendering settings and prepare one decoded RGB source for `render_many`
    (done once per source, shared by all its variants); keyword arguments as `render_all`."""
    if background not in BACKGROUNDS:
        raise ValueError(f"preprocess.background must be one of {BACKGROUNDS} (got {background!r})")
    if filter not in FILTERS:
        raise ValueError(f"preprocess.filter must be one of {FILTERS} (got {filter!r})")
    if fill not in FILLS:
        raise ValueError(f"augment.fill must be one of {tuple(FILLS)} (got {fill!r})")
    src = prepare(rgb, background=background, size=size, crop_to_content=crop_to_content, pad_square=pad_square)
    return Source(src, background == "alpha", size, pad_square, filter, fill)


def render_many(items: Sequence[tuple[Source, dict]]) -> np.ndarray:
    """Render (prepared source, variant) pairs, sources in any mix and order (all prepared
    with the same settings): n×k×k×C uint8, each exactly what `render_all` gives that variant."""
    if not items:
        return np.empty((0, 0, 0, 0), np.uint8)
    first = items[0][0]
    size, alpha = first.size, first.alpha
    out = np.empty((len(items), size, size, 4 if alpha else 3), np.uint8)
    for (src, v), dst in zip(items, out):
        p = src.prepared
        m = variant_matrix(v, p.points, size=size, pad_square=src.pad_square) @ p.offset
        border = cv2.BORDER_CONSTANT if alpha else FILLS[src.fill] if v["copy"] else cv2.BORDER_REFLECT
        cv2.warpAffine(p.pixels, m[:2], (size, size), dst=dst, flags=cv2.INTER_LINEAR, borderMode=border)
    if alpha:  # all outputs stacked as one tall image: one call instead of one per output
        out = binarize_alpha(out.reshape(-1, size, 4)).reshape(out.shape)
    if first.filter == "median_sharpen":
        out = np.stack([median_sharpen(img) for img in out])
    return out


def render_all(rgb: np.ndarray, variant_list: list[dict], **params) -> np.ndarray:
    """Render every variant of one decoded RGB source: n×k×k×4 (alpha) or n×k×k×3 (natural) uint8.

    Keywords: background ("alpha"), size (48), crop_to_content (True), pad_square (True),
    filter ("none"), fill ("nearest"). `fill` applies to random copies of natural images
    only (alpha's outside is transparent, a natural deterministic copy is padded by reflection).
    """
    src = prepare_source(rgb, **params)
    out = render_many([(src, v) for v in variant_list])
    return out if len(out) else np.empty((0, src.size, src.size, 4 if src.alpha else 3), np.uint8)


def render(rgb: np.ndarray, variant: dict, **params) -> np.ndarray:
    """One variant of one source (k×k×C); keyword arguments as `render_all`."""
    return render_all(rgb, [variant], **params)[0]
