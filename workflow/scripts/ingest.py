"""Read the data through its adapter, decode every image once, quarantine bad inputs, record skipped files."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import json
import logging

from hemaflow.data.adapters import list_candidates
from hemaflow.data.ingest import FIRST_FILES, build_sources, summary
from hemaflow.data.manifest import write_classes, write_manifest

d = snakemake.params.data
candidates, classes = list_candidates(
    d["adapter"],
    d["root"],
    index=d["index"],
    patient_regex=d["patient_regex"],
    filelist=d["filelist"],
    dataset=d["name"],
    classes=d["classes"],
    label_map=d["label_map"],
)
sources = build_sources(
    candidates,
    d["root"],
    dataset=d["name"],
    strict=d["strict"],
    max_pixels=d["max_pixels"],
    min_side=d["min_side"],
    threads=snakemake.threads,
    on_label_conflict=d["on_label_conflict"],
    near_duplicates=d["near_duplicates"],
)
write_manifest(sources, snakemake.output.sources, "sources")
write_classes(classes, snakemake.output.classes)
bad = sources[sources["status"] == "quarantined"]
bad[["image_id", "rel_path", "reason"]].to_csv(snakemake.output.quarantine, index=False)
info = summary(sources, classes, warn_similar=not d["classes"], near_duplicates=d["near_duplicates"])
with open(snakemake.output.summary, "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
logging.info("ingest: %s", json.dumps(info, sort_keys=True))
if len(bad):
    logging.warning("%d file(s) quarantined; see %s", len(bad), snakemake.output.quarantine)
for status in ("reasons", "skipped"):
    for reason, n in info[status].items():
        more = f", ... ({n - FIRST_FILES} more)" if n > FIRST_FILES else ""
        logging.log(logging.WARNING if status == "reasons" else logging.INFO, "%s %d file(s) as %s: %s%s",
                    "quarantined" if status == "reasons" else "skipped", n, reason,
                    ", ".join(info["first_files"][reason]), more)  # fmt: skip
for name in info["empty_classes"]:
    logging.warning("class %r has no usable image (an empty class folder, or every file of it is bad)", name)
for a, b in info.get("similar_labels", []):
    logging.warning("labels %r and %r differ by one character, case or spaces: a typo? set data.classes "
                    "to the expected names (or data.label_map to merge them)", a, b)  # fmt: skip
for group in info["label_conflicts"]:
    logging.warning("identical images with different labels: %s", group["files"])
