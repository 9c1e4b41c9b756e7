"""Fixtures for the monitoring tests; the helpers are in promkit.py.

.ci/prepare-prometheus.sh installs Debian's prometheus package (server and promtool) before
`make test`. Where the binaries are missing the tests skip with the reason; in CI (CI=true)
they fail instead.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from promkit import binary


@pytest.fixture(scope="session")
def promtool() -> str:
    return binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return binary("prometheus")
