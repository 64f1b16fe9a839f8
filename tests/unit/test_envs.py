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


# Import names whose distribution the lock spells otherwise (importlib.metadata knows the rest).
def _distributions() -> dict[str, set[str]]:
    from importlib.metadata import packages_distributions

    return {module: {d.lower().replace("_", "-") for d in dists} for module, dists in packages_distributions().items()}


def _third_party_imports(path: Path) -> set[str]:
    """Top-level names of the non-hemaflow, non-stdlib modules `path` imports (anywhere in it)."""
    import ast
    import sys

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("hemaflow", "snakemake", "__future__")}


def _rules_with_envs():
    """(rule, script, env files) for every rule of workflow/rules/ that has both a conda env and a script."""
    import re

    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M):
            name = re.match(r"rule (\w+):", block)
            script = re.search(r'script:\s*\n\s*"\.\./scripts/([\w.]+)"', block)
            envs = re.findall(r'"\.\./\.\./(envs/[\w.-]+\.yaml)"', block)
            if name and script and envs:
                yield name.group(1), ROOT / "workflow/scripts" / script.group(1), envs


@pytest.mark.parametrize("rule, script, envs", list(_rules_with_envs()), ids=lambda v: v if isinstance(v, str) else "")
def test_each_rules_env_lists_every_package_its_code_imports(rule, script, envs):
    from hemaflow.provenance import library_modules

    code = [script, *(m for m in library_modules(script) if m.suffix == ".py")]  # templates import nothing
    imports = set().union(*(_third_party_imports(f) for f in code))
    dists = _distributions()
    for env in envs:
        deps = yaml.safe_load((ROOT / env).read_text())["dependencies"]
        pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
        listed = {SAME_RELEASE.get(k, k) for k in (r.partition("==")[0].split("[")[0].lower().replace("_", "-") for r in pip)}
        missing = sorted(m for m in imports if not dists.get(m, {m}) & listed)
        assert not missing, f"rule {rule} ({script.name}) imports {missing}, which {env} does not install"
