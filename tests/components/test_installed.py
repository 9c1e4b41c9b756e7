"""The wheel, installed as a user installs it, runs both examples (issue 20, "Installable").

Once per test session: `pip wheel --no-deps` builds the wheel from a copy of the checkout (the
build backend pinned in pyproject.toml; without build isolation when the running environment has
exactly that backend, so no download), and a fresh venv (`python -m venv`) gets it with
`pip install --no-deps`. Its dependencies are not downloaded: a `.pth` file points at a folder of
links to exactly the distributions the wheel declares (and theirs, transitively) in this
environment, so an import the wheel does not declare fails there, and `pip check` there says
whether the declared versions are met. The examples then run under the same mocks with that
venv's Python, copied out of the repository and run from there (the checkout's `servedmodel/`
cannot be imported by accident: the run reports where `servedmodel` came from), and pass the
same checks as in the repository. The model is exported there for real (an empty build cache),
and its version is the checkout's.
"""
from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

import test_composed
import test_example
from pulumi_harness import ROOT, Kms, Res, Run

pytestmark = pytest.mark.slow

WORLDS = ("models", "serving", "components")
TIMINGS: dict[str, float] = {}
"""Seconds each step took (printed at the end of the session's last test here)."""


def _timed(step: str, *cmd: str, **kwargs: Any) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    TIMINGS[step] = TIMINGS.get(step, 0.0) + time.perf_counter() - start
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
    return done


