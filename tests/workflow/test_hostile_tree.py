"""A hostile input tree through ingest, the default pipeline and `hemaflow predict`, all as subprocesses.

The tree (a file list, read by the filelist adapter) holds patient ids that differ only by
case, space, accent or punctuation (`P 1`, `P_1`, `p_1`, `Müller`, `Mäller`) and one that is a
path (`../../outside/pid`); class labels that are paths or options (`../../../../outside/x`,
`.`, `-rf`); and file names no tool should trip over (not UTF-8, a symlink loop, a dangling
link, a FIFO, a hidden file, a text file named .png). The whole test directory is listed
before and after (path, type, mtime, size): the run may only write under the project's
results/ and .snakemake/ and predict's --out.

Everything runs through `snakemake` and the `hemaflow` command, never the library in-process
(its modules may move between sub-packages; the commands and files are the contract).
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness import BIN, copy_repo, run, write_override

pytestmark = pytest.mark.slow

# Patients, each of one diagnosis: three per class so that a 1:1:1 patient-disjoint split
# puts each class in train, val and test. The first five differ only by case, a space, an
# accent or punctuation: a file name made by slugging alone would merge them.
PATIENTS = {"P 1": "blast", "p_1": "blast", "Müller": "blast", "P_1": "normal", "Mäller": "normal",
            "../../outside/pid": "normal"}  # fmt: skip
CELLS_PER_PATIENT = 6
HOSTILE_LABELS = ["../../../../outside/x", ".", "-rf"]
BAD_NAME = os.fsdecode(b"bad\xff.png")  # not valid UTF-8: surrogate-escaped on disk, \xff in the outputs
SHOWN_BAD_NAME = "bad\\xff.png"
# (ingest status, reason), (predict status, reason) of each hostile file name.
# dangling.png and broken.png are named by the file list (so ingest decodes them); the others
# are not (no CSV can hold a name that is not UTF-8; a loop, a FIFO and a hidden file are
# found by walking the root).
HOSTILE_FILES = {
    SHOWN_BAD_NAME: (("quarantined", "bad_filename"), ("quarantined", "bad_filename")),
    "loop.png": (("quarantined", "unreadable"), ("quarantined", "unreadable")),
    "dangling.png": (("quarantined", "missing"), ("quarantined", "missing")),
    "fifo.png": (("skipped", "not_a_regular_file"), ("skipped", "not_a_regular_file")),
    ".hidden.png": (("skipped", "hidden"), ("skipped", "hidden")),
    "broken.png": (("quarantined", "not_an_image"), ("quarantined", "not_an_image")),
}
LISTED_HOSTILE = ["dangling.png", "broken.png"]
# Small everywhere: one shard per split, one epoch, no SVM, tiny explanations (as test_preset_runs).
SMALL = {
    "split": {"use_dataset_folds": False, "ratios": [1, 1, 1]},
    "preprocess": {"background": "natural", "size": 32, "crop_to_content": False, "pad_square": True, "filter": "none"},
    "augment": {"rotations": 1, "mirror": False, "random_copies": 0, "shards": {"train": 1, "val": 1, "test": 1},
                "contact_sheet": 2},
    "train": {"grid": {"model": ["model_1"], "optimizer": ["adam"], "lr": [0.001], "lr_policy": ["constant"],
                       "batch_size": [16], "dropout": [0.25]},
              "fusion": [], "max_epochs": 1, "patience": 1, "baseline_svm": False},
    "explain": {"cells": 1, "num_samples": 20, "sufficiency": {"cells": 1, "n": [1]}},
}  # fmt: skip


def png(seed: int, tint: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 200, (24, 24, 3), dtype=np.uint8)
    pixels[..., tint] += 55  # a little class signal: blast redder, normal bluer
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def snapshot(top: Path) -> dict[str, tuple]:
    """Every entry under `top` (links not followed): path -> ("dir",) or (type, mtime_ns, size)."""
    out = {}
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, top)
            out[rel] = ("dir",) if stat.S_ISDIR(st.st_mode) else (stat.S_IFMT(st.st_mode), st.st_mtime_ns, st.st_size)
    return out


def build_tree(work: Path, root: Path) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """The data root and its file list; returns the listed (path, label, patient) rows and
    {image file: patient} of the good cells."""
    rows, cells = [], {}
    seed = 0
    for j, (pid, label) in enumerate(PATIENTS.items()):
        (root / f"patient{j}").mkdir(parents=True)
        for k in range(CELLS_PER_PATIENT):
            rel = f"patient{j}/cell {k}.png"  # a space in every name
            (root / rel).write_bytes(png(seed, 0 if label == "blast" else 2))
            seed += 1
            rows.append((rel, label, pid))
            cells[rel] = pid
    for i, label in enumerate(HOSTILE_LABELS):
        rel = f"labelled{i}.png"
        (root / rel).write_bytes(png(1000 + i, 0))
        rows.append((rel, label, "P 1"))
    # hostile file names
    (root / BAD_NAME).write_bytes(png(2000, 0))
    (root / "loop.png").symlink_to("loop.png")
    (root / "dangling.png").symlink_to("nowhere.png")
    os.mkfifo(root / "fifo.png")
    (root / ".hidden.png").write_bytes(png(2001, 0))
    (root / "broken.png").write_text("this is text, not a PNG\n")
    rows += [(rel, "blast", "P 1") for rel in LISTED_HOSTILE]
    listing = pd.DataFrame(rows, columns=["path", "label", "patient_id"])
    listing.to_csv(work / "labels.csv", index=False)
    return rows, cells


def under(rel: str, *prefixes: str) -> bool:
    return any(rel == p or rel.startswith(p + os.sep) for p in prefixes)


def written(before: dict, after: dict) -> list[str]:
    """Entries new in `after`, and files, links or FIFOs whose type, mtime or size changed
    (a folder's own mtime changes whenever an entry is added to it: only new folders count)."""
    return sorted(p for p in after if p not in before or (after[p] != before[p] and after[p] != ("dir",)))


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, tool_env):
    top = tmp_path_factory.mktemp("hostile")
    # The project five folders down: a label or id with ../.. that escaped results/ would still
    # land inside `top`, where the listing sees it (and not in some other test's folder).
    project = Path("a/b/c/d/repo")
    work = copy_repo(top / project, tool_env)
    root = work / "data/raw/hostile"
    rows, cells = build_tree(work, root)
    data = {"adapter": "filelist", "name": "hostile", "root": "data/raw/hostile", "filelist": "labels.csv",
            "positive_class": "blast", "patient_sheet": None}  # fmt: skip
    override = write_override(top, "hostile.yaml", {"data": data, **SMALL})  # outside the project: it is ours
    cell_sheet = top / "cells.csv"
    pd.DataFrame({"file": list(cells), "patient_id": list(cells.values())}).to_csv(cell_sheet, index=False)
    out = top / "predicted"
    # Python's bytecode caches are the interpreter's, not the pipeline's: keep them out of the listing.
    env = {**tool_env, "PYTHONPYCACHEPREFIX": str(Path(tool_env["HOME"]) / "pycache"),
           "PYTHONPATH": str(work / "src")}  # the copy's code for `hemaflow`, as the Snakefile does for jobs
    before = snapshot(top)

    start = time.monotonic()
    sm = run([BIN / "snakemake", "--cores", "2", "--configfile", override], work, env)
    pipeline_s = time.monotonic() - start
    script = BIN / "hemaflow"
    command = [script] if script.exists() else [sys.executable, "-m", "hemaflow.cli"]
    start = time.monotonic()
    pr = run([*command, "predict", root, "--model", "best", "--project", work, "--out", out, "--cells", cell_sheet,
              "--batch-size", "8"], work, env)  # fmt: skip
    predict_s = time.monotonic() - start
    after = snapshot(top)
    print(f"hostile tree: pipeline {pipeline_s:.0f} s, predict {predict_s:.0f} s")
    return {"top": top, "project": str(project), "work": work, "root": root, "rows": rows, "cells": cells,
            "out": out, "before": before, "after": after, "snakemake": sm, "predict": pr}


