"""External validation: score a trained model on a second labelled data set read through any
adapter, with evaluate's metrics, patient-bootstrap intervals, calibration and figures."""

# The set is read as ingest reads the training data (adapters.list_candidates, then
# ingest.build_sources: every file accounted for, bad ones quarantined with their reason), and
# each usable image is prepared as the model's own validation and test images were
# (predict.run.predict_files: the deterministic copy of its preprocess.json, or the evaluated
# copies). Nothing is fitted on the external set: the patient threshold is the one evaluate
# chose on the model's validation patients, the temperature (if any) the one fitted there.

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from hemaflow.config import ParamsError, check_config_file, check_data_paths, load_schema, validate_params, with_defaults
from hemaflow.data.adapters import list_candidates, reader, similar_labels
from hemaflow.data.images import REASONS, SKIP_REASONS
from hemaflow.data.manifest import write_manifest
from hemaflow.files import write_atomic
from hemaflow.models_io import json_safe
from hemaflow.safenames import check_name

# The Snakefile imports this module to check params.yaml `external` at parse time: the heavy
# modules (scipy, scikit-learn, matplotlib) are imported by the functions that score, so that
# every `snakemake` call does not pay for them.

SUBSETS = ("all", "holdout")
# Why an external file is not scored although ingest found it usable (status `skipped`).
EXTERNAL_SKIP_REASONS = {
    "outside_subset": "not in the data set's own labelled holdout (subset: holdout)",
    "no_label": "no label: an external set is scored against its labels",
}
# The checkout's schema, for a project directory without workflow/ (hemaflow installed elsewhere).
_OWN_SCHEMA = Path(__file__).resolve().parents[3] / "workflow/schemas/params.schema.yaml"


# ---------------------------------------------------------------- the data section


def schema_path(project: str | Path = ".") -> Path:
    """The project's params schema (workflow/schemas/params.schema.yaml), else this checkout's."""
    own = Path(project) / "workflow/schemas/params.schema.yaml"
    return own if own.is_file() else _OWN_SCHEMA


def entry_defaults(entry: Mapping, schema: Mapping) -> dict:
    """One `external` entry with the schema's defaults filled in, its `data` section included
    (hemaflow.config fills mappings, not the items of a list)."""
    item = schema["properties"]["external"]["items"]
    out = with_defaults(entry, item)
    out["data"] = with_defaults({"data": entry.get("data") or {}}, schema)["data"]
    return out


def check_entry(entry: Mapping, where: str, project: str | Path = ".", schema_file: str | Path | None = None,
                check_paths: bool = True) -> dict:
    """An external set (a mapping with `data` and optionally name, model, subset) checked against
    the params schema, defaults filled in; ParamsError naming `where` and the key otherwise.
    Relative data paths are relative to `project`, as in params.yaml; `check_paths` checks that
    they exist (the workflow does not for a root another rule makes, the replica)."""
    schema_file = schema_file or schema_path(project)
    schema = load_schema(schema_file)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("data"), Mapping):
        raise ParamsError(f"{where}: needs a `data:` section like params.yaml's (adapter, root, label_map, "
                          "patient_regex, ...), e.g.\n  data:\n    adapter: folders\n    root: path/to/class/folders")
    # validated as params.yaml would be with this `external` list: every message names the key
    values = {"external": [{"name": "set", **entry}]}
    try:
        validate_params(values, schema_file, [(where, values)])
    except ParamsError as e:
        raise ParamsError(str(e).replace("external.0.", "")) from None
    full = entry_defaults(entry, schema)
    if check_paths:
        # an external set is read, never generated: adapter synthetic reads an existing replica as C-NMC
        data = {**full["data"], "adapter": "cnmc" if full["data"]["adapter"] == "synthetic" else full["data"]["adapter"]}
        try:
            check_data_paths(data, project, [(where, {"data": entry["data"]})])
        except ParamsError as e:  # its advice is for params.yaml's own data section
            advice = ", in params.yaml or a --configfile (or use data.adapter: synthetic for the embedded replica)"
            raise ParamsError(str(e).replace(advice, f" in {where}")) from None
    return full


