"""Capacity that exists (issue 8, findings 3 and 7): GPU families the image runs on, a pool that
holds the rollout, private subnets, and the Deployment ordered after its nodes."""
from __future__ import annotations

import pulumi
import pytest

import pulumi_harness
from servedmodel.components import ArgsError, NodePoolArgs, gpus
from pulumi_harness import TEST_SECRET, run_program
from test_settings import problems

SECRETS = {"servedmodel:authToken": TEST_SECRET}


@pytest.mark.parametrize("instance_type", ["p3.2xlarge", "p3.16xlarge", "p3dn.24xlarge", "p2.xlarge", "g3.4xlarge",
                                           "g4ad.xlarge", "g5g.xlarge"])
def test_gpu_families_the_image_cannot_run_are_refused_with_the_reason(instance_type):
    found = problems("prod", {"servedmodel:nodeInstanceTypes": [instance_type]}, {"servedmodel:authToken": "t"})
    [msg] = [p for p in found if p.startswith(f"servedmodel:nodeInstanceTypes = {instance_type!r}")]
    assert gpus.unsupported_reason(instance_type) in msg and "Turing or newer" in msg


def test_volta_is_refused_because_of_cuda_13():
    assert "Volta" in gpus.unsupported_reason("p3.8xlarge") and "CUDA 13" in gpus.unsupported_reason("p3.8xlarge")
    assert gpus.unsupported_reason("g4dn.xlarge") is None and gpus.unsupported_reason("p5.48xlarge") is None
    # One list for every provisioner (issue 11's Karpenter requirements read it too).
    assert {"p3", "p3dn", "p2", "g3", "g3s", "g4ad", "g5g"} <= set(gpus.unsupported_families())
    assert list(gpus.unsupported_families()) == sorted(gpus.unsupported_families())
    assert not [t for t in gpus.GPUS_PER_INSTANCE if gpus.unsupported_reason(t)]


def test_node_pool_args_refuse_a_volta_type_naming_the_field():
    with pytest.raises(ArgsError) as err:
        NodePoolArgs(cluster_name="c", instance_types=("p3.2xlarge", "g5.xlarge"))
    assert "node_pool.instance_types = 'p3.2xlarge': p3.2xlarge: NVIDIA V100 (Volta" in str(err.value)


@pytest.mark.parametrize("overrides, fits", [
    ({"servedmodel:maxReplicas": 10, "servedmodel:nodeMax": 10}, False),   # 10 + 1 surge on 10 one-GPU nodes
    ({"servedmodel:maxReplicas": 10, "servedmodel:nodeMax": 11}, True),
    ({"servedmodel:replicas": 2, "servedmodel:maxReplicas": 2, "servedmodel:nodeMax": 2}, False),  # no HPA: 2 + 1
    ({"servedmodel:replicas": 2, "servedmodel:maxReplicas": 2, "servedmodel:nodeMax": 3}, True),
    ({"servedmodel:gpu": 2, "servedmodel:nodeInstanceTypes": ["g5.12xlarge"], "servedmodel:nodeMax": 5}, False),  # 2/node
    ({"servedmodel:gpu": 2, "servedmodel:nodeInstanceTypes": ["g5.12xlarge"], "servedmodel:nodeMax": 6}, True),
])
def test_a_gpu_rollout_must_fit_the_pool_maximum(overrides, fits):
    from servedmodel.components.settings import parse_settings
    from test_settings import raw_for

    config = {"servedmodel:nodeMin": 1, "servedmodel:nodeDesired": 1, **overrides}
    if fits:
        parse_settings(*raw_for("prod", config, {"servedmodel:authToken": "t"}))
    else:
        found = problems("prod", config, {"servedmodel:authToken": "t"})
        [msg] = [p for p in found if p.startswith("servedmodel:nodeMax")]
        assert "servedmodel:maxReplicas" in msg and "rollout surge" in msg and "raise servedmodel:nodeMax to at least" in msg


def test_gpu_nodes_default_to_the_clusters_private_subnets(stack_runs):
    group = stack_runs["prod"].one("aws:eks/nodeGroup:NodeGroup")
    private = sorted(s for s, tags in pulumi_harness.SUBNETS.items() if tags.get("kubernetes.io/role/internal-elb") == "1")
    assert group.inputs["subnetIds"] == private and len(private) < len(pulumi_harness.SUBNETS)


def test_given_subnets_are_used_as_they_are(model_cache):
    run = run_program("prod", {"servedmodel:nodeSubnetIds": ["subnet-0a1b2c3d4e5f60003"]}, secrets=SECRETS)
    assert run.one("aws:eks/nodeGroup:NodeGroup").inputs["subnetIds"] == ["subnet-0a1b2c3d4e5f60003"]


def test_a_cluster_without_private_subnets_stops_with_what_to_do():
    from servedmodel.components.gpu_node_pool import require_private_subnets

    assert require_private_subnets("c", ["subnet-b", "subnet-a"]) == ["subnet-a", "subnet-b"]
    with pytest.raises(pulumi.RunError) as err:
        require_private_subnets("c", [])
    assert "no subnet tagged kubernetes.io/role/internal-elb=1" in str(err.value)
    assert "servedmodel:nodeSubnetIds" in str(err.value)


def test_the_deployment_depends_on_the_node_group(stack_runs):
    """The edge exists (the pool label is read back from the node group); the engine-view tests
    of issue 8 check it with the other ordering edges."""
    run = stack_runs["prod"]
    group = run.one("aws:eks/nodeGroup:NodeGroup")
    # prod rolls out as a canary: its pods come from the Rollout (issue 12).
    deployment = run.one("kubernetes:argoproj.io/v1alpha1:Rollout")
    assert group.urn in deployment.dependencies
