"""Fixtures for the image tests; the helpers are in imagekit.py.

.ci/prepare-docker.sh provides the Docker engine, the registry on 127.0.0.1:5000 and a stand-in
for the Dockerfile's base image before `make test`; .ci/prepare-arm64.sh lets the engine build
and run linux/arm64 (the `arm64` tests). Where something is missing the tests skip with the
reason; in CI (CI=true) they fail instead.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from imagekit import ARM64_BASE_IMAGE, ARM64_HANDLER, BASE_IMAGE, REGISTRY, Images, docker, http_status, unavailable


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


@pytest.fixture(scope="session")
def arm64_engine(docker_engine) -> str:
    """What runs arm64 here (the emulator's package version, from its handler); skips (or fails
    in CI) unless the engine can build and run linux/arm64 images: the kernel's aarch64 handler
    with the F flag (containers hold no emulator), the arm64 stand-in base, and a container
    that really runs as aarch64."""
    fix = "run .ci/prepare-arm64.sh as root"
    try:
        handler = ARM64_HANDLER.read_text().splitlines()
    except OSError:
        unavailable(f"this engine cannot run linux/arm64: no aarch64 binfmt handler "
                    f"({ARM64_HANDLER} is absent: binfmt_misc unmounted or nothing registered); {fix}")
    if not handler or handler[0] != "enabled":
        unavailable(f"this engine cannot run linux/arm64: the aarch64 binfmt handler is disabled; {fix}")
    flags = next((line.split(":", 1)[1].strip() for line in handler if line.startswith("flags:")), "")
    if "F" not in flags:
        unavailable(f"the aarch64 binfmt handler lacks the F flag ({flags!r}), so containers "
                    f"cannot reach the emulator; {fix}")
    arch = docker("image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", ARM64_BASE_IMAGE,
                  check=False)
    if arch.returncode or arch.stdout.strip() != "linux/arm64":
        unavailable(f"no linux/arm64 base {ARM64_BASE_IMAGE} in the engine "
                    f"({(arch.stdout or arch.stderr).strip()[:120]}); {fix}")
    probe = docker("run", "--rm", "--network", "host", "--platform", "linux/arm64", ARM64_BASE_IMAGE,
                   "python3", "-c", "import platform; print(platform.machine())", check=False,
                   timeout=300)
    if probe.returncode or probe.stdout.strip() != "aarch64":
        unavailable(f"an arm64 container does not run: {(probe.stdout + probe.stderr).strip()[-300:]}; {fix}")
    return next(line.split(" ", 1)[1] for line in handler if line.startswith("interpreter "))