def read_data_file(path: str | Path, project: str | Path = ".") -> dict:
    """other.yaml for `hemaflow evaluate --data`: a `data:` section (and optionally name, model,
    subset), checked by `check_entry`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file (a YAML file with a `data:` section like params.yaml's)")
    check_config_file(path)  # a YAML mapping: the file, line and column otherwise
    entry = check_entry(yaml.safe_load(path.read_text()), str(path), project)
    entry.setdefault("name", path.stem)
    # The name becomes results/external/<name>/ (a file's own `name` passed the schema's pattern).
    entry["name"] = check_name(entry["name"], f"{path}: the set's name (its `name:` or the file name)")
    return entry


def workflow_sets(config: Mapping, layers, project: str | Path, schema_file: str | Path) -> dict[str, dict]:
    """params.yaml `external` for the workflow: name -> checked entry (defaults filled in).
    Messages name the layer that set the entry; the replica's root (made by rule synthesize)
    need not exist before the run."""
    from hemaflow.config import source_of

    sets: dict[str, dict] = {}
    for i, entry in enumerate(config["external"]):
        where = f"{source_of(['external', i], layers)}: external[{i}] ({entry.get('name')})"
        root = (entry.get("data") or {}).get("root", config["data"]["root"])
        made_here = config["data"]["adapter"] == "synthetic" and root == config["data"]["root"]
        full = check_entry(entry, where, project, schema_file, check_paths=not made_here)
        if full["name"] in sets:
            raise ParamsError(f"{where}: the name {full['name']!r} is used twice in `external`; give each set its own name")
        sets[check_name(full["name"], f"external[{i}].name")] = full
    return sets


def workflow_inputs(entry: Mapping, combos) -> dict[str, list[str]]:
    """What scoring one set needs built: its model (`best`: the leaderboard; a combination its
    model, preprocess.json and evaluation, for the threshold and temperature; a path nothing) and
    its data (the root or index, and the file list), as ingest's inputs."""
    model, d = entry["model"], entry["data"]
    if model == "best":
        needs = ["results/reports/metrics.json"]
    elif model in combos:
        needs = [f"results/models/{model}/{f}" for f in ("model.keras", "preprocess.json")]
        needs.append(f"results/evaluation/{model}/metrics.json")
    else:
        needs = []
    data = [d["index"] or d["root"]] + ([d["filelist"]] if d["adapter"] == "filelist" and d["filelist"] else [])
    return {"model": needs, "data": data}


# ---------------------------------------------------------------- classes


def check_classes(model_classes, set_classes, *, combo: str, where: str) -> None:
    """The set's classes (after its label_map) must be classes of the model; a class of the model
    missing from the set is allowed (its recall and AUC are undefined and say so)."""
    model_classes, set_classes = list(model_classes), list(set_classes)
    extra = [c for c in set_classes if c not in model_classes]
    if not extra:
        return
    hints = []
    for c in extra:  # a likely match: same name but for case, spaces or one character
        match = [m for m in model_classes if (m, c) in similar_labels([m, c]) or (c, m) in similar_labels([m, c])]
        if match:
            hints.append(f"{c}: {match[0]}")
    example = "{" + ", ".join(hints or [f"{extra[0]}: {model_classes[0]}"]) + "}"
    raise ValueError(
        f"{where}: the data set's classes {set_classes} do not match the classes of model {combo} {model_classes}: "
        f"{extra} {'is' if len(extra) == 1 else 'are'} not a class of the model. Map each source label to a class of "
        f"the model with data.label_map (e.g. label_map: {example}; null drops a class), or choose a model trained "
        "on these classes"
    )


# ---------------------------------------------------------------- reading and predicting


