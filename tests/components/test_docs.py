"""Pulumi.yaml, the loader, the stack files and docs/config.md stay in step."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from pulumi_harness import STACKS, project_config, stack_file
from servedmodel.components import config_doc
from servedmodel.components.settings import PROJECT_KEYS, STACK_ONLY_KEYS

ROOT = Path(__file__).resolve().parents[2]


def test_pulumi_yaml_runs_python_from_the_repo_venv_with_stacks_dir():
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "servedmodel" and project["stackConfigDir"] == "stacks"
    assert project["runtime"] == {"name": "python",
                                  "options": {"toolchain": "pip", "virtualenv": ".venv", "typechecker": "pyright"}}


def test_every_project_key_is_typed_defaulted_and_described():
    for key, decl in project_config().items():
        assert set(decl) >= {"type", "default", "description"}, key
        assert decl["type"] in ("string", "integer", "boolean", "array"), key
        assert "secret" not in decl, f"{key}: project-level config holds no secrets"


def test_the_loader_reads_exactly_the_declared_keys():
    declared = {k.split(":", 1)[1] for k in project_config()}
    assert declared == set(PROJECT_KEYS)


def test_stack_files_use_only_known_keys():
    known = set(project_config()) | {f"servedmodel:{k}" for k in STACK_ONLY_KEYS}
    for stack in STACKS:
        unknown = {k for k in stack_file(stack) if not k.startswith("aws:")} - known
        assert not unknown, f"Pulumi.{stack}.yaml sets undeclared keys {unknown}"


def test_model_and_compression_descriptions_name_every_choice():
    """The reference lists what the loader accepts: every zoo model, every compression."""
    from servedmodel.models.constants import COMPRESSIONS
    from servedmodel.models.zoo import ZOO

    config = project_config()
    described = {key: config[f"servedmodel:{key}"]["description"] for key in ("model", "compression")}
    for choices, key in ((tuple(ZOO), "model"), (COMPRESSIONS, "compression")):
        words = set(re.findall(r"[a-z0-9][a-z0-9-]*", described[key]))
        missing = [c for c in choices if c not in words]
        assert not missing, f"servedmodel:{key}'s description does not name {missing}"


def test_pulumi_yaml_config_and_the_reference_are_generated_from_the_declarations():
    """Each setting is declared once (`setting(...)` on its args field); Pulumi.yaml's `config:`
    block and docs/config.md are renderings of those declarations."""
    pulumi_yaml = (ROOT / "Pulumi.yaml").read_text()
    assert pulumi_yaml == config_doc.render_pulumi_yaml(pulumi_yaml), \
        "Pulumi.yaml's config block is stale: run python -m servedmodel.components.config_doc"
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == config_doc.render(), "docs/config.md is stale: run python -m servedmodel.components.config_doc"
    for key in STACK_ONLY_KEYS:
        assert f"`servedmodel:{key}`" in committed


def _workflow(name: str) -> dict:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as a boolean
    return doc


def _pulumi_step(job: dict) -> dict:
    [step] = [s for s in job["steps"] if str(s.get("uses", "")).startswith("pulumi/actions@")]
    return step["with"]


def test_pr_workflow_previews_every_cloud_stack_with_the_policy_pack_and_comments():
    wf = _workflow("pulumi-preview.yml")
    assert "pull_request" in wf["on"]
    job = wf["jobs"]["preview"]
    cloud = sorted(p.name.split(".")[1] for p in (ROOT / "stacks").glob("Pulumi.*.yaml")
                   if yaml.safe_load(p.read_text())["config"].get("servedmodel:target") == "kubernetes")
    assert sorted(job["strategy"]["matrix"]["stack"]) == cloud
    step = _pulumi_step(job)
    assert step["command"] == "preview" and step["policyPacks"] == "policy"
    assert step["comment-on-pr"] is True and step["diff"] is True
    assert wf["permissions"]["pull-requests"] == "write"
    assert any("policy/requirements.txt" in s.get("run", "") for s in job["steps"])


def test_merge_workflow_runs_up_dev_then_prod():
    wf = _workflow("pulumi-up.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    job = wf["jobs"]["up"]
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"] and job["strategy"]["max-parallel"] == 1
    step = _pulumi_step(job)
    assert step["command"] == "up" and step["policyPacks"] == "policy"
    assert wf["concurrency"]["cancel-in-progress"] is False


def test_deploy_doc_has_one_prerequisites_table_with_a_check_for_each():
    """Issue 8, finding 5: every cluster prerequisite, which settings need it, how to check it."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("## Prerequisites in the cluster", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]
    wanted = {"node autoscaler": "gpu > 0", "metrics-server": "autoscaleMetric: cpu",
              "prometheus-adapter": "autoscaleMetric: inflight",
             "AWS Load Balancer Controller": "serviceType: LoadBalancer",
              "network-policy enforcement": "NetworkPolicy", "NVIDIA device plugin": "AL2023_x86_64_NVIDIA"}
    for name, setting in wanted.items():
        [row] = [r for r in rows if name in r.split(" | ")[0]]
        _, needed, check = row.strip("| ").split(" | ", 2)
        assert setting in needed, row
        assert "kubectl" in check, row
    # The old claim that the cpu metric needs nothing is gone.
    assert "no extra cluster components" not in text
    assert "metrics-server" in text.split("autoscaleMetric: cpu`: ", 1)[1][:300]