def test_nothing_is_written_outside_results_snakemake_and_the_predict_out(hostile_run):
    r = hostile_run
    before, after, project = r["before"], r["after"], r["project"]
    allowed = (os.path.join(project, "results"), os.path.join(project, ".snakemake"), "predicted")
    changed = written(before, after)
    assert not sorted(set(before) - set(after)), "files of the input tree or the project vanished"
    outside = [p for p in changed if not under(p, *allowed)]
    assert not outside, outside
    # the pipeline and predict did write (a listing that saw nothing would pass the check above)
    assert any(under(p, os.path.join(project, "results/evaluation")) for p in changed)
    assert any(under(p, "predicted/reports") and p.endswith(".html") for p in changed)
    # nothing anywhere became a folder named by a hostile label or id, even inside results/
    parts = {part for p in changed for part in Path(p).parts}
    assert not parts & {"outside", "x", "-rf", "pid"}, sorted(parts & {"outside", "x", "-rf", "pid"})
    # the input tree is untouched, entry for entry (mtime and size of every file, the links and the FIFO)
    data = os.path.join(project, "data")
    assert {p: v for p, v in after.items() if under(p, data)} == {p: v for p, v in before.items() if under(p, data)}


def test_hostile_labels_are_quarantined_and_never_become_classes(hostile_run):
    work = hostile_run["work"]
    sources = pd.read_parquet(work / "results/manifests/sources.parquet").set_index("rel_path")
    hostile = [f"labelled{i}.png" for i in range(len(HOSTILE_LABELS))]
    assert sources.loc[hostile, "source_label"].tolist() == HOSTILE_LABELS
    assert sources.loc[hostile, ["status", "reason"]].values.tolist() == [["quarantined", "unsafe_label"]] * 3
    assert json.loads((work / "results/manifests/classes.json").read_text())["classes"] == ["blast", "normal"]
    splits = pd.read_parquet(work / "results/manifests/splits.parquet")
    assert not set(splits["image_id"]) & set(sources.loc[hostile, "image_id"])
    quarantine = pd.read_csv(work / "results/reports/quarantine.csv").set_index("rel_path")
    assert (quarantine.loc[hostile, "reason"] == "unsafe_label").all()
    # every later step knows two classes only: the model, the evaluation, the explanation folders
    (combo,) = [p.parent.name for p in (work / "results/models").glob("*/model.keras")]
    assert json.loads((work / f"results/models/{combo}/preprocess.json").read_text())["classes"] == ["blast", "normal"]
    overlays = work / "results/explain/best/overlays"
    assert overlays.is_dir() and {p.name for p in overlays.iterdir() if p.is_dir()} == {"blast", "normal"}
    assert json.loads((hostile_run["out"] / "summary.json").read_text())["classes"] == ["blast", "normal"]


