"""The conda environments of envs/ pin the same versions as requirements.lock (pip)."""

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


# train-gpu.yaml holds the CUDA build of the TensorFlow release the lock pins as tensorflow-cpu.
SAME_RELEASE = {"tensorflow": "tensorflow-cpu"}


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
        key = name.split("[")[0].lower().replace("_", "-")
        key = SAME_RELEASE.get(key, key)
        assert version, f"{env.name}: {requirement} is not pinned"
        assert pins.get(key) == version, f"{env.name}: {requirement}, but requirements.lock has {key}=={pins.get(key)}"


def test_the_gpu_setup_swaps_in_the_cuda_build_of_the_locked_tensorflow(tmp_path):
    def plan(*args):
        cmd = ["make", "-n", "setup", f"VENV={tmp_path}/venv", *args]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout

    gpu = plan("GPU=1")
    cuda = f'"tensorflow[and-cuda]=={lock()["tensorflow-cpu"]}"'
    assert cuda in gpu and "-c requirements.lock" in gpu  # same release, shared packages at their locked versions
    assert gpu.index("uninstall --quiet --yes tensorflow-cpu") < gpu.index(cuda)
    assert "and-cuda" not in plan() and "uninstall" not in plan()
