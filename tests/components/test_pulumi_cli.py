"""Integration: the real Pulumi CLI, providers and targets. Skipped, with the reason, where absent.

These machines cannot download the Pulumi CLI or its provider plugins, so here the program is
proven under Pulumi's mocks (test_stacks.py, test_change_safety.py). Where the CLI exists:
- local: `pulumi up` on a throwaway file backend, then an unchanged `preview` must show no
  changes, and a model-only change must preview an image update and a container replacement only;
- dev/prod (SERVEDMODEL_IT_KUBERNETES=1, AWS credentials, the clusters named in the stack files):
  `preview --policy-pack policy` must pass, and after `up` the same two change-safety checks hold
  with one image update and one Deployment update, no replacements or deletes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.pulumi_cli, pytest.mark.slow]

PULUMI = shutil.which("pulumi") or ""  # "": not installed
needs_cli = pytest.mark.skipif(not PULUMI, reason="the Pulumi CLI is not installed (it cannot be downloaded "
                                                       "on these machines); the mock tests cover the program")


def _docker_running() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "info"], capture_output=True).returncode == 0


needs_docker = pytest.mark.skipif(not _docker_running(), reason="no running Docker engine for the local stack")
needs_cluster = pytest.mark.skipif(
    os.environ.get("SERVEDMODEL_IT_KUBERNETES") != "1",
    reason="set SERVEDMODEL_IT_KUBERNETES=1 with AWS credentials and the EKS clusters named in "
           "stacks/Pulumi.{dev,prod}.yaml to preview/up the kubernetes stacks")


@pytest.fixture
def cli_env(tmp_path):
    backend = tmp_path / "state"
    backend.mkdir()
    env = dict(os.environ, PULUMI_BACKEND_URL=f"file://{backend}", PULUMI_CONFIG_PASSPHRASE="it-passphrase",
               PULUMI_SKIP_UPDATE_CHECK="1", SERVEDMODEL_CACHE=str(tmp_path / "cache"))
    return env


def pulumi(env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([PULUMI, *args, "--non-interactive"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1800)
    if check and result.returncode != 0:
        raise AssertionError(f"pulumi {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def config_with(stack: str, tmp_path: Path, **changes) -> Path:
    """A copy of the stack file with some keys changed (`--config-file`: the real file stays untouched)."""
    doc = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())
    doc["config"].update({f"servedmodel:{k}": v for k, v in changes.items()})
    path = tmp_path / f"Pulumi.{stack}.changed.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def preview_steps(env, stack: str, *extra: str) -> list[tuple[str, str]]:
    out = pulumi(env, "preview", "--stack", stack, "--json", *extra)
    steps = json.loads(out.stdout).get("steps", [])
    return sorted((s["op"], s["urn"].split("::")[-2].split("$")[-1]) for s in steps if s["op"] != "same")


def up_and_check_change_safety(env, stack: str, tmp_path: Path, changed_ops: set[tuple[str, str]]) -> None:
    pulumi(env, "stack", "select", "--create", stack)
    try:
        pulumi(env, "up", "--stack", stack, "--yes", "--skip-preview")
        pulumi(env, "preview", "--stack", stack, "--expect-no-changes")
        current = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]
        other = "fp16" if current.get("servedmodel:compression", "none") != "fp16" else "int8"
        changed = config_with(stack, tmp_path, compression=other)
        steps = preview_steps(env, stack, "--config-file", str(changed))
        assert set(steps) <= changed_ops and {t for _, t in steps} == {t for _, t in changed_ops}, steps
    finally:
        pulumi(env, "destroy", "--stack", stack, "--yes", "--skip-preview", check=False)


@needs_cli
@needs_docker
def test_local_stack_up_then_unchanged_preview_and_model_only_change(cli_env, tmp_path):
    # The docker provider replaces a container whose image changes (that is the local rollout;
    # the CLI may report it as replace or as its create-replacement/delete-replaced steps).
    up_and_check_change_safety(cli_env, "local", tmp_path, {
        ("replace", "docker:index/container:Container"), ("create-replacement", "docker:index/container:Container"),
        ("delete-replaced", "docker:index/container:Container"), ("update", "docker-build:index:Image")})


@needs_cli
@needs_cluster
@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_kubernetes_stack_preview_passes_the_policy_pack(cli_env, stack, tmp_path):
    pulumi(cli_env, "stack", "select", "--create", stack)
    # A copy of the stack file with the token secret (prod is public and needs one); the real
    # stack file stays untouched.
    config = config_with(stack, tmp_path)
    pulumi(cli_env, "config", "set", "--secret", "servedmodel:authToken", "it-token-0123456789",
           "--stack", stack, "--config-file", str(config))
    pulumi(cli_env, "preview", "--stack", stack, "--config-file", str(config), "--policy-pack", str(ROOT / "policy"))


@needs_cli
@needs_cluster
def test_dev_stack_up_then_unchanged_preview_and_model_only_change(cli_env, tmp_path):
    # dev serves two models through `models`; the flat compression is their default only where
    # an entry has none, so change the first entry directly.
    doc = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())
    models = doc["config"]["servedmodel:models"]
    pulumi(cli_env, "stack", "select", "--create", "dev")
    try:
        pulumi(cli_env, "up", "--stack", "dev", "--yes", "--skip-preview")
        pulumi(cli_env, "preview", "--stack", "dev", "--expect-no-changes")
        models[0]["compression"] = "fp16" if models[0].get("compression") != "fp16" else "none"
        changed = config_with("dev", tmp_path, models=models)
        assert preview_steps(cli_env, "dev", "--config-file", str(changed)) == [
            ("update", "docker-build:index:Image"), ("update", "kubernetes:apps/v1:Deployment")]
    finally:
        pulumi(cli_env, "destroy", "--stack", "dev", "--yes", "--skip-preview", check=False)