def _abs(project: Path, value):
    return None if value is None else (Path(value) if Path(value).is_absolute() else project / value)


def read_set(data: Mapping, model_classes, *, project: str | Path = ".", subset: str = "all", threads: int = 1,
             combo: str = "model", where: str = "data") -> tuple[pd.DataFrame, list[str]]:
    """(sources table of every file, the set's classes): ingest's table with label_index in the
    MODEL's class order, and usable images outside `subset` or without a label skipped."""
    from hemaflow.data.ingest import build_sources

    if subset not in SUBSETS:
        raise ValueError(f"subset: {subset!r} is not allowed; use one of {', '.join(SUBSETS)}")
    project = Path(project)
    root = _abs(project, data["root"])
    candidates, set_classes = list_candidates(
        reader(data["adapter"]), root, index=_abs(project, data["index"]), patient_regex=data["patient_regex"],
        filelist=_abs(project, data["filelist"]), dataset=data["name"], classes=data["classes"],
        label_map=data["label_map"],
    )
    check_classes(model_classes, set_classes, combo=combo, where=where)
    sources = build_sources(candidates, root, dataset=data["name"], strict=data["strict"], max_pixels=data["max_pixels"],
                            min_side=data["min_side"], threads=threads, on_label_conflict=data["on_label_conflict"])
    names = list(model_classes)
    sources["label_index"] = sources["label"].map({c: i for i, c in enumerate(names)}).fillna(-1).astype("int16")
    ok = sources["status"] == "ok"
    if subset == "holdout":
        sources.loc[ok & ~sources["holdout"], ["status", "reason"]] = ["skipped", "outside_subset"]
    unlabelled = (sources["status"] == "ok") & sources["label"].isna()
    sources.loc[unlabelled, ["status", "reason"]] = ["skipped", "no_label"]
    if not (sources["status"] == "ok").any():
        counts = sources["reason"].value_counts().to_dict()
        raise ValueError(f"{where}: no usable labelled image under {root} (subset {subset}); files by reason: {counts}")
    return sources, list(set_classes)


def score_images(model, sources: pd.DataFrame, root: Path, *, batch_size: int = 64, max_pixels: int, min_side: int,
                 say: Callable[[str], None] = print) -> pd.DataFrame:
    """One row per scored image: image_id, rel_path, patient_id, label, label_index, p_<class index>
    (with the model's validation temperature, when it has one, as predict applies it; the raw
    probabilities then as raw_p_<i>), predicted, predicted_label."""
    from dataclasses import replace

    from hemaflow.evaluate import calibration
    from hemaflow.predict.run import predict_files

    used = sources[sources["status"] == "ok"].reset_index(drop=True)
    # scored without the temperature, which is then applied as predict applies it: both figures kept
    table, _ = predict_files(replace(model, calibration=None), [root / p for p in used["rel_path"]],
                             batch_size=batch_size, max_pixels=max_pixels, min_side=min_side, progress=False, say=say)
    if (table["status"] != "ok").any():  # decoded by ingest a moment ago: a file changed meanwhile
        bad = table[table["status"] != "ok"]
        raise ValueError(f"{len(bad)} file(s) could not be read a second time, e.g. {bad['file'].iloc[0]}: "
                         f"{bad['reason'].iloc[0]}; is the data set being written to?")
    classes = model.classes
    raw = table[[f"p_{c}" for c in classes]].to_numpy(dtype=np.float64)
    temperature = model.temperature
    proba = raw if temperature is None else calibration.apply_temperature(raw, temperature)
    out = used[["image_id", "rel_path", "patient_id", "label", "label_index"]].copy()
    for i in range(len(classes)):
        out[f"p_{i}"] = proba[:, i]
    if temperature is not None:
        for i in range(len(classes)):
            out[f"raw_p_{i}"] = raw[:, i]
    out["predicted"] = proba.argmax(axis=1)
    out["predicted_label"] = np.asarray(classes, dtype=object)[out["predicted"]]
    return out


