"""Writing a file so that a crash or a full disk never leaves a truncated one under its final name."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """write(tmp) to a file beside `path`, then rename it to `path`: the previous file or none
    survives a failure, and no temporary file is left behind."""
    path = Path(path)
    # Same folder, so os.replace is a rename; the suffix kept, for writers that infer the format
    # from it (Keras' .keras, NumPy's .npz, matplotlib's .png).
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
