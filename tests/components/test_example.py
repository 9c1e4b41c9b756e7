"""examples/standalone: a program of its own uses ServedModel without the stack settings.

It runs under the same mocks as the stack program, with its own project and config; its
Kubernetes objects are validated strictly against the cluster schema.
"""
from __future__ import annotations

import ast

import kubernetes_validate
import pytest

from pulumi_harness import KUBERNETES_VERSION, ROOT, TEST_SECRET, kubernetes_manifest, run_file

PROGRAM = ROOT / "examples" / "standalone" / "__main__.py"
KUBECONFIG = "apiVersion: v1\nkind: Config\n"


PROJECT = "served-digits"
# The two ways the example is run: (config, secret keys). tests/components/test_installed.py runs
# the same from the installed wheel and checks the runs with the same checks below.
CONFIGS: dict[str, tuple[dict[str, str], set[str]]] = {
    "docker": ({"served-digits:target": "docker"}, set()),
    "kubernetes": ({"served-digits:target": "kubernetes", "served-digits:kubeconfig": KUBECONFIG},
                   {"served-digits:kubeconfig"}),
}


def run_example(target: str = "docker"):
    config, secrets = CONFIGS[target]
    return run_file(PROGRAM, PROJECT, "example", config, secrets)


def test_the_example_never_reads_the_stack_settings():
    tree = ast.parse(PROGRAM.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "ServedModelArgs" in imported and "ServedModel" in imported
    assert not imported & {"load_settings", "parse_settings", "Settings"}
    assert "servedmodel:" not in PROGRAM.read_text()


def test_the_example_serves_its_model_in_a_local_container(model_cache):
    check_local_container(run_example("docker"))


def check_local_container(run) -> None:
    [container] = run.of_type("docker:index/container:Container")
    assert container.inputs["ports"] == [{"internal": 8080, "external": 8091, "ip": "127.0.0.1"}]
    image = run.one("docker-build:index:Image")
    assert image.inputs["context"]["location"] == "build/digits"  # relative to the example's directory
    assert run.outputs["url"] == "http://127.0.0.1:8091"
    assert len(run.outputs["modelVersion"]) == 16 and run.outputs["signature"]["inputs"]
    assert not run.of_type("pulumi:providers:kubernetes")


def test_the_example_on_a_cluster_brings_its_own_provider_and_valid_objects(model_cache):
    check_cluster(run_example("kubernetes"))


def check_cluster(run) -> None:
    provider = run.one("pulumi:providers:kubernetes")
    assert provider.name == "cluster" and "kubeconfig" in provider.secret_paths
    objects = [r for r in run.resources if r.type.startswith("kubernetes:")]
    assert {r.type for r in objects} >= {"kubernetes:apps/v1:Deployment", "kubernetes:core/v1:Service",
                                         "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"}
    for r in objects:
        assert r.provider.startswith(provider.urn + "::")
        kubernetes_validate.validate(kubernetes_manifest(r), KUBERNETES_VERSION, strict=True)
    hpa = run.one("kubernetes:autoscaling/v2:HorizontalPodAutoscaler").inputs["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 3)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    [c] = run.one("kubernetes:apps/v1:Deployment").inputs["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert TEST_SECRET not in repr(run.outputs)


def test_a_bad_group_is_refused_when_it_is_created_naming_every_field():
    from servedmodel.components import ArgsError, AutoscalingArgs

    with pytest.raises(ArgsError) as err:
        AutoscalingArgs(replicas=5, max_replicas=2, metric="gpu", target_cpu_percent=150)
    text = str(err.value)
    assert text.startswith("invalid AutoscalingArgs (3 problems):")
    assert "autoscaling.replicas = 5: must not exceed autoscaling.max_replicas (2)" in text
    assert "autoscaling.metric = 'gpu': accepted: one of inflight, queue, cpu" in text
    assert "autoscaling.target_cpu_percent = 150: must be between 1 and 100" in text
