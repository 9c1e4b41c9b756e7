"""Fixtures for the Pulumi program tests: one models.build cache for the whole session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The program's packages (components/, models/) import from the repository root, as under the CLI.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pulumi_harness  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Every stack's models.build shares one cache: each model is exported once per session."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("servedmodel-cache")
    mp.setenv("SERVEDMODEL_CACHE", str(cache))
    yield cache
    mp.undo()


@pytest.fixture(scope="session")
def stack_runs(model_cache):
    """Each real stack file run once under the mocks (with an auth token given as a secret)."""
    return {stack: pulumi_harness.run_program(stack, secrets={"servedmodel:authToken": pulumi_harness.TEST_SECRET})
            for stack in pulumi_harness.STACKS}
