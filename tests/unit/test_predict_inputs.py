"""hemaflow predict on hostile inputs: options checked first, every file a row, cell sheets by path, no pooled decision."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import errno  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from test_predict import project  # noqa: E402, F401  (the tiny binary model, shared)

from hemaflow import cli  # noqa: E402
from hemaflow.files import write_atomic  # noqa: E402
from hemaflow.predict import inputs as I  # noqa: E402
from hemaflow.predict import model as M  # noqa: E402
from hemaflow.predict import run as P  # noqa: E402
from hemaflow.data.images import implausible  # noqa: E402

QUIET = dict(say=lambda _: None)


def _table(out: Path) -> pd.DataFrame:
    table = pd.read_parquet(out / "predictions.parquet")
    return table.assign(name=table["file"].map(lambda f: Path(f).name)).set_index("name")


def test_cell_sheet_rows_match_by_relative_path_and_an_ambiguous_base_name_is_an_error(project, tmp_path):
    root, files, _ = project
    folder = tmp_path / "cells"
    for sub, source in (("a", files[0]), ("b", files[1])):
        (folder / sub).mkdir(parents=True)
        shutil.copy(source, folder / sub / "x.bmp")
    sheet = tmp_path / "cells.csv"
    sheet.write_text("file,patient_id\na/x.bmp,P1\nb/x.bmp,P2\n")
    P.run([folder], model="tiny", project=root, out_dir=tmp_path / "out", cells=sheet, reports=False, **QUIET)
    table = pd.read_parquet(tmp_path / "out/predictions.parquet")
    by_file = dict(zip(table["file"], table["patient_id"]))
    assert by_file == {str(folder / "a/x.bmp"): "P1", str(folder / "b/x.bmp"): "P2"}
    # an absolute path names one file too
    sheet.write_text(f"file,patient_id\n{folder / 'b/x.bmp'},P9\n")
    assert I.cell_patients([folder / "a/x.bmp", folder / "b/x.bmp"], cells=sheet, roots=[folder]) == [None, "P9"]
    # a bare base name that two files have is refused, naming both
    sheet.write_text("file,patient_id\nx.bmp,P1\n")
    with pytest.raises(ValueError, match="line 2") as e:
        P.run([folder], model="tiny", project=root, out_dir=tmp_path / "out2", cells=sheet, reports=False, **QUIET)
    assert str(folder / "a/x.bmp") in str(e.value) and str(folder / "b/x.bmp") in str(e.value)
    # ... and accepted when only one file has it
    assert I.cell_patients([folder / "a/x.bmp"], cells=sheet, roots=[folder]) == ["P1"]


def test_cells_without_a_patient_id_get_no_pooled_decision_or_page(project, tmp_path):
    root, files, _ = project
    folder = tmp_path / "cells"
    folder.mkdir()
    for f in files[:2]:  # C-NMC names: the patient is in the name
        shutil.copy(f, folder / f.name)
    for i, f in enumerate(files[2:6]):  # renamed: no patient id, and from different patients
        shutil.copy(f, folder / f"cell{i}.bmp")
    summary = P.run([folder], model="tiny", project=root, out_dir=tmp_path / "out", **QUIET)
    patients = pd.read_csv(tmp_path / "out/patients.csv", dtype={"patient_id": str}).set_index("patient_id")
    row = patients.loc[P.UNASSIGNED]
    assert row["n_cells"] == 4 and "no patient id" in row["decision"] and np.isnan(row["frac_positive"])
    named = sorted({I.cell_patients([f])[0] for f in files[:2]})
    assert sorted(summary["reports"]) == named  # a page per real patient, none for the pool
    assert len(list((tmp_path / "out/reports").glob("*.html"))) == len(named)
    assert summary["patients"] == len(named)
    assert summary["unassigned"]["cells"] == 4 and "no patient id" in summary["unassigned"]["decision"]
    for pid in named:
        assert patients.loc[pid, "decision"] in ("positive for all", "negative for all")


def _latin1_sheet(path):
    path.write_bytes("patient_id,name,age,sex,sample_date\nP1,Ann,40,F,2026-01-01\nP2,Zo\xeb,41,F,2026-01-01\n".encode("latin-1"))


BAD_OPTIONS = {
    "patients missing": (dict(patients="nope.csv"), FileNotFoundError, r"--patients .*nope\.csv"),
    "patients not UTF-8": (dict(patients=_latin1_sheet), ValueError, r"line 3: not UTF-8.*CSV UTF-8"),
    "patients binary": (dict(patients=lambda p: p.write_bytes(b"PK\x03\x04\x00\x00binary")), ValueError, "binary file"),
    "patients column": (dict(patients="patient_id,name,age,sex\nP1,A,3,F\n"), ValueError, r"lacks column\(s\) \['sample_date'\]"),
    "patients duplicate": (dict(patients="patient_id,name,age,sex,sample_date\nP1,A,3,F,x\nP1,B,4,M,y\n"), ValueError,
                           "lines 2 and 3: patient_id 'P1'"),
    "cells duplicate": (dict(cells="file,patient_id\na.bmp,P1\nb.bmp,P2\na.bmp,P3\n"), ValueError, "lines 2 and 4: 'a.bmp'"),
    "cells columns": (dict(cells="name,patient\na.bmp,P1\n"), ValueError, "file,patient_id"),
    "regex syntax": (dict(patient_regex="(?P<patient>[0-9+"), ValueError, "does not compile"),
    "regex group": (dict(patient_regex=r"p\d+"), ValueError, "named group"),
    "out is a file": (dict(out_dir=lambda p: p.write_text("x")), ValueError, "--out .*existing file"),
    "out under a file": (dict(out_dir="file/sub", _touch="file"), ValueError, "--out .*is a file"),
    "batch size": (dict(batch_size=0), ValueError, "--batch-size"),
    "max pixels": (dict(max_pixels=0), ValueError, "--max-pixels"),
    "min side": (dict(min_side=-1), ValueError, "--min-side"),
    "input missing": (dict(inputs=["gone.png"]), FileNotFoundError, r"gone\.png"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_options_fail_before_the_model_or_any_image_is_read(case, project, tmp_path, monkeypatch):
    root, files, _ = project
    options, error, message = BAD_OPTIONS[case]
    options = dict(options)
    if "_touch" in options:
        (tmp_path / options.pop("_touch")).write_text("x")
    kwargs = {"out_dir": "out"}
    for key in ("patients", "cells", "out_dir"):
        value = options.pop(key, kwargs.get(key))
        if value is None:
            continue
        path = tmp_path / (f"{key}.csv" if callable(value) or "\n" in value else value)
        if callable(value):
            value(path)
        elif "\n" in value:
            path.write_text(value)
        kwargs[key] = path
    inputs = [tmp_path / p for p in options.pop("inputs", [])] or files[:2]

    def never(*_, **__):
        raise AssertionError("read before the options were checked")

    monkeypatch.setattr(P, "open_model", never)
    monkeypatch.setattr(P, "load_rgb", never)
    with pytest.raises(error, match=message):
        P.run(inputs, model="tiny", project=root, reports=False, **kwargs, **options, **QUIET)
    assert not (tmp_path / "out").exists()


def test_cli_exits_non_zero_on_a_missing_input_and_names_it(project, tmp_path, capsys):
    root, files, _ = project
    code = cli.main(["predict", str(files[0]), str(tmp_path / "gone.png"), "--model", "tiny", "--project", str(root),
                     "--out", str(tmp_path / "out"), "--no-reports"])
    assert code != 0 and "gone.png" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_file_under_a_folder_gets_a_row_with_its_reason(project, tmp_path):
    root, files, _ = project
    folder = tmp_path / "cells"
    folder.mkdir()
    shutil.copy(files[0], folder / "good.bmp")
    shutil.copy(files[1], folder / ".hidden.bmp")
    (folder / "loop.bmp").symlink_to("loop.bmp")
    (folder / "dangling.bmp").symlink_to("nowhere.bmp")
    os.mkfifo(folder / "fifo.bmp")
    with open(os.fsencode(folder) + b"/bad\xff.bmp", "wb") as f:  # not valid UTF-8
        f.write(files[2].read_bytes())
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(folder / "anim.gif")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_text("not an image either")
    summary = P.run([folder], model="tiny", project=root, out_dir=tmp_path / "out", reports=False, **QUIET)
    table = _table(tmp_path / "out")
    expected = {
        "good.bmp": ("ok", None),
        ".hidden.bmp": ("skipped", "hidden"),
        "loop.bmp": ("quarantined", "unreadable"),
        "dangling.bmp": ("quarantined", "missing"),
        "fifo.bmp": ("skipped", "not_a_regular_file"),
        "bad\\xff.bmp": ("quarantined", "bad_filename"),
        "anim.gif": ("quarantined", "unsupported_format"),
        "notes.txt": ("skipped", "not_an_image_extension"),
        "broken.png": ("quarantined", "not_an_image"),
    }
    got = {name: (r.status, r.reason if isinstance(r.reason, str) else None) for name, r in table.iterrows()}
    assert got == expected
    assert table.loc[table["status"] != "ok", "detail"].notna().all()
    assert summary["images"] == len(expected) == len(pd.read_csv(tmp_path / "out/predictions.csv"))
    assert summary["status"] == {"ok": 1, "quarantined": 5, "skipped": 3}


def test_implausible_flags_small_and_blank_images():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert implausible(noise, 16) is None
    assert implausible(noise[:15], 16) == "too_small"
    assert implausible(noise[:16], 16) is None  # the minimum itself is fine
    assert implausible(noise[:15], 8) is None
    flat = np.full((40, 40, 3), 128, np.uint8)
    assert implausible(flat, 16) == "blank"
    assert implausible(np.clip(flat + rng.integers(-1, 2, flat.shape), 0, 255).astype(np.uint8), 16) == "blank"
    assert implausible(np.clip(flat + rng.integers(-8, 9, flat.shape), 0, 255).astype(np.uint8), 16) is None


def test_implausible_cells_are_quarantined_and_not_counted(project, tmp_path):
    root, files, _ = project
    pid = I.cell_patients(files[:1])[0]
    folder = tmp_path / "cells"
    folder.mkdir()
    shutil.copy(files[0], folder / files[0].name)
    stem = files[0].name.rsplit("_", 2)[0]  # UID_<patient>_<image>: the same patient
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (12, 40, 3), dtype=np.uint8)).save(folder / f"{stem}_91_all.png")
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(folder / f"{stem}_92_all.png")
    P.run([folder], model="tiny", project=root, out_dir=tmp_path / "out", reports=False, **QUIET)
    table = _table(tmp_path / "out")
    assert table.loc[f"{stem}_91_all.png", ["status", "reason"]].tolist() == ["quarantined", "too_small"]
    assert table.loc[f"{stem}_92_all.png", ["status", "reason"]].tolist() == ["quarantined", "blank"]
    assert "12" in table.loc[f"{stem}_91_all.png", "detail"]
    patients = pd.read_csv(tmp_path / "out/patients.csv", dtype={"patient_id": str}).set_index("patient_id")
    assert patients.loc[pid, ["n_cells", "n_quarantined"]].tolist() == [1, 2]
    assert patients.loc[pid, "frac_positive"] in (0.0, 1.0)  # one cell: the two flagged ones are not in it
    # a smaller --min-side lets the small one through
    P.run([folder], model="tiny", project=root, out_dir=tmp_path / "out8", min_side=8, reports=False, **QUIET)
    assert _table(tmp_path / "out8").loc[f"{stem}_91_all.png", "status"] == "ok"


def test_a_full_disk_leaves_the_previous_outputs_not_truncated_ones(project, tmp_path, monkeypatch):
    root, files, _ = project
    out = tmp_path / "out"
    P.run(files[:2], model="tiny", project=root, out_dir=out, **QUIET)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space"):
        P.run(files[:3], model="tiny", project=root, out_dir=out, **QUIET)
    monkeypatch.undo()
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.suffix in (".html", ".json")} == \
           {k: v for k, v in before.items() if k.suffix in (".html", ".json")}
    assert set(after) == set(before)  # no temporary file left behind
    assert json.loads((out / "summary.json").read_text())["images"] == 2


def test_write_atomic_keeps_nothing_of_a_failed_write(tmp_path):
    target = tmp_path / "summary.json"

    def half(path):
        path.write_text('{"a":')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(target, half)
    assert list(tmp_path.iterdir()) == []
    write_atomic(target, lambda p: p.write_text("{}"))
    assert target.read_text() == "{}" and list(tmp_path.iterdir()) == [target]


def test_a_corrupt_model_file_is_named_not_a_keras_archive(project, tmp_path):
    root, _, _ = project
    model_dir = tmp_path / "broken"
    shutil.copytree(root / "results/models/tiny", model_dir)
    (model_dir / "model.keras").write_text("this is not a zip archive")
    with pytest.raises(ValueError, match="not a Keras archive") as e:
        M.open_model(str(model_dir), root)
    assert str(model_dir / "model.keras") in str(e.value) and "not found" not in str(e.value)


def test_a_file_named_relative_to_the_current_folder_gets_a_patient(tmp_path, monkeypatch):
    """`hemaflow predict UID_h3_1_1_all.bmp`: its folder is `.`, which has no name to look a labels CSV up by."""
    monkeypatch.chdir(tmp_path)
    assert I.cell_patients([Path("UID_h3_1_1_all.bmp"), Path("x.bmp")]) == ["H3", None]


def test_the_command_says_which_library_it_runs(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    shown = capsys.readouterr().out
    assert shown.startswith("hemaflow ") and str(Path(cli.__file__).resolve().parent) in shown
