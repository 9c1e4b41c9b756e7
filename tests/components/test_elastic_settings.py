"""The elastic keys through the real settings parser: every scale-to-zero misconfiguration is a
config error naming the keys involved; the burst stack parses into Karpenter + KEDA + min 0."""
from __future__ import annotations

import pytest

from pulumi_harness import project_config
from servedmodel.components.args import IMAGE_GPU_FAMILIES, ElasticArgs, gpu_limit_needed
from servedmodel.components.settings import SCHEMA, parse_settings
from test_settings import problems, raw_for


def test_every_elastic_key_is_declared_and_read():
    declared = {k.split(":", 1)[1] for k in project_config()}
    elastic_keys = {d.key for d in SCHEMA.settings if d.path.startswith("elastic.")}
    assert len(elastic_keys) == 19 and elastic_keys <= declared


def test_the_burst_stack_is_karpenter_keda_and_scale_to_zero():
    [a] = parse_settings(*raw_for("burst")).served
    e = a.elastic
    assert e.karpenter and e.keda and e.min_replicas == 0 and e.keda_http
    assert e.capacity_types == ("spot", "on-demand")
    assert e.node_role("servedmodel-prod") == "KarpenterNodeRole-servedmodel-prod"
    assert a.resources.gpu == 1 and a.node_pool.instance_types == ("g5.xlarge", "g6.xlarge")


@pytest.mark.parametrize("stack", ["local", "dev", "prod"])
def test_the_other_stacks_keep_managed_nodes_and_the_hpa(stack):
    raw, secrets = raw_for(stack, secrets={"servedmodel:authToken": "t" * 24})
    for a in parse_settings(raw, secrets).served:
        assert a.elastic == ElasticArgs()


@pytest.mark.parametrize("overrides, needles", [
    ({"servedmodel:autoscaler": "hpa", "servedmodel:kedaHttp": False},
     ["servedmodel:minReplicas = 0", "needs servedmodel:autoscaler keda"]),
    ({"servedmodel:kedaHttp": False}, ["servedmodel:minReplicas = 0", "needs servedmodel:kedaHttp true"]),
    ({"servedmodel:autoscaler": "hpa", "servedmodel:minReplicas": 1},
     ["servedmodel:kedaHttp = True", "needs servedmodel:autoscaler keda"]),
    ({"servedmodel:nodeInstanceTypes": ["p3.2xlarge"]},
     ["servedmodel:nodeInstanceTypes", "CUDA 13 dropped Volta"]),
    ({"servedmodel:gpuLimit": 3}, ["servedmodel:gpuLimit = 3", "(servedmodel:maxReplicas (4) + 1 rollout surge) x "
                                   "servedmodel:gpu (1) = 5 GPUs"]),
    ({"servedmodel:autoscaleMetric": "cpu"},
     ["servedmodel:autoscaleMetric = 'cpu'", "with servedmodel:autoscaler keda"]),
    ({"servedmodel:serviceType": "LoadBalancer", "servedmodel:allowLoadBalancer": True,
      "servedmodel:tlsCertificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d",
      "servedmodel:hostname": "burst.example.com", "servedmodel:dnsZoneId": "Z0123456789ABC"},
     ["servedmodel:kedaHttp = True", "past the interceptor"]),
    ({"servedmodel:minReplicas": 5}, ["servedmodel:minReplicas = 5", "must not exceed servedmodel:maxReplicas (4)"]),
    ({"servedmodel:gpu": 0, "servedmodel:nodeInstanceTypes": []},
     ["servedmodel:nodeProvisioner = 'karpenter'", "servedmodel:gpu > 0 or servedmodel:nodeInstanceTypes"]),
    ({"servedmodel:capacityTypes": ["reserved"]}, ["servedmodel:capacityTypes = ['reserved']"]),
    ({"servedmodel:consolidateAfter": "5 min"}, ["servedmodel:consolidateAfter = '5 min'"]),
    ({"servedmodel:karpenterAmiAlias": "al2023@latest"}, ["servedmodel:karpenterAmiAlias"]),
    ({"servedmodel:karpenterSubnetIds": ["subnet_1"]}, ["servedmodel:karpenterSubnetIds = ['subnet_1']"]),
    ({"servedmodel:prometheusUrl": "prometheus:9090"}, ["servedmodel:prometheusUrl"]),
    ({"servedmodel:pullBandwidthMBps": 0}, ["servedmodel:pullBandwidthMBps = 0"]),
    ({"servedmodel:nodeProvisioner": "fargate"}, ["servedmodel:nodeProvisioner = 'fargate'", "managed, karpenter"]),
])
def test_each_misconfiguration_names_its_keys(overrides, needles):
    text = "\n".join(problems("burst", overrides, {"servedmodel:authToken": "t" * 24}))
    for needle in needles:
        assert needle in text, (needle, text)


def test_min_replicas_other_than_one_with_hpa_is_refused():
    text = "\n".join(problems("dev", {"servedmodel:minReplicas": 2}, {"servedmodel:authToken": "t" * 24}))
    assert "servedmodel:minReplicas = 2" in text and "with hpa the minimum is servedmodel:replicas" in text