# ---------------------------------------------------------------- metrics


def _ci_section(intervals: Mapping, *, resampled: str, seed) -> dict:
    first = next(iter(intervals.values()))
    return {"confidence": first.confidence, "n_resamples": first.n_resamples, "seed": seed, "resampled": resampled,
            "metrics": {k: [v.low, v.high] for k, v in intervals.items()}}


def cell_section(images: pd.DataFrame, classes, positive: int, *, n_resamples: int, confidence: float, seed,
                 temperature: float | None, ece_bins: int) -> dict:
    """metrics.cell_metrics, with `ci` (patients resampled when the set names them, else images)
    and `calibration` (Brier, ECE, and the uncalibrated figures when a temperature was applied)."""
    from hemaflow import stats
    from hemaflow.evaluate import calibration, metrics

    k = len(classes)
    y = images["label_index"].to_numpy(int)
    proba = images[[f"p_{i}" for i in range(k)]].to_numpy()
    out = metrics.cell_metrics(y, proba, classes, positive=positive)
    present = set(y.tolist())
    absent = [c for i, c in enumerate(classes) if i not in present]
    if absent:
        out["notes"].append(f"classes of the model absent from the set: {absent} (their recall is undefined)")
    has_patients = images["patient_id"].notna().any()
    intervals = stats.bootstrap_metrics({"y_true": y, "proba": proba}, stats.cell_statistics(classes, positive=positive),
                                        groups=images["patient_id"].to_numpy(object) if has_patients else None,
                                        n_resamples=n_resamples, confidence=confidence, seed=seed)
    out["ci"] = _ci_section(intervals, resampled="patients" if has_patients else "images", seed=seed)
    # cell_metrics (sklearn, zero_division=0) counts a class with no image (or precision of a class
    # never predicted) as 0 in its macro averages; the intervals leave undefined classes out, and
    # a figure outside its own interval would mislead. Where they differ, the figure reported is
    # the interval's (classes defined in the set), and evaluate's definition is kept beside it.
    differ = {k: out[k] for k, v in intervals.items() if k in out and not np.isclose(out[k], v.estimate, equal_nan=True)}
    if differ:
        out["as_evaluate"] = differ
        for k in differ:
            out[k] = intervals[k].estimate
        out["notes"].append(f"{', '.join(differ)}: averaged over the classes defined in this set (as the intervals); "
                            "counting undefined classes as 0, as evaluate's cell metrics do, gives `as_evaluate`")
    unit = proba / proba.sum(axis=1, keepdims=True)  # float32 softmax sums miss 1 by ~1e-7: sklearn warns
    cal = {"brier": calibration.brier(y, unit), "ece": calibration.expected_calibration_error(y, unit, n_bins=ece_bins),
           "ece_bins": ece_bins, "binning": calibration.binning(ece_bins), "temperature": temperature}
    if temperature is not None:
        raw = images[[f"raw_p_{i}" for i in range(k)]].to_numpy()
        raw = raw / raw.sum(axis=1, keepdims=True)
        cal["uncalibrated"] = {"brier": calibration.brier(y, raw),
                               "ece": calibration.expected_calibration_error(y, raw, n_bins=ece_bins)}
    out["calibration"] = cal
    return out