def test_every_hostile_file_name_has_its_row_in_ingest_and_in_predict(hostile_run):
    work, out, rows = hostile_run["work"], hostile_run["out"], hostile_run["rows"]
    sources = pd.read_parquet(work / "results/manifests/sources.parquet").set_index("rel_path")
    assert sources.index.is_unique
    quarantine = pd.read_csv(work / "results/reports/quarantine.csv", keep_default_na=False).set_index("rel_path")
    for name, ((status, reason), _) in HOSTILE_FILES.items():
        assert name in sources.index, (name, sorted(sources.index))
        assert (sources.loc[name, "status"], sources.loc[name, "reason"]) == (status, reason), name
        assert (name in quarantine.index) == (status == "quarantined"), name
        if status == "quarantined":
            assert quarantine.loc[name, "reason"] == reason, name
    # one row per file on disk plus per listed row; the good cells all usable
    good = [rel for rel, label, _ in rows if label in ("blast", "normal") and rel not in LISTED_HOSTILE]
    assert (sources.loc[good, "status"] == "ok").all()
    assert len(sources) == len(good) + len(HOSTILE_LABELS) + len(HOSTILE_FILES)
    info = json.loads((work / "results/reports/ingest.json").read_text())
    assert info["status"] == {"ok": len(good), "quarantined": 3 + 4, "skipped": 2}
    assert info["reasons"] == {"bad_filename": 1, "missing": 1, "not_an_image": 1, "unreadable": 1, "unsafe_label": 3}

    table = pd.read_parquet(out / "predictions.parquet")
    names = table["file"].map(lambda f: os.path.relpath(f, hostile_run["root"]))
    assert names.is_unique and len(table) == len(good) + len(HOSTILE_LABELS) + len(HOSTILE_FILES)
    got = table.assign(name=names).set_index("name")
    for name, (_, (status, reason)) in HOSTILE_FILES.items():
        assert name in got.index, (name, sorted(got.index))
        assert (got.loc[name, "status"], got.loc[name, "reason"]) == (status, reason), name
        assert isinstance(got.loc[name, "detail"], str) and got.loc[name, "detail"], name
    assert (got.loc[good, "status"] == "ok").all() and got.loc[good, "predicted_label"].isin(["blast", "normal"]).all()
    csv = pd.read_csv(out / "predictions.csv")
    assert len(csv) == len(table)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(table)
    assert summary["status"] == {"ok": len(good) + len(HOSTILE_LABELS), "quarantined": 4, "skipped": 2}


