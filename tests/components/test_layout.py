"""The components world runs one direction (issue 20): stack config -> settings -> args ->
components -> resources, each helper with its concept.

- `components/args/` imports only the facts it checks against (gpus.py, karpenter.py's and
  keda.py's grammars, specs.py's constants, inputs.py), never a component or the settings;
- those leaf modules import no args, settings or component;
- no component goes back to the args package for a helper that lives with its concept;
- only components/settings.py reads the stack config; specs.py stays pure builders.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ROOT / "components"
LEAVES = {"gpus", "karpenter", "keda", "specs", "inputs", "platforms"}
# Helpers that live with their concepts (the args package re-exports them for old importers only).
MOVED = {"gpu_limit_needed": "karpenter", "instance_families": "gpus", "IMAGE_GPU_FAMILIES": "gpus",
         "KARPENTER_DEFAULTS": "karpenter", "KEDA_METRICS": "keda", "CAPACITY_TYPES": "karpenter",
         "CONSOLIDATION_POLICIES": "karpenter", "GPUS_PER_INSTANCE": "gpus", "ROLLOUT_SURGE": "specs"}


def components_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(components module imported, names) for each relative import of `path`."""
    package = path.relative_to(COMPONENTS).parent.parts  # () for components/x.py, ("args",) for args/x.py
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - (node.level - 1)]
            target = (*base, *(node.module.split(".") if node.module else ()))
            if not target:  # `from . import specs, canary`
                out += [(alias.name, []) for alias in node.names]
            else:
                out.append((target[0], [alias.name for alias in node.names]))
    return out


def test_the_args_import_only_the_facts_they_check_against():
    for path in sorted((COMPONENTS / "args").glob("*.py")):
        outside = {module for module, _ in components_imports(path) if module != "args"}
        assert outside <= LEAVES, f"{path.relative_to(ROOT)} imports {outside - LEAVES}"


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_the_leaf_modules_import_no_args_settings_or_component(leaf):
    imported = {module for module, _ in components_imports(COMPONENTS / f"{leaf}.py")}
    assert imported <= LEAVES, f"components/{leaf}.py imports {imported - LEAVES}"


def test_no_component_goes_back_to_the_args_for_a_helper_of_another_concept():
    for path in sorted(COMPONENTS.glob("*.py")):
        for module, names in components_imports(path):
            back = [n for n in names if n in MOVED] if module == "args" else []
            assert not back, f"{path.name} takes {back} from args: import them from {[MOVED[n] for n in back]}"


def test_only_the_settings_read_the_stack_config():
    readers = set()
    for path in sorted(COMPONENTS.rglob("*.py")):
        text = path.read_text()
        if any(call in text for call in ("pulumi.Config(", "get_config(", "get_config_env(", "require_secret(")):
            readers.add(path.relative_to(COMPONENTS).as_posix())
    assert readers == {"settings.py"}


def test_specs_stay_pure_builders():
    tree = ast.parse((COMPONENTS / "specs.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "dataclasses", "hashlib", "json", "typing", "servedmodel"}, imported