def patient_section(images: pd.DataFrame, classes, positive: int, threshold: dict | None, *, n_resamples: int,
                    confidence: float, seed) -> tuple[pd.DataFrame, dict]:
    """(patients table, metrics.json's `patient` section): the model's validation threshold applied
    to each patient's positive-cell fraction, bootstrap intervals over patients and Wilson
    intervals; {"skipped": why} for multi-class models, sets without patient ids, or models
    without a validation threshold."""
    from hemaflow import stats
    from hemaflow.evaluate import metrics

    cols = ["patient_id", "split", "label", "n_cells", "frac_positive", "predicted"]
    empty = pd.DataFrame(columns=cols)
    if len(classes) != 2:
        return empty, {"skipped": f"{len(classes)} classes: the patient-level diagnosis is computed for binary models only"}
    cells = images.dropna(subset=["patient_id"])
    if cells.empty:
        return empty, {"skipped": "no patient ids in the set (data.patient_regex, a patient_id column or the C-NMC "
                                  "names give them): patient level not computed"}  # fmt: skip
    if threshold is None:
        return empty, {"skipped": "the model has no validation threshold (results/evaluation/<combo>/metrics.json, "
                                  "section patient): patient level not computed"}  # fmt: skip
    t = float(threshold["threshold"])
    patients = metrics.patient_fractions(cells.assign(y_true=(cells["label_index"] == positive).astype(int),
                                                      y_pred=(cells["predicted"] == positive).astype(int)))
    patients = patients.assign(split="external", predicted=(patients["frac_positive"] >= t).astype(int))[cols]
    section = {"threshold": t, "threshold_chosen_on": threshold["chosen_on"], "threshold_source": threshold["source"],
               "positive_class": classes[positive], **metrics.patient_metrics(patients, t)}
    intervals = stats.bootstrap_metrics(patients, stats.patient_statistics(t), groups=None, n_resamples=n_resamples,
                                        confidence=confidence, seed=seed)
    label, predicted = patients["label"].to_numpy(int), patients["predicted"].to_numpy(int)
    pos, neg = label == 1, label == 0
    ci = _ci_section(intervals, resampled="patients", seed=seed)
    ci["wilson"] = {
        "accuracy": list(stats.wilson(int((predicted == label).sum()), len(label), confidence)),
        "sensitivity": list(stats.wilson(int(predicted[pos].sum()), int(pos.sum()), confidence)),
        "specificity": list(stats.wilson(int((1 - predicted[neg]).sum()), int(neg.sum()), confidence)),
    }
    section["ci"] = ci
    return patients, section


# ---------------------------------------------------------------- the whole run


def evaluate_external(entry: Mapping, *, out_dir: str | Path, project: str | Path = ".", model=None,
                      n_resamples: int, confidence: float, ece_bins: int, seed: int,
                      batch_size: int = 64, threads: int = 1, where: str = "external",
                      say: Callable[[str], None] = print) -> dict:
    """Score `entry["model"]` (a combination id, `best` or a path; or an opened `model`) on the set
    `entry["data"]` (checked by `check_entry`) and write to `out_dir`: metrics.json,
    predictions.parquet, sources.parquet + quarantine.csv (every file, with its status and
    reason), confusion.png, roc.png, patients.png, reliability.png and .csv, patients.csv, summary.md.
    Returns the metrics."""
    from hemaflow.data.ingest import summary
    from hemaflow.predict.model import open_model

    project = Path(project)
    data = entry["data"]
    model = model or open_model(entry["model"], project)
    classes = model.classes
    positive = classes.index(model.positive) if model.binary else 1
    sources, set_classes = read_set(data, classes, project=project, subset=entry["subset"], threads=threads,
                                    combo=model.combo, where=where)
    used = sources[sources["status"] == "ok"]
    say(f"external set {entry['name']}: {len(used)} labelled image(s) of {len(sources)} file(s) under {data['root']}; "
        f"model {model.combo} ({model.path})")
    temperature = model.temperature
    images = score_images(model, sources, _abs(project, data["root"]), batch_size=batch_size,
                          max_pixels=data["max_pixels"], min_side=data["min_side"], say=say)
    cell = cell_section(images, classes, positive, n_resamples=n_resamples, confidence=confidence, seed=seed,
                        temperature=temperature, ece_bins=ece_bins)
    patients, patient = patient_section(images, classes, positive, model.threshold, n_resamples=n_resamples,
                                        confidence=confidence, seed=seed)
    ingest = summary(sources, set_classes, warn_similar=False)
    ingest["skip_reason_text"] = {r: EXTERNAL_SKIP_REASONS.get(r) or SKIP_REASONS.get(r) or REASONS.get(r)
                                  for r in sorted(sources["reason"].dropna().unique())}
    result = {
        "name": entry["name"],
        "model": {"combo": model.combo, "path": str(model.path), "params_hash": model.params_hash, "classes": classes,
                  "positive_class": classes[positive] if model.binary else None, "temperature": temperature,
                  "calibration": model.calibration},
        "data": {k: data[k] for k in ("adapter", "name", "root", "index", "filelist", "patient_regex", "label_map",
                                      "classes")} | {"subset": entry["subset"], "classes_found": set_classes},
        "sources": ingest,
        "cell": cell,
        "patient": patient,
    }
    write_outputs(result, images, sources, patients, classes, positive, Path(out_dir))
    return result