def test_karpenter_replaces_the_node_groups_capacity_rule_by_its_gpu_limit():
    # nodeMax 1 fits 1 replica: the managed rule would refuse maxReplicas 4; Karpenter's pool is
    # bounded by its GPU limit (0 = what the replicas need) instead. The rule needs EC2's figures
    # of the instance types (components/capacity.py; the recorded ones in test_capacity.py).
    from servedmodel.components import capacity
    from test_capacity import FACTS

    sizes = {"servedmodel:nodeMax": 1, "servedmodel:nodeDesired": 1, "servedmodel:nodeMin": 0}
    [a] = parse_settings(*raw_for("burst", sizes)).served
    assert a.elastic.karpenter and capacity.fit_problems(a, FACTS) == []
    [a] = parse_settings(*raw_for("burst", {"servedmodel:nodeProvisioner": "managed", "servedmodel:autoscaler": "hpa",
                                            "servedmodel:minReplicas": 1, "servedmodel:kedaHttp": False,
                                            **sizes})).served
    assert [p.field for p in capacity.fit_problems(a, FACTS)] == ["node_pool.max_size"]


def test_image_families_and_gpu_limit_arithmetic():
    assert "p3" not in IMAGE_GPU_FAMILIES and {"g5", "g6"} <= set(IMAGE_GPU_FAMILIES)
    assert gpu_limit_needed(gpu=2, max_replicas=4) == 10


def test_karpenter_defaults_are_stated_once():
    """The stack group, the component's own args and the stack schema (Pulumi.yaml) all carry
    the one set of Karpenter defaults (components.args.KARPENTER_DEFAULTS)."""
    from dataclasses import fields
    from pathlib import Path

    import yaml

    from servedmodel.components.args import KARPENTER_DEFAULTS, ElasticArgs
    from servedmodel.components.karpenter import KarpenterPoolArgs

    schema = yaml.safe_load((Path(__file__).resolve().parents[2] / "Pulumi.yaml").read_text())
    config = schema["config"]
    where = {"capacity_types": ("capacity_types", "capacityTypes"),
             "consolidation_policy": ("consolidation_policy", "consolidationPolicy"),
             "consolidate_after": ("consolidate_after", "consolidateAfter"),
             "disruption_budget_nodes": ("disruption_budget_nodes", "disruptionBudgetNodes"),
             "ami_alias": ("karpenter_ami_alias", "karpenterAmiAlias")}
    assert set(where) == {f.name for f in fields(KARPENTER_DEFAULTS)}
    elastic = {f.name: f.default for f in fields(ElasticArgs)}
    pool = {f.name: f.default for f in fields(KarpenterPoolArgs)}
    for name, (elastic_name, key) in where.items():
        value = getattr(KARPENTER_DEFAULTS, name)
        assert elastic[elastic_name] == value and pool[name] == value, name
        stated = config[f"servedmodel:{key}"]["default"]
        assert (tuple(stated) if isinstance(stated, list) else stated) == value, key


@pytest.mark.parametrize("overrides, needles", [
    # KEDA's trigger reads a scrape that nothing declares (issue 18).
    ({"servedmodel:monitoring": "none"}, ["servedmodel:monitoring = 'none'", "servedmodel:autoscaler keda",
                                          "prometheus-operator", "annotations"]),
    # gRPC would bypass the interceptor and find no pod at zero (issue 18).
    ({"servedmodel:grpcPort": 9000}, ["servedmodel:grpcPort = 9000", "servedmodel:kedaHttp"]),
])
def test_keda_needs_a_scrape_and_the_interceptor_no_grpc(overrides, needles):
    text = "\n".join(problems("burst", overrides, {"servedmodel:authToken": "t" * 24}))
    for needle in needles:
        assert needle in text, (needle, text)


def test_keda_with_a_declared_scrape_and_grpc_with_a_replica_are_accepted():
    for overrides in ({"servedmodel:monitoring": "annotations"},
                      {"servedmodel:grpcPort": 9000, "servedmodel:kedaHttp": False, "servedmodel:minReplicas": 1}):
        [a] = parse_settings(*raw_for("burst", overrides, {"servedmodel:authToken": "t" * 24})).served
        assert a.elastic.keda, overrides


def test_a_hostname_names_the_load_balancer_or_the_interceptor():
    """Issue 18, finding 11: behind scale to zero the public name is routed by the interceptor
    (a ClusterIP Service); elsewhere a hostname still needs the LoadBalancer."""
    from servedmodel.components.args import ElasticArgs, NetworkArgs
    from servedmodel.components.args.rules import cross_group_problems

    named = NetworkArgs(hostname="classifier.models.example.com")
    keda_http = ElasticArgs(autoscaler="keda", min_replicas=0, keda_http=True)
    assert not [p for p in cross_group_problems({"network": named, "elastic": keda_http})
                if p.field == "network.hostname"]
    [problem] = [p for p in cross_group_problems({"network": named, "elastic": ElasticArgs()})
                 if p.field == "network.hostname"]
    assert "LoadBalancer" in problem.accepted and "@{elastic.keda_http}" in problem.accepted
