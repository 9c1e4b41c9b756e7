"""Fixtures for the image tests; the helpers are in imagekit.py.

.ci/prepare-docker.sh provides the Docker engine, the registry on 127.0.0.1:5000 and a stand-in
for the Dockerfile's base image before `make test`. Where no engine exists the tests skip with
the reason; in CI (CI=true) a missing engine or registry fails them instead.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from imagekit import BASE_IMAGE, REGISTRY, Images, http_status, unavailable


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """The engine's version; skips (or fails in CI) where there is no Docker engine."""
    if shutil.which("docker") is None:
        unavailable("no docker CLI on this machine (run .ci/prepare-docker.sh as root)")
    proc = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        unavailable(f"no Docker engine answers ({proc.stderr.strip()[:200]}); "
                    "run .ci/prepare-docker.sh as root")
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode:
        unavailable(f"base image {BASE_IMAGE} is not in the local engine and no public registry "
                    "can be reached here; .ci/prepare-docker.sh builds a stand-in")
    return proc.stdout.strip()


@pytest.fixture(scope="session")
def registry(docker_engine) -> str:
    """The registry's address; skips (or fails in CI) where none listens on 127.0.0.1:5000."""
    if http_status(f"http://{REGISTRY}/v2/") != 200:
        unavailable(f"no registry answers on {REGISTRY} (run .ci/prepare-docker.sh)")
    return REGISTRY


@pytest.fixture(scope="session")
def images(docker_engine, tmp_path_factory) -> Images:
    return Images(tmp_path_factory.mktemp("contexts"))
