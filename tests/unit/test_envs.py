"""The conda environments of envs/ pin the same versions as requirements.lock (pip)."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


@pytest.mark.parametrize("env", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_conda_env_pins_match_the_lock(env):
    deps = yaml.safe_load(env.read_text())["dependencies"]
    assert "python=3.11" in deps, f"{env.name}: python must be 3.11 like the lock"
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    pins = lock()
    for requirement in pip:
        name, _, version = requirement.partition("==")
        key = name.lower().replace("_", "-")
        assert version, f"{env.name}: {requirement} is not pinned"
        assert pins.get(key) == version, f"{env.name}: {requirement}, but requirements.lock has {key}=={pins.get(key)}"
