"""Fixtures for the models/ tests: one private cache per session, and each (model,
compression) built once per session, so the suite stays fast on two cores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FACTORIES = Path(__file__).resolve().parent / "factories" / "exotic.py"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("servedmodel-cache")


@pytest.fixture(scope="session")
def build_once(tmp_path_factory, cache_dir):
    """build_once(model, compression) -> BuildResult, built (or cache-hit) once per session."""
    import servedmodel.models as models

    built: dict = {}

    def get(model: str, compression: str = "none", device: str = "cpu"):
        key = (model, compression, device)
        if key not in built:
            out = tmp_path_factory.mktemp("ctx") / "context"
            built[key] = models.build(model, compression=compression, out_dir=out, device=device,
                                      cache_dir=cache_dir)
        return built[key]

    return get


def run_cli(*args: str, cache_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m models ...` as a user runs it, with the session's private cache."""
    env = {**os.environ, "SERVEDMODEL_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    env.pop("SERVEDMODEL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "models", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def cli_json(proc: subprocess.CompletedProcess) -> dict:
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got: {proc.stdout!r}"
    return json.loads(lines[0])


def cache_key_of(model: str, compression: str, *, cache_dir: Path, device: str = "cpu", export_only: bool = False,
                 max_metric_drop: float | None = None) -> str:
    """The key build() files `model` under: like build(), it calls the factory (with the cache's
    trained weights) and fingerprints the spec it returns."""
    from servedmodel.models import cache as cache_mod
    from servedmodel.models.fingerprint import spec_fingerprint
    from servedmodel.models.loader import load_spec, parse_ref

    mref = parse_ref(model)
    with cache_mod.building_with(cache_mod.cache_root(cache_dir)):
        spec = load_spec(mref)
    return cache_mod.cache_key(mref, compression, device, spec_digest=spec_fingerprint(spec).digest,
                               export_only=export_only, max_metric_drop=max_metric_drop)
