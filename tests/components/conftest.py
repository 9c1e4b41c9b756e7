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


@pytest.fixture(scope="session")
def model_cache():
    """The models.build cache every program run of the session shares."""
    return pulumi_harness.model_cache_dir()


@pytest.fixture(scope="session")
def stack_runs(model_cache):
    """Each real stack file run once under the mocks (with an auth token given as a secret)."""
    return {stack: pulumi_harness.stack_run(stack) for stack in pulumi_harness.STACKS}
