"""The repository's own promises: the folder boundaries of DESIGN.md and a README that stays true."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

# folder -> top-level modules it must never import (DESIGN.md, "Three worlds, three folders").
FORBIDDEN_IMPORTS = {
    "serving": {"torch", "pulumi", "pulumi_aws", "pulumi_kubernetes", "pulumi_docker",
                "pulumi_docker_build", "models", "components", "onnx", "transformers"},
    "models": {"pulumi", "pulumi_aws", "pulumi_kubernetes", "pulumi_docker",
               "pulumi_docker_build", "components", "serving"},
    "components": {"serving", "torch"},
}


def imported_top_level_modules(source: Path) -> set[str]:
    tree = ast.parse(source.read_text(), filename=str(source))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN_IMPORTS))
def test_folder_never_imports_another_world(folder: str) -> None:
    sources = sorted((ROOT / folder).rglob("*.py"))
    assert sources, f"{folder}/ has no Python sources"
    violations = {
        str(path.relative_to(ROOT)): sorted(imported_top_level_modules(path) & FORBIDDEN_IMPORTS[folder])
        for path in sources
    }
    assert {path: names for path, names in violations.items() if names} == {}


def test_serving_runs_without_torch_loaded() -> None:
    """Importing every serving module leaves torch, pulumi and models out of sys.modules."""
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "serving").rglob("*.py")
        if path.name != "__main__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'pulumi', 'models'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_make_serve_builds_the_local_stacks_model() -> None:
    makefile = (ROOT / "Makefile").read_text()
    model = re.search(r"^MODEL \?= (\S+)$", makefile, re.M)
    compression = re.search(r"^COMPRESSION \?= (\S+)$", makefile, re.M)
    assert model and compression, "Makefile must define MODEL ?= and COMPRESSION ?= for make serve"
    config = yaml.safe_load((ROOT / "stacks" / "Pulumi.local.yaml").read_text())["config"]
    assert config["servedmodel:model"] == model.group(1)
    assert config.get("servedmodel:compression", "none") == compression.group(1)


def test_readme_names_the_two_commands_and_ci_runs_the_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make serve" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci and re.search(r"^make test$", ci, re.M)


def test_readme_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to missing {target}"


def test_requirements_are_pinned() -> None:
    for name in ["requirements.txt", "requirements-dev.txt", "serving/requirements.txt"]:
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r"):
                assert "==" in line, f"{name}: {line!r} is not pinned"
