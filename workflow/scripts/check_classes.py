"""data.positive_class against the data set's actual classes, right after ingest."""

from hemaflow.logs import to_log

to_log(snakemake.log[0])  # first: TensorFlow and friends print on import

import json
import logging

from hemaflow.data.adapters import check_positive_class
from hemaflow.data.manifest import read_classes

classes = read_classes(snakemake.input[0])
positive = check_positive_class(classes, snakemake.params.positive_class)
if positive is None:
    logging.info("%d classes: data.positive_class is not used (multi-class task)", len(classes))
with open(snakemake.output[0], "w") as f:
    json.dump({"classes": len(classes), "positive_class": positive}, f, indent=2)
