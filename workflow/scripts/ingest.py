"""Read the data through its adapter, decode every image once, quarantine bad inputs."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import json
import logging

from hemaflow.adapters import list_candidates
from hemaflow.ingest import build_sources, summary
from hemaflow.manifest import write_manifest

d = snakemake.params.data
candidates = list_candidates(
    d["adapter"] if d["adapter"] != "synthetic" else "cnmc",
    d["root"],
    index=d["index"],
    patient_regex=d["patient_regex"],
    filelist=d["filelist"],
    dataset=d["name"],
)
sources = build_sources(
    candidates,
    d["root"],
    dataset=d["name"],
    strict=d["strict"],
    max_pixels=d["max_pixels"],
    threads=snakemake.threads,
)
write_manifest(sources, snakemake.output.sources, "sources")
bad = sources[sources["status"] != "ok"]
bad[["image_id", "rel_path", "reason"]].to_csv(snakemake.output.quarantine, index=False)
info = summary(sources)
with open(snakemake.output.summary, "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
logging.info("ingest: %s", json.dumps(info, sort_keys=True))
if len(bad):
    logging.warning("%d file(s) quarantined; see %s", len(bad), snakemake.output.quarantine)