def _source_files() -> list[Path]:
    """What a checkout holds (tracked, and new files not ignored); no venvs, builds or caches."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sorted(Path(p) for p in set(listed) if p and ((ROOT / p).exists() or (ROOT / p).is_symlink()))


@dataclass
class Built:
    wheel: Path
    log: str
    isolated: bool


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Built:
    """The wheel, built once per session from a copy of the checkout (the build writes build/ and
    *.egg-info into its source tree: the checkout stays as it is)."""
    src, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).is_symlink():
            (src / rel).symlink_to(os.readlink(ROOT / rel))
        else:
            shutil.copy2(ROOT / rel, src / rel)
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    isolated = not all(_installed(Requirement(r)) for r in backend)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src)]
    done = _timed("pip wheel", *cmd, *([] if isolated else ["--no-build-isolation"]))
    [wheel] = out.glob("servedmodel-*.whl")
    return Built(wheel, done.stdout + done.stderr, isolated)


def _installed(req: Requirement) -> bool:
    try:
        return req.specifier.contains(metadata.version(req.name), prereleases=True)
    except metadata.PackageNotFoundError:
        return False


def _closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The distributions `requirements` need here, with their own requirements, transitively."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        dist = metadata.distribution(req.name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist
        todo += [Requirement(r) for r in dist.requires or ()]
    return list(seen.values())


@dataclass
class Venv:
    python: Path
    site: Path


@pytest.fixture(scope="session")
def venv(built, tmp_path_factory) -> Venv:
    root = tmp_path_factory.mktemp("fresh") / "venv"
    _timed("python -m venv", sys.executable, "-m", "venv", "--without-pip", str(root))
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The declared dependencies, from this environment, without downloading them: links to each
    # distribution's top-level files and its metadata, in one folder a .pth file adds.
    with zipfile.ZipFile(built.wheel) as whl:
        meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
        declared = email.message_from_bytes(whl.read(meta))
    deps = root.parent / "deps"
    deps.mkdir()
    for dist in _closure(declared.get_all("Requires-Dist") or []):
        base = Path(str(dist.locate_file("")))
        for top in sorted({Path(f).parts[0] for f in dist.files or ()}):
            if top not in ("..", "__pycache__") and not top.endswith(".pth") and not (deps / top).exists():
                (deps / top).symlink_to(base / top)
    (site / "servedmodel-deps.pth").write_text(f"{deps}\n")
    # pip itself stays out of the venv: the running pip installs into it (--python).
    _timed("pip install --no-deps", sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
           "--no-index", str(built.wheel))
    return Venv(python, site)


def test_the_wheel_builds_without_warnings(built):
    lowered = built.log.lower()
    assert "warning" not in lowered and "!!" not in built.log, built.log


def test_the_wheel_carries_every_file_of_the_three_worlds(built):
    """Every module and every data file (Dockerfiles, requirements, zoo data, proto, json) of
    models/, serving/ and components/: a new subpackage or data folder cannot be left out."""
    with zipfile.ZipFile(built.wheel) as whl:
        names = set(whl.namelist())
    expected = {f"servedmodel/{rel.as_posix()}" for rel in _source_files() if rel.parts[0] in WORLDS}
    assert expected - names == set(), "missing from the wheel"
    data = {n for n in expected if not n.endswith(".py")}
    for kind in ("Dockerfile", "requirements.txt", ".tsv", ".proto", ".json"):
        assert any(kind in n for n in data), kind
    assert "servedmodel/__init__.py" in names


def test_the_declared_dependencies_are_met_in_the_fresh_venv(venv):
    done = _timed("pip check", sys.executable, "-m", "pip", "--python", str(venv.python), "check")
    assert "No broken requirements found" in done.stdout


@pytest.fixture(scope="session")
def installed(venv, tmp_path_factory) -> dict[str, Any]:
    """Both examples run by the fresh venv's Python, from copies outside the repository, with an
    empty build cache (the model is exported there)."""
    work = tmp_path_factory.mktemp("user")
    programs = {}
    for name in ("standalone", "composed"):
        shutil.copytree(ROOT / "examples" / name, work / name, ignore=shutil.ignore_patterns("build", "venv"))
    for target, (config, secrets) in test_example.CONFIGS.items():
        programs[f"standalone-{target}"] = {"program": str(work / "standalone" / "__main__.py"),
                                            "project": test_example.PROJECT, "config": config,
                                            "secrets": sorted(secrets)}
    programs["composed"] = {"program": str(work / "composed" / "__main__.py"), "project": test_composed.PROJECT,
                            "config": test_composed.CONFIG, "secrets": sorted(test_composed.SECRETS)}
    spec, result = work / "spec.json", work / "result.json"
    spec.write_text(json.dumps({"runs": programs, "plugin": str(ROOT / "provider")}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PULUMI_CONFIG", "PULUMI_CONFIG_SECRET_KEYS")}
    env["SERVEDMODEL_CACHE"] = str(tmp_path_factory.mktemp("empty-cache"))
    # The composed example's model is kms-encrypted: its keys are made on this process's test KMS
    # (moto in server mode), which the fresh venv reaches over HTTP with boto3, a declared dependency.
    env[Kms.URL_VARIABLE] = Kms.get().url
    _timed("examples in the fresh venv", str(venv.python), str(Path(__file__).with_name("installed_programs.py")),
           str(spec), str(result), cwd=work, env=env)
    return json.loads(result.read_text())


def _run(data: dict[str, Any]) -> Run:
    resources = [Res(**r) for r in data.pop("resources")]
    fields: dict[str, Any] = data | {"secret_outputs": set(data["secret_outputs"])}
    return Run(resources=resources, **fields)


def test_servedmodel_comes_from_the_fresh_venv(installed, venv):
    module = Path(installed["servedmodel"]).resolve()
    assert module.is_relative_to(venv.site.resolve()), module
    assert not module.is_relative_to(ROOT)


def test_the_standalone_example_runs_from_the_wheel(installed, model_cache):
    test_example.check_local_container(_run(dict(installed["runs"]["standalone-docker"])))
    test_example.check_cluster(_run(dict(installed["runs"]["standalone-kubernetes"])))


def test_the_composed_example_runs_from_the_wheel(installed, model_cache):
    composed = _run(dict(installed["runs"]["composed"]))
    test_composed.check_namespace(composed)
    test_composed.check_tls(composed)
    test_composed.check_objects(composed)


def test_a_model_built_from_the_wheel_has_the_checkouts_version(installed, model_cache):
    first = installed["runs"]["standalone-docker"]
    built_there = [line for line in first["logs"] if line.startswith("digits: model version ")]
    assert built_there and "(cached build)" not in built_there[0], "the wheel's run exported the model itself"
    checkout = test_example.run_example("docker")
    assert first["outputs"]["modelVersion"] == checkout.outputs["modelVersion"]


def test_the_plugin_serves_the_committed_schema_from_the_installed_package(installed):
    from servedmodel.components.provider import SCHEMA_FILE

    assert installed["plugin_schema"] == json.loads(SCHEMA_FILE.read_text())
    print("\ninstalled-wheel timings (s): "
          + ", ".join(f"{step} {seconds:.1f}" for step, seconds in TIMINGS.items()))
