"""Render local HTML in headless Chromium, offline: screenshots, the DOM after scripts ran, blank-page check."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")

# No sandbox because tests run as root in a container; everything else keeps Chromium off the
# network: no background/component/sync traffic, no QUIC, and every host name fails to resolve.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


class ChromiumUnavailable(RuntimeError):
    """Chromium is missing and this process cannot install it."""


def ensure_chromium(timeout: float = 1800) -> float:
    """Install Debian's chromium if missing; return the seconds spent installing (0 when present)."""
    if CHROMIUM.exists():
        return 0.0
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ChromiumUnavailable(
            f"{CHROMIUM} is missing and installing it needs root and apt-get (Debian/Ubuntu): "
            "run `apt-get install chromium` as root, then rerun the tests."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for, rather than fail on, an apt/dpkg lock held by a concurrent install.
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    start = time.monotonic()
    for args in (["update", *lock], ["install", "-y", *lock, "chromium"]):
        proc = subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"`apt-get {' '.join(args)}` failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if not CHROMIUM.exists():
        raise RuntimeError(f"apt-get installed chromium but {CHROMIUM} does not exist")
    return time.monotonic() - start


def _chromium(html_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    if not Path(html_path).is_file():
        raise FileNotFoundError(f"no HTML file at {html_path}")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.run(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args, Path(html_path).resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed on {html_path} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def _check_budget(budget_ms: int) -> None:
    if budget_ms <= 0:
        # Seen with Chromium 156: a zero budget never lets the page finish, and the call hangs until timeout.
        raise ValueError(f"budget_ms must be positive, got {budget_ms}")


def screenshot(html_path: Path, out_png: Path, width: int = 1280, height: int = 2000, budget_ms: int = 5000) -> Path:
    """PNG of the page's first `width` x `height` pixels, taken after its scripts had `budget_ms` of virtual time."""
    _check_budget(budget_ms)
    out_png = Path(out_png).resolve()
    _chromium(html_path, f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}", f"--screenshot={out_png}")
    if not out_png.exists():
        raise RuntimeError(f"chromium exited cleanly but wrote no screenshot for {html_path}")
    return out_png


def dump_dom(html_path: Path, budget_ms: int = 5000) -> str:
    """Serialized DOM after the page's scripts ran (JavaScript-rendered pages such as Snakemake's --report)."""
    _check_budget(budget_ms)
    return _chromium(html_path, f"--virtual-time-budget={budget_ms}", "--dump-dom").stdout


def ink_pixels(png: Path) -> int:
    """Number of pixels that differ from the image's most common colour."""
    with Image.open(png) as im:
        rgb = im.convert("RGB")
    counts = rgb.getcolors(rgb.width * rgb.height)
    return rgb.width * rgb.height - max(counts)[0]


def is_blank(png: Path, max_ink_pixels: int = 64) -> bool:
    """True when all but a few pixels share one colour (an empty or failed render).

    Counted in pixels, not as a share: one small table on a 1280x2000 page inks under 0.05% of it.
    """
    return ink_pixels(png) <= max_ink_pixels


def page_requests(html_path: Path, budget_ms: int = 5000) -> list[str]:
    """URLs the page itself asked the network for, from Chromium's net log (the browser's own
    background traffic, isolated under other sites, left out). Files read through file:// are
    not network requests; check a page's src/href attributes for those."""
    import json

    _check_budget(budget_ms)
    with tempfile.TemporaryDirectory(prefix="chromium-netlog-") as tmp:
        log = Path(tmp) / "net.json"
        _chromium(html_path, f"--virtual-time-budget={budget_ms}", f"--log-net-log={log}", "--dump-dom")
        data = json.loads(log.read_text())
    start = data["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return sorted({
        e["params"]["url"] for e in data["events"]
        if e["type"] == start and "file://" in e["params"].get("network_isolation_key", "")
    })
