"""The `hemaflow` command (console script declared in pyproject.toml): `hemaflow predict ...`, `hemaflow evaluate ...`."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from hemaflow.data.images import MIN_SIDE
from hemaflow.predict.inputs import CNMC_PATIENT_REGEX

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


EVALUATE_HELP = """\
External validation: score a trained model on a second labelled data set, read through any
adapter (its `data:` section is checked like params.yaml's), with the metrics evaluate
reports: cell level (accuracy, balanced accuracy, AUC, F1, per-class recall) with 95 %
bootstrap intervals that resample patients (images when the set names none), calibration
(Brier, ECE, reliability table; the model's validation temperature when it has one) and, for
binary models on sets with patient ids, the patient-level diagnosis with the threshold chosen
on the model's validation patients, with bootstrap and Wilson intervals. Nothing is fitted on
the external set.

The set's class names (after its label_map) must be classes of the model. Every file under the
root is accounted for in sources.parquet (quarantined and skipped ones with their reason).
Writes metrics.json, predictions.parquet, sources.parquet, quarantine.csv, patients.csv,
reliability.csv, confusion.png, roc.png, patients.png and summary.md.
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
    e = sub.add_parser("evaluate", help="score a trained model on a second labelled data set (external validation)",
                       description=EVALUATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--model",
                   help="a combination id, `best` (the best CNN of results/reports/metrics.json), or a model "
                        "directory / model.keras path (default: the file's `model`, else best)")
    e.add_argument("--data", required=True, metavar="other.yaml",
                   help="YAML file with a `data:` section like params.yaml's (adapter, root, label_map, "
                        "patient_regex, ...); optional top-level `subset: all | holdout` and `name`")
    e.add_argument("--out", help="output directory (default: results/external/<name>, name = the file's `name` or stem)")
    e.add_argument("--project", default=".",
                   help="project root holding results/; relative data paths are relative to it (default: %(default)s)")
    e.add_argument("--subset", choices=["all", "holdout"], help="override the file's subset (default: the file's, else all)")
    e.add_argument("--bootstrap", type=int, help="bootstrap resamples for the intervals (default: the schema's evaluate.bootstrap)")
    e.add_argument("--confidence", type=float, help="interval confidence level (default: the schema's evaluate.ci)")
    e.add_argument("--ece-bins", type=int, help="bins of the calibration error (default: the schema's evaluate.ece_bins)")
    e.add_argument("--seed", type=int, help="bootstrap seed (default: the schema's seed)")
    e.add_argument("--batch-size", type=int, default=64, help="images per model call (default: %(default)s)")
    e.add_argument("--threads", type=int, default=1, help="decoding threads while reading the set (default: %(default)s)")
    c = sub.add_parser("check-config", help="check config files as `snakemake --configfile` would read them, naming file and line",
                       description="Snakemake reads a --configfile before the workflow starts, and its message for a "
                                   "broken one names neither the file nor the line. This reads params.yaml and each FILE "
                                   "in order (later ones override), as Snakemake merges them, and checks the result "
                                   "against the schema.")  # fmt: skip
    c.add_argument("files", nargs="*", metavar="FILE", help="config files given to snakemake with --configfile")
    c.add_argument("--project", default=".", help="project root holding params.yaml and workflow/ (default: %(default)s)")
    return top


def _merged(base: dict, overlay: dict) -> dict:
    """Snakemake's merge of config files: mappings merge key by key, any other value replaces."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_config(args) -> int:
    """`hemaflow check-config`: each file a YAML mapping (file, line and column of a syntax error),
    then params.yaml overlaid with them valid against the schema (the key, and which file set it)."""
    import yaml

    from hemaflow.config import ParamsError, check_config_file, validate_params

    project = Path(args.project)
    files = [project / "params.yaml", *map(Path, args.files)]
    try:
        layers = []
        for path in files:
            if not path.is_file():
                raise ParamsError(f"{path}: no such file")
            check_config_file(path)
            layers.append((str(path), yaml.safe_load(path.read_text())))
        merged = {}
        for _, values in layers:
            merged = _merged(merged, values)
        validate_params(merged, project / "workflow/schemas/params.schema.yaml", layers)
    except ParamsError as e:
        print(f"hemaflow check-config: {e}", file=sys.stderr)
        return 2
    print(f"ok: {', '.join(map(str, files))} give a valid configuration")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "evaluate":
        return evaluate(args)
    if args.command == "check-config":
        return check_config(args)
    from hemaflow.predict.run import run

    print(library(), file=sys.stderr)
    try:
        run(args.inputs, model=args.model, out_dir=args.out, project=args.project, patients=args.patients,
            patient_regex=args.patient_regex, cells=args.cells, improve=args.improve, batch_size=args.batch_size,
            max_pixels=args.max_pixels, min_side=args.min_side, reports=not args.no_reports)
    except (FileNotFoundError, ValueError) as e:
        print(f"hemaflow predict: {e}", file=sys.stderr)
        return 2
    return 0


def evaluate(args) -> int:
    """`hemaflow evaluate`: external validation of a trained model (hemaflow.external.validation)."""
    from hemaflow.config import load_schema, with_defaults
    from hemaflow.external.validation import evaluate_external, read_data_file, schema_path

    print(library(), file=sys.stderr)
    try:
        # Unset options take the schema's defaults (its one home), as a pipeline run would.
        defaults = with_defaults({}, load_schema(schema_path(args.project)))
        scoring = {"n_resamples": defaults["evaluate"]["bootstrap"] if args.bootstrap is None else args.bootstrap,
                   "confidence": defaults["evaluate"]["ci"] if args.confidence is None else args.confidence,
                   "ece_bins": defaults["evaluate"]["ece_bins"] if args.ece_bins is None else args.ece_bins,
                   "seed": defaults["seed"] if args.seed is None else args.seed}  # fmt: skip
        entry = read_data_file(args.data, args.project)
        if args.model:
            entry["model"] = args.model
        if args.subset:
            entry["subset"] = args.subset
        out = Path(args.out) if args.out else Path(args.project) / "results/external" / entry["name"]
        result = evaluate_external(entry, out_dir=out, project=args.project, **scoring, batch_size=args.batch_size,
                                   threads=args.threads, where=args.data, say=lambda m: print(m, file=sys.stderr))
    except (FileNotFoundError, ValueError) as e:  # ParamsError is a ValueError
        print(f"hemaflow evaluate: {e}", file=sys.stderr)
        return 2
    cell = result["cell"]
    print(f"{result['name']}: {cell['n']} images, balanced accuracy {cell['balanced_accuracy']:.3f} "
          f"{cell['ci']['metrics']['balanced_accuracy']} -> {out} (summary.md, metrics.json)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