def test_one_report_page_per_distinct_patient_titled_with_its_own_id(hostile_run):
    work, out = hostile_run["work"], hostile_run["out"]
    # ingest kept the ids apart (no case folding, no slugging)
    sources = pd.read_parquet(work / "results/manifests/sources.parquet")
    ok = sources[sources["status"] == "ok"]
    assert set(ok["patient_id"]) == set(PATIENTS)
    assert json.loads((work / "results/reports/ingest.json").read_text())["patients"] == len(PATIENTS)
    # ... and so did the split and evaluation
    splits = pd.read_parquet(work / "results/manifests/splits.parquet").merge(ok[["image_id", "patient_id"]])
    assert (splits.groupby("patient_id")["split"].nunique() == 1).all()  # patient-disjoint
    (combo,) = [p.parent.name for p in (work / "results/models").glob("*/model.keras")]
    evaluated = pd.read_csv(work / f"results/evaluation/{combo}/patients.csv", dtype={"patient_id": str},
                            keep_default_na=False)  # fmt: skip
    assert evaluated["patient_id"].is_unique and set(evaluated["patient_id"]) <= set(PATIENTS)
    assert {"val", "test"} <= set(evaluated["split"])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["patients"] == len(PATIENTS)
    assert summary["threshold"] is not None  # the binary decision, from the validation patients
    reports = summary["reports"]
    assert sorted(reports) == sorted(PATIENTS)
    assert len(set(reports.values())) == len(PATIENTS)  # no two ids share a page
    pages = sorted(p.name for p in (out / "reports").iterdir())
    assert pages == sorted(reports.values())
    for pid, page in reports.items():
        assert "/" not in page and not page.startswith((".", "-")) and page.endswith(".html"), page
        text = (out / "reports" / page).read_text(encoding="utf-8")
        (title,) = re.findall(r"<title>(.*?)</title>", text, re.S)
        assert html.unescape(title) == f"hemaflow report: patient {pid}", (page, title)
        (heading,) = re.findall(r"<h1>(.*?)</h1>", text, re.S)
        assert html.unescape(heading).endswith(f"patient {pid}"), (page, heading)
    patients = pd.read_csv(out / "patients.csv", dtype=str, keep_default_na=False).set_index("patient_id")
    assert patients.index.is_unique
    assert set(patients.index) == set(PATIENTS) | {"unassigned"}  # the hostile-label cells have no sheet row
    for pid in PATIENTS:
        assert patients.loc[pid, "report"] == reports[pid]
        assert int(patients.loc[pid, "n_cells"]) == CELLS_PER_PATIENT
        assert patients.loc[pid, "decision"] in ("positive for blast", "negative for blast")
    assert patients.loc["unassigned", "report"] == ""  # no page for cells of unknown patients
    # predict's table gives every good cell its own patient's id
    table = pd.read_parquet(out / "predictions.parquet")
    by_file = dict(zip(table["file"].map(lambda f: os.path.relpath(f, hostile_run["root"])), table["patient_id"]))
    assert {f: by_file[f] for f in hostile_run["cells"]} == hostile_run["cells"]


def test_the_run_succeeded_and_said_what_it_set_aside(hostile_run):
    sm, pr, work = hostile_run["snakemake"], hostile_run["predict"], hostile_run["work"]
    assert sm.returncode == 0 and pr.returncode == 0
    assert "Nothing to be done" not in sm.stdout + sm.stderr  # the fixture's run did the work
    # the ingest log names each quarantine reason with its files, the bad name shown escaped
    log = (work / "results/logs/ingest.log").read_text()
    for reason in ("unsafe_label", "bad_filename", "unreadable", "missing", "not_an_image"):
        assert re.search(rf"quarantined \d+ file\(s\) as {reason}: ", log), reason
    assert SHOWN_BAD_NAME in log
    # predict ran the copy's code and said what it did not decode
    err = pr.stderr + pr.stdout
    assert f"from {work / 'src/hemaflow'}" in err
    assert re.search(r"not decoded: \{.*'bad_filename': 1", err) and "'hidden': 1" in err
