"""Preprocessing: each affine step on its own, the fused warp against a step-by-step
reference, alpha from the black background, median+sharpen, seeded random variants."""

import cv2
import numpy as np
import pytest

from hemaflow.augment import preprocess as P


def blob(h=120, w=140, seed=0):
    """An asymmetric 'cell' on exact black: a smooth-coloured ellipse plus a smaller disc."""
    img = np.zeros((h, w, 3), np.uint8)
    cv2.ellipse(img, (w // 2 - 10, h // 2 + 5), (40, 22), 25, 0, 360, (255, 255, 255), -1)
    cv2.circle(img, (w // 2 + 30, h // 2 - 25), 12, (255, 255, 255), -1)
    yy, xx = np.indices((h, w))
    colour = np.stack([90 + xx, 60 + yy // 2, 200 - yy // 2], -1).clip(1, 255).astype(np.uint8)
    return np.where(img > 0, colour, 0).astype(np.uint8)


def one(rotations=1, index=0, **kw):
    return P.variants("img", rotations=rotations, **kw)[index]


def opaque_bbox(out):
    ys, xs = np.nonzero(out[..., 3])
    return xs.min(), ys.min(), xs.max(), ys.max()


# ---------------------------------------------------------------- matrices


def test_rotation_is_counter_clockwise_on_screen():
    # y points down: a point to the right of the centre goes up (negative y) under +90 degrees.
    np.testing.assert_allclose(P.transform(P.rotation(90), np.array([[1.0], [0.0]])), [[0.0], [-1.0]], atol=1e-12)
    np.testing.assert_allclose(P.rotation(30)[:2], cv2.getRotationMatrix2D((0, 0), 30, 1.0), atol=1e-12)


def test_box_to_output_maps_box_edges_to_pixel_edges():
    m = P.box_to_output((10.0, 20.0, 50.0, 40.0), 8)
    np.testing.assert_allclose(P.transform(m, np.array([[10.0, 50.0], [20.0, 40.0]])), [[-0.5, 7.5], [-0.5, 7.5]])


def test_square_keeps_centre_and_takes_longer_side():
    assert P.square((0.0, 10.0, 40.0, 20.0)) == (0.0, -5.0, 40.0, 35.0)


def test_flip_is_an_involution_and_maps_edges():
    f = P.flip(10, True, True)
    np.testing.assert_allclose(f @ f, np.eye(3))
    np.testing.assert_allclose(P.transform(f, np.array([[0.0], [2.0]])), [[9.0], [7.0]])


def test_random_affine_keeps_centre_when_unshifted():
    m = P.random_affine(33, shift_x=0, shift_y=0, zoom=1.3, shear=12)
    np.testing.assert_allclose(P.transform(m, np.array([[16.0], [16.0]])), [[16.0], [16.0]])
    shifted = P.random_affine(33, shift_x=0.1, shift_y=-0.2, zoom=1, shear=0)
    np.testing.assert_allclose(P.transform(shifted, np.array([[16.0], [16.0]])), [[16.0 + 3.3], [16.0 - 6.6]])


def rotate_expanded(img, angle):
    """Reference rotation: the whole image with its mask, about its centre, on a canvas that
    holds every rotation."""
    rgba = cv2.merge([img, P.foreground(img)])
    h, w = img.shape[:2]
    side = int(np.ceil(np.hypot(h, w))) + 2
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
    m[:, 2] += (side - w) / 2, (side - h) / 2
    return cv2.warpAffine(rgba, m, (side, side), flags=cv2.INTER_LINEAR)


@pytest.mark.parametrize("angle", [0, 35, 90, 200])
def test_content_box_of_rotated_hull_matches_rotated_image(angle):
    img = blob()
    x0, y0, x1, y1 = P.bounding_box(P.transform(P.rotation(angle), P.content_corners(P.foreground(img))))
    ys, xs = np.nonzero(rotate_expanded(img, angle)[..., 3] >= 128)
    assert abs((xs.max() - xs.min() + 1) - (x1 - x0)) <= 1.5
    assert abs((ys.max() - ys.min() + 1) - (y1 - y0)) <= 1.5


# ---------------------------------------------------------------- alpha, shapes, crop


def test_alpha_is_exactly_the_non_black_pixels_when_the_warp_is_identity():
    rng = np.random.default_rng(1)
    img = np.zeros((50, 60, 3), np.uint8)
    patch = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    patch[3, 4] = (1, 0, 0)  # near-black is content
    patch[10, 10] = (0, 0, 0)  # an exactly black hole is background
    patch[0, :] = patch[-1, :] = patch[:, 0] = patch[:, -1] = 255  # square content box
    img[12:32, 25:45] = patch
    out = P.render(img, one(), background="alpha", size=20)
    expected_alpha = np.where(patch.any(axis=2), 255, 0)
    np.testing.assert_array_equal(out[..., 3], expected_alpha)
    np.testing.assert_array_equal(out[..., :3], patch)


def test_alpha_is_binary_and_background_is_transparent_black_after_resampling():
    out = P.render(blob(), one(rotations=12, index=1), background="alpha", size=32)
    assert set(np.unique(out[..., 3])) == {0, 255}
    assert not out[out[..., 3] == 0].any()
    assert out[16, 16, 3] == 255 and out[0, 0, 3] == 0


@pytest.mark.parametrize("size", [24, 200])  # downscaled (anti-aliased) and upscaled
def test_cell_edges_keep_the_cell_colour(size):
    img = np.zeros((120, 120, 3), np.uint8)
    cv2.ellipse(img, (60, 60), (45, 25), 0, 0, 360, (180, 90, 200), -1)
    out = P.render(img, one(rotations=8, index=1), size=size)
    opaque = out[..., 3] == 255
    # Interpolating across the edge must not mix in the black background (a dark fringe).
    assert np.abs(out[opaque][:, :3].astype(int) - (180, 90, 200)).max() <= 2


@pytest.mark.parametrize("background,channels", [("alpha", 4), ("natural", 3)])
@pytest.mark.parametrize("size", [16, 48, 101])
def test_output_shape(background, channels, size):
    out = P.render(blob(90, 130), one(rotations=7, index=2), background=background, size=size)
    assert out.shape == (size, size, channels) and out.dtype == np.uint8


def test_crop_touches_one_side_pair_and_pad_centres_the_other():
    img = np.zeros((100, 100, 3), np.uint8)
    img[60:76, 5:35] = 180  # 30 wide, 16 tall, far from the centre
    out = P.render(img, one(), size=30)
    x0, y0, x1, y1 = opaque_bbox(out)
    assert (x0, x1) == (0, 29)
    assert (y0, 29 - y1) == (7, 7)


def test_rotated_content_is_cropped_and_centred():
    out = P.render(blob(), one(rotations=12, index=1), size=40)
    x0, y0, x1, y1 = opaque_bbox(out)
    touches_x, touches_y = (x0 <= 1 and x1 >= 38), (y0 <= 1 and y1 >= 38)
    assert touches_x or touches_y
    lo, hi = (y0, 39 - y1) if touches_x else (x0, 39 - x1)
    assert abs(lo - hi) <= 1


def test_natural_identity_and_reflect_padding_are_exact():
    rng = np.random.default_rng(2)
    square = rng.integers(1, 256, (32, 32, 3), dtype=np.uint8)
    kw = dict(background="natural", crop_to_content=False, size=32)
    np.testing.assert_array_equal(P.render(square, one(), **kw), square)
    wide = rng.integers(1, 256, (20, 32, 3), dtype=np.uint8)
    out = P.render(wide, one(), **kw)
    np.testing.assert_array_equal(out[6:26], wide)
    np.testing.assert_array_equal(out[:6], wide[5::-1])  # half-sample reflection: dcba|abcd


def test_blank_image_renders_fully_transparent():
    out = P.render(np.zeros((40, 40, 3), np.uint8), one(rotations=4, index=1), size=16)
    assert out.shape == (16, 16, 4) and not out.any()


# ---------------------------------------------------------------- geometry against references


def test_rotation_by_90_equals_rot90():
    img = blob()
    v = P.variants("img", rotations=4)
    plain, turned = (P.render(img, v[i], size=64) for i in (0, 1))
    expected = np.rot90(plain)
    assert np.mean(turned[..., 3] != expected[..., 3]) < 0.01
    both = (turned[..., 3] > 0) & (expected[..., 3] > 0)
    assert np.abs(turned[both][:, :3].astype(int) - expected[both][:, :3]).mean() < 1.0


def reference(img, angle, size):
    """Step by step, each on a full image: rotate on an expanded canvas, crop to the content,
    pad to a square, resize (alpha rides along as in `render`)."""
    rot = rotate_expanded(img, angle)
    ys, xs = np.nonzero(rot[..., 3] >= 128)
    crop = rot[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    ch, cw = crop.shape[:2]
    n = max(ch, cw)
    top, left = (n - ch) // 2, (n - cw) // 2
    padded = np.pad(crop, ((top, n - ch - top), (left, n - cw - left), (0, 0)))
    interp = cv2.INTER_AREA if n > size else cv2.INTER_LINEAR
    small = cv2.resize(padded, (size, size), interpolation=interp).astype(float)
    # Colours over black were premultiplied by coverage: divide it out, keep >= 50 % coverage.
    a = small[..., 3:]
    straight = np.where(a >= 128, np.minimum(small[..., :3] * 255 / np.maximum(a, 1) + 0.5, 255), 0)
    return np.dstack([straight, np.where(a >= 128, 255, 0)]).astype(np.uint8)


@pytest.mark.parametrize("size", [128, 40])  # upscaling and downscaling
def test_fused_warp_matches_step_by_step_reference(size):
    img = blob()
    v = P.variants("img", rotations=12)[1]
    fused = P.render(img, v, size=size)
    ref = reference(img, v["rotation"], size)
    a, b = fused[..., 3] > 0, ref[..., 3] > 0
    assert (a & b).sum() / (a | b).sum() > 0.94
    # Two interpolations blur more than one, so compare colours away from the edge.
    inner = cv2.erode((a & b).astype(np.uint8), np.ones((3, 3))) > 0
    assert np.abs(fused[..., :3][inner].astype(int) - ref[..., :3][inner]).mean() < 2.0


def test_mirror_is_fliplr_of_the_unmirrored_output():
    img = blob()
    vs = P.variants("img", rotations=3, mirror=True)
    for plain, mirrored in zip(vs[0::2], vs[1::2]):
        assert not plain["mirror"] and mirrored["mirror"] and plain["rotation"] == mirrored["rotation"]
        a, b = P.render(img, plain, size=48), P.render(img, mirrored, size=48)
        assert np.mean(np.fliplr(a) != b) < 0.01


# ---------------------------------------------------------------- filter


def test_median_sharpen_on_a_step_edge():
    img = np.full((6, 6, 3), 100, np.uint8)
    img[:, 3:] = 200
    out = P.median_sharpen(img)
    # Laplacian at the edge is +-100: 100 - 90 = 10 on the dark side, 200 + 90 clipped to 255.
    np.testing.assert_array_equal(out[:, 2], 10)
    np.testing.assert_array_equal(out[:, 3], 255)
    np.testing.assert_array_equal(out[:, 0], 100)


def test_median_sharpen_matches_a_single_cv2_kernel():
    img = np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    med = cv2.medianBlur(img, 3)
    kernel = np.array([[0, -0.9, 0], [-0.9, 4.6, -0.9], [0, -0.9, 0]], np.float32)  # delta - 0.9 * Laplacian
    expected = np.clip(np.rint(cv2.filter2D(med, cv2.CV_32F, kernel)), 0, 255)
    assert np.abs(P.median_sharpen(img).astype(int) - expected).max() <= 1


def test_filter_applies_to_the_rendered_output_and_keeps_background_transparent():
    img, v = blob(), one()
    plain = P.render(img, v, size=40)
    filtered = P.render(img, v, size=40, filter="median_sharpen")
    np.testing.assert_array_equal(filtered[..., 3], plain[..., 3])
    assert not filtered[plain[..., 3] == 0].any()
    np.testing.assert_array_equal(filtered, P.median_sharpen(plain))
    assert not np.array_equal(filtered, plain)


# ---------------------------------------------------------------- variants


def test_variant_grid_ids_and_angles():
    vs = P.variants("abc", rotations=36, mirror=True, random_copies=2, seed=0)
    assert len(vs) == 36 * 2 * 3
    assert len({v["aug_id"] for v in vs}) == len(vs)
    assert vs[0]["aug_id"] == "abc-r000-m0-c0" and vs[-1]["aug_id"] == "abc-r035-m1-c2"
    assert sorted({v["rotation"] for v in vs}) == [10.0 * i for i in range(36)]
    deterministic = [v for v in vs if v["copy"] == 0]
    assert all(v[k] == val for v in deterministic for k, val in P.IDENTITY.items())


RANDOM = dict(rotations=2, mirror=True, random_copies=4, flip=True, shift=0.2, zoom=0.15, shear=12.0)


def test_random_variants_are_seeded_and_in_range():
    a = P.variants("abc", **RANDOM, seed=7)
    assert a == P.variants("abc", **RANDOM, seed=7)
    assert a != P.variants("abc", **RANDOM, seed=8)
    randoms = [v for v in a if v["copy"]]
    params = {(v["shift_x"], v["shift_y"], v["zoom"], v["shear"]) for v in randoms}
    assert len(params) == len(randoms)  # every copy (and rotation, mirror) draws its own
    assert all(abs(v["shift_x"]) <= 0.2 and abs(v["shift_y"]) <= 0.2 for v in randoms)
    assert all(0.85 <= v["zoom"] <= 1.15 and abs(v["shear"]) <= 12 for v in randoms)
    assert {v["flip_h"] for v in randoms} == {True, False}


def test_random_draws_depend_only_on_image_and_variant():
    few = P.variants("abc", **{**RANDOM, "random_copies": 1}, seed=7)
    many = {v["aug_id"]: v for v in P.variants("abc", **RANDOM, seed=7)}
    assert all(many[v["aug_id"]] == v for v in few)
    no_flip = P.variants("abc", **{**RANDOM, "flip": False}, seed=7)
    assert not any(v["flip_h"] or v["flip_v"] for v in no_flip)
    assert [v["zoom"] for v in no_flip] == [v["zoom"] for v in many.values()]


def test_rotation_range_turns_only_random_copies_and_leaves_the_other_draws():
    fixed = P.variants("abc", **RANDOM, seed=7)
    turned = P.variants("abc", **RANDOM, rotation_range=180.0, seed=7)
    keys = ("aug_id", "flip_h", "flip_v", "shift_x", "shift_y", "zoom", "shear")
    assert [{k: v[k] for k in keys} for v in fixed] == [{k: v[k] for k in keys} for v in turned]
    for a, b in zip(fixed, turned):
        if a["copy"] == 0:
            assert b["rotation"] == a["rotation"]  # the deterministic copy keeps its fixed angle
        else:
            offset = (b["rotation"] - a["rotation"] + 180.0) % 360.0 - 180.0
            assert abs(offset) <= 180.0 and offset != 0.0
    offsets = [(b["rotation"] - a["rotation"]) % 360.0 for a, b in zip(fixed, turned) if a["copy"]]
    assert min(offsets) < 90 and max(offsets) > 270  # both directions, not one fixed step
    small = P.variants("abc", **RANDOM, rotation_range=5.0, seed=7)
    assert all(min(d, 360 - d) <= 5.0 for a, b in zip(fixed, small) if a["copy"]
               for d in [(b["rotation"] - a["rotation"]) % 360.0])


def test_extra_copies_follow_the_regular_ones_on_the_unturned_image():
    base = P.variants("abc", **RANDOM, seed=7)
    more = P.variants("abc", **RANDOM, extra_copies=3, seed=7)
    assert more[: len(base)] == base and len(more) == len(base) + 3
    extra = more[len(base):]
    assert [v["aug_id"] for v in extra] == [f"abc-r000-m0-c{c}" for c in (5, 6, 7)]
    assert len({(v["shift_x"], v["zoom"]) for v in extra}) == 3  # each its own random draw


@pytest.mark.parametrize("background", ["alpha", "natural"])
@pytest.mark.parametrize("fill", ["nearest", "reflect", "constant"])
def test_random_render_is_deterministic_and_order_independent(background, fill):
    img = blob()
    vs = P.variants("abc", **RANDOM, seed=3)
    kw = dict(background=background, size=32, fill=fill)
    together = P.render_all(img, vs, **kw)
    alone = [P.render(img, v, **kw) for v in reversed(vs)][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))
    copies = [o for o, v in zip(together, vs) if v["rotation"] == 0 and not v["mirror"]]
    assert len({o.tobytes() for o in copies}) == len(copies)


def test_bad_parameters_name_their_key():
    with pytest.raises(ValueError, match="augment.rotations"):
        P.variants("abc", rotations=0)
    with pytest.raises(ValueError, match="preprocess.background"):
        P.render(blob(), one(), background="transparent")
    with pytest.raises(ValueError, match="augment.fill"):
        P.render(blob(), one(), fill="wrap")