def write_outputs(result: dict, images: pd.DataFrame, sources: pd.DataFrame, patients: pd.DataFrame, classes,
                  positive: int, out: Path) -> None:
    from hemaflow import plots
    from hemaflow.evaluate import calibration, metrics

    out.mkdir(parents=True, exist_ok=True)
    name = result["name"]
    write_manifest(sources, out / "sources.parquet", "sources")
    bad = sources[sources["status"] != "ok"][["image_id", "rel_path", "status", "reason"]]
    write_atomic(out / "quarantine.csv", lambda p: bad.to_csv(p, index=False))
    write_atomic(out / "predictions.parquet", lambda p: images.to_parquet(p, index=False))
    write_atomic(out / "patients.csv", lambda p: patients.to_csv(p, index=False))
    y, k = images["label_index"].to_numpy(int), len(classes)
    proba = images[[f"p_{i}" for i in range(k)]].to_numpy()
    plots.confusion_matrix(metrics.confusion_table(y, images["predicted"], classes), out / "confusion.png",
                           title=f"external {name}: confusion matrix")
    plots.roc_curves(metrics.roc_table(y, proba, classes, positive=positive), out / "roc.png",
                     title=f"external {name}: ROC curve")
    threshold = result["patient"].get("threshold")
    plots.patient_diagnosis(patients, threshold, out / "patients.png", note=result["patient"].get("skipped"))
    cal = result["cell"]["calibration"]
    reliability = calibration.reliability_table(y, proba, n_bins=cal["ece_bins"])
    write_atomic(out / "reliability.csv", lambda p: reliability.to_csv(p, index=False))
    plots.reliability_diagram(reliability, out / "reliability.png", title=f"external {name}: reliability",
                              ece=cal["ece"], temperature=cal["temperature"])
    write_atomic(out / "metrics.json", lambda p: p.write_text(json.dumps(json_safe(result), indent=2) + "\n"))
    write_atomic(out / "summary.md", lambda p: p.write_text(summary_markdown(result)))


# ---------------------------------------------------------------- the report


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.3f}"


def _with_ci(value, ci) -> str:
    low, high = ci if ci else (None, None)
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{_fmt(value)} (interval undefined)"
    return f"{_fmt(value)} [{low:.3f}, {high:.3f}]"


CELL_ROWS = ("accuracy", "balanced_accuracy", "auc", "f1", "macro_f1")


