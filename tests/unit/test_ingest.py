"""Ingest: decode once, convert deliberately, hash, group duplicates, quarantine every kind of bad input."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import hemaflow.data.ingest as ingest
from hemaflow.data.adapters import list_candidates
from hemaflow.data.images import REASONS
from hemaflow.data.ingest import SOURCE_COLUMNS, build_sources, summary
from hemaflow.data.manifest import ManifestError, read_manifest, write_manifest

RNG = np.random.default_rng(0)
COLOUR = RNG.integers(1, 255, (6, 5, 3), dtype=np.uint8)


def png_bytes(im: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def messy(tmp_path):
    """A root with one file of every kind, and a file list naming them (plus bad entries)."""
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    palette = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * 759)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)
    rgba[0, 1] = (200, 100, 50, 0)
    files = {
        "rgb.png": png_bytes(Image.fromarray(COLOUR)),
        "rgb_copy.bmp": png_bytes(Image.fromarray(COLOUR), "BMP"),  # same pixels, other format
        "grey.png": png_bytes(Image.fromarray(grey, "L")),
        "palette.png": png_bytes(palette),
        "rgba.png": png_bytes(Image.fromarray(rgba, "RGBA")),
        "grey16.png": png_bytes(Image.fromarray(np.array([[0, 32768, 65535]], np.uint16))),
        "big.png": png_bytes(Image.fromarray(np.zeros((40, 40, 3), np.uint8))),
        "empty.png": b"",
        "truncated.png": png_bytes(Image.fromarray(RNG.integers(0, 255, (20, 20, 3), dtype=np.uint8)))[:300],
        "text.png": b"this is not an image\n" * 3,
        "anim.gif": png_bytes(Image.fromarray(COLOUR), "GIF"),
        "nolabel.png": png_bytes(Image.fromarray(grey, "L")),
        "blank.png": png_bytes(Image.fromarray(np.full((6, 5, 3), 90, np.uint8))),
    }
    for name, data in files.items():
        (root / "img" / name).write_bytes(data)
    (tmp_path / "outside.png").write_bytes(files["rgb.png"])
    entries = [(f"img/{n}", "cell") for n in files if n != "nolabel.png"] + [
        ("img/absent.png", "cell"),
        ("../outside.png", "cell"),
        ("img/nolabel.png", ""),
        ("img/rgb.png", "cell"),  # listed twice
        ("img", "cell"),  # a folder, not a file
    ]
    filelist = tmp_path / "list.csv"
    pd.DataFrame(entries, columns=["path", "label"]).to_csv(filelist, index=False)
    candidates, _ = list_candidates("filelist", root, filelist=filelist, dataset="messy")
    return root, candidates, {"grey": grey}


def sources_of(messy, **kw):
    root, candidates, _ = messy
    return build_sources(candidates, root, dataset="messy", max_pixels=kw.pop("max_pixels", 1000), **kw)


def test_every_quarantine_reason_and_nothing_dropped(messy):
    df = sources_of(messy)
    assert list(df.columns) == SOURCE_COLUMNS
    assert len(df) == len(messy[1])
    reasons = df.groupby("rel_path")["reason"].agg(lambda r: sorted(r.fillna("")))
    assert reasons["img/empty.png"] == ["empty"]
    assert reasons["img/truncated.png"] == ["truncated"]
    assert reasons["img/text.png"] == ["not_an_image"]
    assert reasons["img/anim.gif"] == ["unsupported_format"]
    assert reasons["img/big.png"] == ["too_large"]  # 1600 pixels > max_pixels 1000
    assert reasons["img/absent.png"] == ["missing"]
    assert reasons["../outside.png"] == ["outside_root"]
    assert reasons["img/nolabel.png"] == ["bad_label"]
    assert reasons["img/rgb.png"] == ["", "duplicate_name"]
    assert reasons["img/blank.png"] == ["blank"]
    assert reasons["img"] == ["unreadable"]
    untested = {"bad_filename", "unknown_label", "unsafe_label", "label_conflict", "too_small"}  # elsewhere
    assert set(df["reason"].dropna()) == set(REASONS) - untested
    bad = df[df.status == "quarantined"]
    assert bad.reason.notna().all() and df.loc[df.status == "ok", "reason"].isna().all()
    undecodable = bad[bad.reason != "blank"]  # a blank image was decoded: its size and hash are known
    assert (undecodable[["width", "height"]] == 0).all().all() and undecodable.content_hash.isna().all()
    assert bad.loc[bad.reason == "blank", ["width", "height"]].values.tolist() == [[5, 6]]
    assert (df.dataset == "messy").all()


def test_conversions_produce_correct_rgb(messy, monkeypatch):
    decoded = {}
    real = ingest.load_rgb

    def spy(path, max_pixels):
        rgb, mode, fmt = real(path, max_pixels)
        decoded[path.name] = rgb
        return rgb, mode, fmt

    monkeypatch.setattr(ingest, "load_rgb", spy)
    df = sources_of(messy).set_index("rel_path")
    grey = messy[2]["grey"]
    assert (decoded["grey.png"] == grey[..., None]).all()
    assert decoded["palette.png"].tolist() == [[[10, 20, 30], [200, 100, 50]], [[0, 255, 0], [200, 100, 50]]]
    assert decoded["rgba.png"][0].tolist() == [[200, 100, 50], [255, 255, 255]]  # alpha 0 over white
    assert decoded["grey16.png"][0, :, 0].tolist() == [0, 128, 255]  # scaled, not clipped
    assert df.loc["img/grey16.png", "mode"].startswith("I")
    ok = df[df.status == "ok"].groupby(level=0).first()
    assert ok.loc[["img/grey.png", "img/palette.png", "img/rgba.png"], "mode"].tolist() == ["L", "P", "RGBA"]
    assert ok.loc["img/rgb_copy.bmp", "format"] == "BMP"
    assert ok.loc["img/grey.png", ["width", "height"]].tolist() == [6, 5]


def test_each_candidate_decoded_exactly_once(messy, monkeypatch):
    calls = []
    real = ingest.load_rgb
    monkeypatch.setattr(ingest, "load_rgb", lambda path, max_pixels: calls.append(path) or real(path, max_pixels))
    sources_of(messy, threads=2)
    root, candidates, _ = messy
    expected = sorted(root / p for p in candidates.loc[candidates.reason.isna(), "rel_path"])
    assert sorted(calls) == expected


def test_duplicates_are_grouped_not_dropped(messy):
    df = sources_of(messy)
    first = df[(df.rel_path == "img/rgb.png") & (df.status == "ok")].iloc[0]
    copy = df[df.rel_path == "img/rgb_copy.bmp"].iloc[0]
    assert copy.status == "ok" and copy.duplicate_of == first.image_id
    assert copy.content_hash == first.content_hash
    assert pd.isna(first.duplicate_of)
    assert df.duplicate_of.notna().sum() == 1
    info = summary(df, ["cell"])
    assert info["duplicate_groups"] == 1 and info["duplicate_files"] == 1
    assert info["files"] == len(df)
    assert sum(info["status"].values()) == len(df)
    assert sum(info["reasons"].values()) == info["status"]["quarantined"]


def test_content_hash_depends_on_shape():
    flat = np.zeros((2, 6, 3), np.uint8)
    assert ingest.content_hash(flat) != ingest.content_hash(flat.reshape(6, 2, 3))


def test_threads_do_not_change_the_result(messy):
    pd.testing.assert_frame_equal(sources_of(messy, threads=1), sources_of(messy, threads=3))


def test_strict_mode_lists_every_bad_file(messy):
    with pytest.raises(ValueError) as err:
        sources_of(messy, strict=True)
    message = str(err.value)
    assert "data.strict" in message
    for name, reason in [("empty.png", "empty"), ("text.png", "not_an_image"), ("anim.gif", "unsupported_format"),
                         ("../outside.png", "outside_root"), ("absent.png", "missing"), ("big.png", "too_large")]:  # fmt: skip
        assert f"{name}: {reason}" in message
    assert message.count("\n  ") == (sources_of(messy).status == "quarantined").sum()


def test_sources_manifest_round_trip_and_type_errors(messy, tmp_path):
    df = sources_of(messy)
    path = tmp_path / "m" / "sources.parquet"
    write_manifest(df, path, "sources")
    back = read_manifest(path, "sources")
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    assert back.dtypes["label_index"] == np.int16 and back.dtypes["holdout"] == bool

    with pytest.raises(ManifestError, match=r"sources\.parquet.*'label_index'"):
        write_manifest(df.assign(label_index=df.label_index + 0.5), path, "sources")
    with pytest.raises(ManifestError, match=r"'fold'.*null"):
        write_manifest(df.assign(fold=pd.array([None] * len(df), dtype="Int8")), path, "sources")
    with pytest.raises(ManifestError, match=r"missing \['status'\]"):
        write_manifest(df.drop(columns="status"), path, "sources")
    with pytest.raises(ManifestError, match=r"unexpected \['extra'\]"):
        write_manifest(df.assign(extra=1), path, "sources")
    with pytest.raises(ManifestError, match=r"'label'"):
        write_manifest(df.assign(label=1), path, "sources")
    assert read_manifest(path, "sources").shape == df.shape  # failed writes left the file alone

    other = tmp_path / "splits.parquet"
    write_manifest(pd.DataFrame({"image_id": ["a"], "split": ["train"], "group": ["g"]}), other, "splits")
    with pytest.raises(ManifestError, match=r"splits\.parquet.*lacks column 'dataset'"):
        read_manifest(other, "sources")
