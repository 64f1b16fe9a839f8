"""The `hemaflow` command (console script declared in pyproject.toml): `hemaflow predict ...`."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from hemaflow.images import MIN_SIDE
from hemaflow.predict import CNMC_PATIENT_REGEX

PREDICT_HELP = """\
Classify new cell images with a trained model and write per-image probabilities
(predictions.parquet/.csv), per-patient results (patients.csv), summary.json and one
self-contained HTML report per patient (reports/<patient>.html).

Images get the preprocessing the model was trained with (its preprocess.json), never
today's params.yaml. Unreadable files (empty, truncated, not an image, ...) are listed with
status "quarantined" and the reason, and never stop the others; so are implausible cells
(smaller side below --min-side, or blank), which never count toward a patient's result.
Every other file under an input folder (hidden, not an image, a FIFO, ...) gets a row with
status "skipped" and the reason. Bad options and sheets are reported before any image is read.

Patient-level decision (binary models): a patient is positive when its fraction of
positive cells reaches the threshold that `evaluate` chose on the validation patients
(results/evaluation/<combo>/metrics.json); multi-class models give class counts only.
Cells without a patient id get no decision and no report page.

This is a research tool, not a diagnosis.
"""


def library() -> str:
    """Which hemaflow this command runs: version and folder (another clone's src/ may come first)."""
    try:
        release = version("hemaflow")
    except PackageNotFoundError:  # run from a checkout's src/ without an install
        release = "not installed"
    return f"hemaflow {release} from {Path(__file__).resolve().parent}"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="hemaflow", description="hemaflow: blood-cell microscopy classifiers.")
    top.add_argument("--version", action="version", version=library())
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="classify new images, write predictions and per-patient reports",
                       description=PREDICT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="dir-or-file",
                   help="folders (searched recursively for .bmp/.png/.jpg/.jpeg/.tif/.tiff, e.g. a C-NMC "
                        "holdout folder) or single image files")
    p.add_argument("--model", required=True,
                   help="a combination id (results/models/<combo>/), `best` (the best CNN of "
                        "results/reports/metrics.json), or a model directory / model.keras path")
    p.add_argument("--out", default="results/predict/cli", help="output directory (default: %(default)s)")
    p.add_argument("--project", default=".", help="project root holding results/ (default: the current directory)")
    p.add_argument("--patients", metavar="sheet.csv",
                   help="patient sheet: patient_id,name,age,sex,sample_date[,CBC columns...], one row per patient")
    p.add_argument("--patient-regex", metavar="RE",
                   help=f"regex with a named group `patient`, searched in each file name "
                        f"(default: the C-NMC pattern {CNMC_PATIENT_REGEX}, ids upper-cased)")
    p.add_argument("--cells", metavar="cells.csv",
                   help="file -> patient sheet (columns file,patient_id, or a C-NMC labels CSV with "
                        "new_names,Patient_ID); a file is named by its path relative to the input folder, "
                        "an absolute path, or a base name that only one file has. A C-NMC holdout "
                        "folder's <folder>_labels.csv is used automatically")
    p.add_argument("--improve", action="store_true",
                   help="show seed 002's improved image (median 3x3 + sharpen) beside each original in the "
                        "report. Display only: the model's input is always prepared as in training (it "
                        "includes this filter only if the model was trained with preprocess.filter: median_sharpen)")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="decompression-bomb guard, as data.max_pixels")
    p.add_argument("--min-side", type=int, default=MIN_SIDE,
                   help="cells whose smaller side is below this many pixels are quarantined (default: %(default)s)")
    p.add_argument("--no-reports", action="store_true", help="write the tables only, no HTML reports")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from hemaflow.predict import run

    print(library(), file=sys.stderr)
    try:
        run(args.inputs, model=args.model, out_dir=args.out, project=args.project, patients=args.patients,
            patient_regex=args.patient_regex, cells=args.cells, improve=args.improve, batch_size=args.batch_size,
            max_pixels=args.max_pixels, min_side=args.min_side, reports=not args.no_reports)
    except (FileNotFoundError, ValueError) as e:
        print(f"hemaflow predict: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