def summary_markdown(result: dict) -> str:
    """A short markdown summary of one external set: data, model, metrics with intervals, calibration."""
    cell, patient, src, m = result["cell"], result["patient"], result["sources"], result["model"]
    ci = cell["ci"]
    pct = round(100 * ci["confidence"])
    lines = [
        f"# External validation: {result['name']}",
        "",
        f"Model `{m['combo']}` (classes {', '.join(m['classes'])}; params hash {m['params_hash']}) on "
        f"`{result['data']['root']}` read by the `{result['data']['adapter']}` adapter (subset {result['data']['subset']}).",
        f"Files: {src['files']} ({src['status']['ok']} scored, {src['status']['quarantined']} quarantined, "
        f"{src['status']['skipped']} skipped; reasons in sources.parquet and quarantine.csv); "
        f"patients: {src['patients'] or 'none named'}.",
        "",
        f"## Cell level ({cell['n']} images; {pct} % intervals from {ci['n_resamples']} bootstrap resamples of {ci['resampled']})",
        "",
        "| metric | value [interval] |",
        "|---|---|",
        *(f"| {k} | {_with_ci(cell.get(k), ci['metrics'].get(k))} |" for k in CELL_ROWS),
        *(f"| recall of {c} | {_with_ci(cell['per_class'].get(c, {}).get('recall'), ci['metrics'].get(f'recall[{c}]'))} |"
          for c in m["classes"]),
        "",
        f"Calibration: Brier {_fmt(cell['calibration']['brier'])}, ECE {_fmt(cell['calibration']['ece'])} "
        f"({cell['calibration']['binning']}); "
        + (f"temperature {cell['calibration']['temperature']:.3g} from the model's validation split applied "
           f"(uncalibrated ECE {_fmt(cell['calibration']['uncalibrated']['ece'])})."
           if cell["calibration"]["temperature"] is not None else "no temperature scaling."),
    ]
    if cell["notes"]:
        lines += ["", "Notes: " + "; ".join(cell["notes"]) + "."]
    lines += ["", "## Patient level", ""]
    if "skipped" in patient:
        lines.append(patient["skipped"] + ".")
    else:
        pci = patient["ci"]
        lines += [
            f"{patient['n_patients']} patients ({patient['n_positive']} positive for {patient['positive_class']!r}); "
            f"threshold {patient['threshold']:.4g} chosen on the model's {patient['threshold_chosen_on']} patients, "
            "never on this set.",
            "",
            "| metric | value | bootstrap interval | Wilson interval |",
            "|---|---|---|---|",
        ]
        for k in ("accuracy", "sensitivity", "specificity", "balanced_accuracy", "auc"):
            boot = _with_ci(patient.get(k), pci["metrics"].get(k)).split(" ", 1)[1]
            wil = pci["wilson"].get(k)
            lines.append(f"| {k} | {_fmt(patient.get(k))} | {boot} | "
                         f"{f'[{wil[0]:.3f}, {wil[1]:.3f}]' if wil and wil[0] is not None and np.isfinite(wil[0]) else ''} |")
    lines += ["", "Figures: confusion.png, roc.png, patients.png, reliability.png; reliability table: reliability.csv.", ""]
    return "\n".join(lines)


def index_markdown(results: list[dict]) -> str:
    """results/external/index.md: one row per external set (every set of params.yaml `external`)."""
    if not results:
        return ("# External validation\n\nNo external sets configured (params.yaml `external: []`); add one, e.g.\n\n"
                "```yaml\nexternal:\n  - name: other\n    model: best\n    data: {adapter: folders, root: path/to/class/folders}\n```\n")
    lines = ["# External validation", "", "| set | model | images | patients | balanced accuracy [CI] | AUC [CI] | "
             "patient accuracy [Wilson] | ECE |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, p = r["cell"], r["patient"]
        pa = "n/a" if "skipped" in p else _with_ci(p["accuracy"], p["ci"]["wilson"]["accuracy"])
        lines.append(f"| {r['name']} | {r['model']['combo']} | {c['n']} | {p.get('n_patients', 'n/a')} | "
                     f"{_with_ci(c['balanced_accuracy'], c['ci']['metrics']['balanced_accuracy'])} | "
                     f"{_with_ci(c['auc'], c['ci']['metrics']['auc'])} | {pa} | {_fmt(c['calibration']['ece'])} |")
    return "\n".join(lines) + "\n"
