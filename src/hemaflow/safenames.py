"""The one gate between a name from data or parameters and a path: refuse it, or map it to a
collision-free file name; and check a path stays under the directory it is meant for."""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

MAX_NAME = 100  # characters of a name used as a path part as it is (labels, combination ids)
SLUG_MAX = 48  # characters of the readable part of a mapped file name
# Names Windows refuses as files whatever the extension; a results/ folder is often copied there.
RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


class UnsafeName(ValueError):
    """A name that must not become part of a path as it is."""


def name_problem(value) -> str | None:
    """Why `value` cannot be a path part as it is (None when it can)."""
    if not isinstance(value, str) or not value:
        return "it is empty"
    if value in (".", ".."):
        return f"{value!r} names a directory, not a file"
    if "/" in value or "\\" in value:
        return "it contains a path separator (/ or \\)"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        return "it contains a control character or undecodable byte"
    if value[0] in ".-":
        return f"it starts with {value[0]!r} (a hidden file or a command-line option)"
    if value.split(".")[0].lower() in RESERVED:
        return f"{value.split('.')[0]!r} is a reserved device name on Windows"
    if len(value) > MAX_NAME:
        return f"it is {len(value)} characters long (at most {MAX_NAME})"
    return None


def check_name(value, what: str) -> str:
    """`value` unchanged when it is safe as one path part; otherwise UnsafeName naming `what`."""
    problem = name_problem(value)
    if problem:
        raise UnsafeName(f"{what} {str(value)[:120]!r} cannot be used as a file or folder name: {problem}")
    return value


def file_name(value, suffix: str = "") -> str:
    """A file name for any id: a readable ASCII slug plus a short hash of the exact original, so
    ids that differ only in case, spaces or accents (`P 1`, `P_1`, `p_1`) never share a file."""
    text = str(value)
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_text).strip("_-")[:SLUG_MAX] or "id"
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{slug}-{digest}{suffix}"


def under(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """`path`, after checking that it resolves (links included) to a place inside `root`."""
    real, base = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != base and base not in real.parents:
        raise UnsafeName(f"refusing to write {path}: it lies outside {root}")
    return Path(path)
