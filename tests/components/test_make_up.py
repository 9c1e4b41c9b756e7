"""`make up` says clearly what is missing before it tries anything."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def make_up(**variables: str) -> subprocess.CompletedProcess:
    args = ["make", "--no-print-directory", "up"] + [f"{k}={v}" for k, v in variables.items()]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)


pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def test_missing_pulumi_cli_is_named_with_how_to_install_it():
    result = make_up(PULUMI="pulumi-not-installed-here")
    assert result.returncode != 0
    assert "error: the Pulumi CLI ('pulumi-not-installed-here') was not found" in result.stderr
    assert "https://www.pulumi.com/docs/install/" in result.stderr and "no account is needed" in result.stderr
    assert not (ROOT / ".state" / "pulumi-not-installed-here").exists()


def test_missing_docker_is_named_once_the_cli_is_there():
    # PULUMI points at an executable that exists (the check only looks the command up), DOCKER at
    # one that does not: the second check must stop make up with its own message.
    result = make_up(PULUMI=sys.executable, DOCKER="docker-not-installed-here")
    assert result.returncode != 0
    assert "error: Docker is not available ('docker-not-installed-here info' failed)" in result.stderr
    assert "start its engine" in result.stderr


def test_make_up_uses_a_local_file_backend_and_the_local_stack():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nup:", 1)[1].split("\n\n", 1)[0]
    assert "PULUMI_BACKEND_URL=file://$(CURDIR)/$(STATE_DIR)" in recipe
    assert "PULUMI_CONFIG_PASSPHRASE" in recipe and "up --stack local" in recipe
    assert "/.state/" in (ROOT / ".gitignore").read_text()
