"""Send everything a job prints — Python, TensorFlow's C++ logging, Keras — to its log file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def to_log(path: str) -> None:
    """Redirect file descriptors 1 and 2 to `path` and configure logging to write there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # which library the job runs: the checkout's src/hemaflow (see provenance.put_first_on_pythonpath)
    logging.getLogger(__name__).info("hemaflow library: %s", Path(__file__).resolve().parent)
