"""The elastic keys (components/elastic.py parse_elastic): each scale-to-zero misconfiguration
is a config problem naming the keys involved; a good burst config parses."""
from __future__ import annotations

import pytest
import yaml

from components import elastic
from components.settings import _problem

from pulumi_harness import ROOT

SUPPORTED = ("g4dn", "g5", "g6", "g6e", "p4d", "p5")
DEFAULTS = {key[len("servedmodel:"):]: decl["default"]
            for key, decl in yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"].items()
            if key[len("servedmodel:"):] in elastic.ELASTIC_FIELDS}
STACK = {"target": "kubernetes", "gpu": 1, "replicas": 1, "maxReplicas": 4, "autoscaleMetric": "inflight",
         "serviceType": "ClusterIP", "nodeInstanceTypes": ("g5.xlarge", "g6.xlarge")}
BURST = {"nodeProvisioner": "karpenter", "autoscaler": "keda", "minReplicas": 0, "kedaHttp": True,
         "capacityTypes": ["spot", "on-demand"]}


def parse(elastic_overrides=None, stack_overrides=None):
    problems: list[str] = []
    raw = DEFAULTS | BURST | (elastic_overrides or {})
    got = elastic.parse_elastic(raw, STACK | (stack_overrides or {}), problems, _problem,
                                supported_families=SUPPORTED, surge=1)
    return got, problems


def test_every_elastic_key_is_declared_in_pulumi_yaml():
    assert set(DEFAULTS) == set(elastic.ELASTIC_FIELDS)


def test_the_burst_config_parses():
    got, problems = parse()
    assert problems == []
    assert got.karpenter and got.keda and got.min_replicas == 0 and got.keda_http
    assert got.capacity_types == ("spot", "on-demand") and got.node_role("demo") == "KarpenterNodeRole-demo"


def test_the_defaults_change_nothing():
    problems: list[str] = []
    got = elastic.parse_elastic(DEFAULTS, STACK, problems, _problem, supported_families=SUPPORTED, surge=1)
    assert problems == [] and not got.karpenter and not got.keda and got.min_replicas == 1


@pytest.mark.parametrize("overrides, stack, needles", [
    ({"autoscaler": "hpa", "kedaHttp": False}, {}, ["servedmodel:minReplicas = 0", "needs servedmodel:autoscaler keda"]),
    ({"kedaHttp": False}, {}, ["servedmodel:minReplicas = 0", "needs servedmodel:kedaHttp true"]),
    ({"autoscaler": "hpa"}, {}, ["servedmodel:kedaHttp = True", "needs servedmodel:autoscaler keda"]),
    ({}, {"nodeInstanceTypes": ("p3.2xlarge",)}, ["servedmodel:nodeInstanceTypes", "['p3'] cannot run the serving image"]),
    ({"gpuLimit": 3}, {}, ["servedmodel:gpuLimit = 3", "servedmodel:maxReplicas (4) + 1 rollout surge",
                           "servedmodel:gpu (1) = 5 GPUs"]),
    ({}, {"autoscaleMetric": "cpu"}, ["servedmodel:autoscaleMetric = 'cpu'", "with servedmodel:autoscaler keda"]),
    ({}, {"serviceType": "LoadBalancer"}, ["servedmodel:kedaHttp", "past the interceptor"]),
    ({"minReplicas": 2, "autoscaler": "hpa", "kedaHttp": False}, {}, ["servedmodel:minReplicas = 2", "with hpa"]),
    ({"minReplicas": 5}, {}, ["servedmodel:minReplicas = 5", "must not exceed servedmodel:maxReplicas (4)"]),
    ({}, {"gpu": 0}, ["servedmodel:nodeProvisioner = 'karpenter'", "servedmodel:gpu > 0"]),
    ({"capacityTypes": ["reserved"]}, {}, ["servedmodel:capacityTypes"]),
    ({"consolidateAfter": "5 min"}, {}, ["servedmodel:consolidateAfter = '5 min'"]),
    ({"karpenterAmiAlias": "al2023@latest"}, {}, ["servedmodel:karpenterAmiAlias"]),
    ({"karpenterSubnetIds": ["subnet_1"]}, {}, ["servedmodel:karpenterSubnetIds = ['subnet_1']"]),
    ({"prometheusUrl": "prometheus:9090"}, {}, ["servedmodel:prometheusUrl"]),
    ({"pullBandwidthMBps": 0}, {}, ["servedmodel:pullBandwidthMBps = 0"]),
    ({"nodeProvisioner": "fargate"}, {}, ["servedmodel:nodeProvisioner = 'fargate'", "managed, karpenter"]),
])
def test_each_misconfiguration_names_its_keys(overrides, stack, needles):
    got, problems = parse(overrides, stack)
    assert got is None
    text = "\n".join(problems)
    for needle in needles:
        assert needle in text, (needle, problems)


def test_gpu_limit_zero_means_what_the_replicas_need():
    got, problems = parse({"gpuLimit": 0})
    assert problems == [] and got.gpu_limit == 0
    assert elastic.gpu_limit_needed(gpu=2, max_replicas=4, surge=1) == 10
