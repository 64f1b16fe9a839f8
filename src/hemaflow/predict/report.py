"""The per-patient report of `hemaflow predict`: one self-contained HTML page per patient."""

# Everything is inline (CSS in a <style> element, images as data: URIs), so a page opens
# offline, can be mailed as one file and requests nothing from anywhere; @media print lays it
# out for paper. No PDF: a browser's "Print to PDF" gives one from the same page, and
# WeasyPrint would need Debian's pango libraries on every machine.

from __future__ import annotations

import base64
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined

from hemaflow.data.images import ImageRejected, load_rgb
from hemaflow.augment.preprocess import median_sharpen
from hemaflow.safenames import file_name, under
from hemaflow.augment.shards import encode_png

DISCLAIMER = (
    "Research tool, not a diagnosis. These are the outputs of a machine-learning model on "
    "microscopy images; they have not been validated for clinical use and must not be used "
    "to diagnose, treat or exclude disease. A qualified haematologist must review the sample."
)
# The page is a Jinja2 template, autoescaped: no value from data or parameters can become markup.
_TEMPLATES = Environment(loader=PackageLoader("hemaflow.predict"), autoescape=True,
                         undefined=StrictUndefined, keep_trailing_newline=True)  # fmt: skip
GALLERY_MAX = 48  # cells shown per patient, most positive (or most confident) first
DISPLAY_SIDE = 160  # pixels of the larger side of a gallery image

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
.disclaimer { border: 2px solid #b00; background: #fff4f4; padding: 0.6em 1em; font-weight: 600; }
table.fields { border-collapse: collapse; margin: 1em 0; }
table.fields th, table.fields td { border: 1px solid #bbb; padding: 0.25em 0.7em; text-align: left; }
.decision { font-size: 1.15em; padding: 0.6em 1em; background: #f3f3f8; border-left: 5px solid #446; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
figure.cell { margin: 0; border: 1px solid #ccc; padding: 6px; width: max-content; break-inside: avoid; }
figure.cell img { display: block; image-rendering: pixelated; }
figure.cell .view { display: inline-block; vertical-align: top; margin-right: 4px; text-align: center; }
figure.cell .view small { display: block; font-size: 0.7em; color: #444; max-width: 160px; }
figure.cell figcaption { font-size: 0.8em; margin-top: 4px; }
.muted { color: #666; font-size: 0.85em; }
@media print {
  body { margin: 1cm; font-size: 10pt; }
  .gallery { gap: 4px; }
  figure.cell { page-break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""


def data_uri(img: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(img)).decode()


def display_image(rgb: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """The source scaled so its larger side is `side` (area interpolation)."""
    scale = side / max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def explanation_overlays(model, inputs: np.ndarray, predicted: np.ndarray) -> list[np.ndarray]:
    """Grad-CAM of each cell's predicted class over what the model saw (hemaflow.explain.run)."""
    from hemaflow.explain.gradcam import gradcam, overlay
    from hemaflow.augment.records import to_unit

    heat = gradcam(model, np.asarray(to_unit(inputs)), predicted)
    return [overlay(x, h) for x, h in zip(inputs, heat)]


def patient_page(
    patient_id: str,
    cells: pd.DataFrame,
    summary_row: dict,
    model_inputs: dict[int, np.ndarray],
    model,
    *,
    fields: dict | None,
    note: str,
    improve: bool,
    created: datetime,
) -> str:
    """The HTML page of one patient; `cells` are its rows of the prediction table (index = row)."""
    classes = model.classes
    ok = cells[cells["status"] == "ok"]
    score = f"p_{model.positive}" if model.binary else None
    order = ok.sort_values(score, ascending=False) if score else ok.assign(
        _conf=ok[[f"p_{c}" for c in classes]].max(axis=1)).sort_values("_conf", ascending=False)
    shown = order.head(GALLERY_MAX)
    inputs = np.stack([model_inputs[i] for i in shown.index]) if len(shown) else None
    predicted = np.array([classes.index(p) for p in shown["predicted_label"]], dtype=int)
    overlays = explanation_overlays(model.keras_model, inputs, predicted) if inputs is not None else []

    described = model.params.get("class_descriptions", {})

    def named(c: str) -> str:  # a class name with its words, when params.yaml gives them
        return f"{c} ({described[c]})" if c in described else c

    rows = [("patient id", patient_id)]
    if fields:
        rows += [(k, v) for k, v in fields.items() if k != "patient_id"]
    else:
        rows.append(("patient fields", "not given (no --patients sheet, or this id is not in it)"))
    if model.binary and "decision" in summary_row:
        frac = summary_row["frac_positive"]
        decision = {"binary": True, "text": str(summary_row["decision"]), "n_positive": summary_row["n_positive"],
                    "n_cells": summary_row["n_cells"], "positive": named(model.positive),
                    "fraction": "n/a" if pd.isna(frac) else f"{frac:.3f}", "threshold": f"{summary_row['threshold']:.4g}"}
    else:
        decision = {"binary": False, "n_cells": summary_row["n_cells"],
                    "counts": [(c, summary_row[f"n_{c}"]) for c in classes]}  # fmt: skip

    gallery = []
    for (i, row), over in zip(shown.iterrows(), overlays):
        images = []
        try:
            source = display_image(load_rgb(row["file"])[0])
        except ImageRejected:  # changed since it was predicted
            source = None
        if source is not None:
            images.append(("original", source))
            if improve:
                images.append(("improved (display only)" if model.params["preprocess"]["filter"] == "none"
                               else "improved (the model's input has this filter too)", median_sharpen(source)))
        side = DISPLAY_SIDE // 2 if improve else DISPLAY_SIDE
        images.append(("Grad-CAM of the predicted class", cv2.resize(over, (side, side), interpolation=cv2.INTER_NEAREST)))
        gallery.append({"name": Path(row["file"]).name, "predicted": str(row["predicted_label"]),
                        "probabilities": [(c, row[f"p_{c}"]) for c in classes],
                        # each image says what it is on screen and on paper, not only in a tooltip
                        "images": [(title, data_uri(im)) for title, im in images]})  # fmt: skip
    quarantined = cells[cells["status"] == "quarantined"]  # skipped files (not images) are not cells
    improve_note = None
    if improve:
        improve_note = ("Improved: median 3×3 then sharpen (image − 0.9 · Laplacian), seed 002's “improve image”. "
                        + ("The model was trained without this filter, so it is shown for the reader only; the "
                           "model's input is unchanged." if model.params["preprocess"]["filter"] == "none"
                           else "The model was trained with this filter, and its input had it applied."))
    t = model.threshold
    return _TEMPLATES.get_template("patient.html.j2").render(
        css=CSS, patient_id=patient_id, disclaimer=DISCLAIMER, decision=decision, note=note,
        fields=[(str(k), "" if pd.isna(v) else str(v)) for k, v in rows],
        classes=[(c, described.get(c, "no description given (data.class_descriptions)")) for c in classes],
        created=created.strftime("%Y-%m-%d %H:%M:%S %Z"), model=model.combo, model_path=str(model.path),
        params_hash=model.params_hash,
        preprocessing=", ".join(f"{k}={v}" for k, v in model.params["preprocess"].items()),
        threshold=f"{t['threshold']:.4g}, chosen on the {t['chosen_on']} patients ({t['source']})" if t else "none",
        cells=gallery, n_usable=len(ok),
        order=f"highest {score} first" if score else "most confident first", improve_note=improve_note,
        quarantined=[(Path(r.file).name, str(r.reason), str(r.detail)) for r in quarantined.itertuples()],
    )  # fmt: skip


def write_patient_reports(
    table: pd.DataFrame,
    per_patient: pd.DataFrame,
    model_inputs: dict[int, np.ndarray],
    model,
    out_dir: str | Path,
    *,
    sheet: pd.DataFrame | None,
    note: str,
    improve: bool,
) -> dict[str, str]:
    """reports/<patient>.html for every patient in `per_patient`; returns {patient_id: file name}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc)
    written = {}
    for row in per_patient.to_dict("records"):
        pid = row["patient_id"]
        fields = sheet.loc[pid].to_dict() if sheet is not None and pid in sheet.index else None
        page = patient_page(pid, table[table["patient_id"] == pid], row, model_inputs, model,
                            fields=fields, note=note, improve=improve, created=created)
        name = file_name(pid, ".html")  # ids differing only in case, spaces or accents get pages of their own
        under(out / name, out).write_text(page)
        written[pid] = name
    return written
