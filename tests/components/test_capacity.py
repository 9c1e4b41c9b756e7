"""Capacity that exists (issue 8, findings 3 and 7; issue 18, finding 1): GPU families the image
runs on, replicas that fit the allocatable of every node their pool may launch (EC2's figures),
a pool that holds the rollout, private subnets, and the Deployment ordered after its nodes."""
from __future__ import annotations

from types import SimpleNamespace

import pulumi
import pytest

import pulumi_harness
from pulumi_harness import EC2_INSTANCE_TYPES, TEST_SECRET, run_program
from servedmodel.components import NodePoolArgs, capacity, gpus
from servedmodel.components.args import ResourcesArgs, cross_group_problems
from servedmodel.components.settings import parse_settings
from test_settings import problems, raw_for

SECRETS = {"servedmodel:authToken": TEST_SECRET}


def ec2(name: str) -> capacity.InstanceType:
    """EC2's figures for `name` (tests/components/ec2_instance_types.json) read as the invoke's
    result object is read."""
    d = EC2_INSTANCE_TYPES[name]["describeInstanceTypes"]
    result = SimpleNamespace(
        default_vcpus=d["defaultVcpus"], memory_size=d["memorySize"],
        gpuses=[SimpleNamespace(count=g["count"], manufacturer=g["manufacturer"], memory_size=g["memorySize"])
                for g in d["gpuses"]],
        supported_architectures=d["supportedArchitectures"], maximum_network_interfaces=d["maximumNetworkInterfaces"],
        maximum_ipv4_addresses_per_interface=d["maximumIpv4AddressesPerInterface"],
        default_network_card_index=d["defaultNetworkCardIndex"],
        # A set upstream: the default card is found by its index, whatever the order.
        network_cards=[SimpleNamespace(index=c["index"], maximum_interfaces=c["maximumInterfaces"])
                       for c in reversed(d["networkCards"])])
    return capacity.InstanceType.from_ec2(name, result)


FACTS = {name: ec2(name) for name in EC2_INSTANCE_TYPES}


def served(stack: str, overrides: dict | None = None):
    [args] = parse_settings(*raw_for(stack, overrides, {"servedmodel:authToken": "t"})).served
    return args


@pytest.mark.parametrize("name", sorted(EC2_INSTANCE_TYPES))
def test_allocatable_is_karpenters_for_every_recorded_type(name):
    """The formula (kubelet reservation, eviction threshold, VM overhead, ENI-limited pods) gives
    exactly the allocatable Karpenter's generated table lists for the type."""
    t, want = FACTS[name], EC2_INSTANCE_TYPES[name]["karpenter"]
    a = capacity.allocatable(t)
    assert (f"{a.cpu_millis}m", f"{a.memory_mib}Mi", t.max_pods) == (want["cpu"], want["memory"], want["pods"])


def test_the_default_network_card_counts_not_every_card():
    # p5.48xlarge: 64 interfaces over 32 cards, 2 on the default one: 100 pods, not 3138.
    assert FACTS["p5.48xlarge"].default_card_enis == 2 and FACTS["p5.48xlarge"].max_pods == 100
    assert FACTS["g5.xlarge"].max_pods == 58 and capacity.kube_reserved_cpu_millis(4) == 80
    assert (capacity.cpu_millis("3500m"), capacity.cpu_millis("4"), capacity.cpu_millis("0.5")) == (3500, 4000, 500)
    assert (capacity.memory_mib("13Gi"), capacity.memory_mib("8192Mi"), capacity.memory_mib("1G")) == (13312, 8192, 954)


@pytest.mark.parametrize("stack", ["prod", "burst"])
def test_the_shipped_gpu_stacks_fit_their_smallest_node(stack):
    args = served(stack)
    assert capacity.fit_problems(args, FACTS) == []
    # And they fit for a reason: one replica per g5.xlarge, within 3670m / 13906Mi.
    assert capacity.replicas_per_node(FACTS["g5.xlarge"], args.resources, 250, 256) == 1


@pytest.mark.parametrize("overrides, field, needles", [
    ({"servedmodel:cpu": "4"}, "resources.cpu",
     ["does not fit g5.xlarge: allocatable 3920m (4 vCPUs - 80m kubelet reservation) - 250m DaemonSet headroom "
      "(@{node_pool.daemon_set_cpu}) = 3670m"]),
    ({"servedmodel:cpu": "3700m"}, "resources.cpu", ["= 3670m"]),
    ({"servedmodel:memory": "14Gi"}, "resources.memory",
     ["does not fit g5.xlarge: allocatable 14162Mi (16384Mi - 1229Mi VM overhead - 893Mi kubelet reservation "
      "for 58 pods "
      "- 100Mi eviction threshold) - 256Mi DaemonSet headroom (@{node_pool.daemon_set_memory}) = 13906Mi"]),
    ({"servedmodel:gpu": 2}, "resources.gpu", ["does not fit g5.xlarge: EC2 gives it 1 NVIDIA GPU(s)"]),
    ({"servedmodel:daemonSetCpu": "500m"}, "resources.cpu", ["- 500m DaemonSet headroom", "= 3420m"]),
    # Every type the pool may launch must hold a replica: the smallest decides.
    ({"servedmodel:cpu": "7", "servedmodel:nodeInstanceTypes": ["g5.2xlarge", "g5.xlarge"]}, "resources.cpu",
     ["does not fit g5.xlarge"]),
])
def test_a_replica_that_cannot_fit_names_the_key_the_type_and_the_allocatable(overrides, field, needles):
    found = [p for p in capacity.fit_problems(served("prod", overrides), FACTS) if p.field == field]
    assert found, capacity.fit_problems(served("prod", overrides), FACTS)
    for needle in needles:
        assert needle in found[0].accepted, found[0].accepted


def test_a_larger_type_takes_the_request():
    assert capacity.fit_problems(served("prod", {"servedmodel:cpu": "7", "servedmodel:memory": "28Gi",
                                                 "servedmodel:nodeInstanceTypes": ["g5.2xlarge"]}), FACTS) == []


@pytest.mark.parametrize("preview", [False, True])
def test_the_program_stops_with_a_config_error_from_ec2s_figures(model_cache, preview):
    """Issue 18, finding 1: prod's old `cpu: "4"` on g5.xlarge never schedules. The check reads
    EC2 through the aws.ec2.get_instance_type invoke, which runs at preview too (never skipped),
    and stops the program before anything is declared, naming the stack key."""
    with pytest.raises(pulumi.RunError) as err:
        run_program("prod", {"servedmodel:cpu": "4"}, secrets=SECRETS, preview=preview)
    text = str(err.value)
    assert "servedmodel:cpu = '4': does not fit g5.xlarge: allocatable 3920m" in text
    assert "servedmodel:daemonSetCpu" in text and "= 3670m" in text


def test_karpenter_pools_are_checked_against_their_listed_types(model_cache):
    """burst: with cpu 4 Karpenter would quietly launch a g5.2xlarge (not what the cost and the
    cold-start budget describe): refused, naming the listed types it does not fit."""
    with pytest.raises(pulumi.RunError) as err:
        run_program("burst", {"servedmodel:cpu": "4"}, secrets=SECRETS)
    assert "does not fit g5.xlarge" in str(err.value) and "does not fit g6.xlarge" in str(err.value)


def test_each_instance_type_is_read_from_ec2_once_per_check(stack_runs):
    asked = [a["instanceType"] for t, a in stack_runs["burst"].invokes
             if t == "aws:ec2/getInstanceType:getInstanceType"]
    assert sorted(set(asked)) == ["g5.xlarge", "g6.xlarge"]
    asked = [a["instanceType"] for t, a in stack_runs["dev"].invokes if t == "aws:ec2/getInstanceType:getInstanceType"]
    assert asked == []  # CPU models run on the platform's nodes: nothing to check


@pytest.mark.parametrize("instance_type", ["p3.2xlarge", "p3.16xlarge", "p3dn.24xlarge", "p2.xlarge", "g3.4xlarge",
                                           "g4ad.xlarge"])
def test_gpu_families_the_image_cannot_run_are_refused_with_the_reason(instance_type):
    found = problems("prod", {"servedmodel:nodeInstanceTypes": [instance_type]}, {"servedmodel:authToken": "t"})
    [msg] = [p for p in found if p.startswith(f"servedmodel:nodeInstanceTypes = {instance_type!r}")]
    reason = gpus.unsupported_reason(instance_type)
    assert reason and reason in msg and "Turing or newer" in msg


def test_volta_is_refused_because_of_cuda_13():
    volta = gpus.unsupported_reason("p3.8xlarge") or ""
    assert "Volta" in volta and "CUDA 13" in volta
    assert gpus.unsupported_reason("g4dn.xlarge") is None and gpus.unsupported_reason("p5.48xlarge") is None
    # One list for every provisioner (issue 11's Karpenter requirements read it too).
    assert {"p3", "p3dn", "p2", "g3", "g3s", "g4ad"} <= set(gpus.unsupported_families())
    # Graviton's g5g is refused from EC2's architecture, not from this list (test_platforms.py).
    assert "g5g" not in gpus.unsupported_families()
    assert list(gpus.unsupported_families()) == sorted(gpus.unsupported_families())
    assert not set(gpus.SUPPORTED_GPU_FAMILIES) & set(gpus.unsupported_families())


def test_a_gpu_pool_refuses_a_volta_type_naming_the_field():
    # Which GPU families the image runs on is a rule of the model's GPUs and its pool together: a
    # CPU model's pool takes any type (its architecture and GPUs are then EC2's to say).
    pool = NodePoolArgs(cluster_name="c", instance_types=("p3.2xlarge", "g5.xlarge"))
    found = [p.render() for p in cross_group_problems({"resources": ResourcesArgs(gpu=1), "node_pool": pool})]
    assert found == [f"node_pool.instance_types = 'p3.2xlarge': {gpus.unsupported_reason('p3.2xlarge')}; use a "
                     f"Turing or newer NVIDIA type ({', '.join(gpus.SUPPORTED_GPU_FAMILIES)})"]
    assert not cross_group_problems({"resources": ResourcesArgs(gpu=0), "node_pool": pool})


@pytest.mark.parametrize("overrides, fits", [
    ({"servedmodel:maxReplicas": 10, "servedmodel:nodeMax": 10}, False),   # 10 + 1 surge on 10 one-GPU nodes
    ({"servedmodel:maxReplicas": 10, "servedmodel:nodeMax": 11}, True),
    ({"servedmodel:replicas": 2, "servedmodel:maxReplicas": 2, "servedmodel:nodeMax": 2}, False),  # no HPA: 2 + 1
    ({"servedmodel:replicas": 2, "servedmodel:maxReplicas": 2, "servedmodel:nodeMax": 3}, True),
    # 2/node:
    ({"servedmodel:gpu": 2, "servedmodel:nodeInstanceTypes": ["g5.12xlarge"], "servedmodel:nodeMax": 5}, False),
    ({"servedmodel:gpu": 2, "servedmodel:nodeInstanceTypes": ["g5.12xlarge"], "servedmodel:nodeMax": 6}, True),
    # 4 GPUs per g5.12xlarge, but its 47810m hold only 3 replicas of 15 CPUs: CPU decides.
    ({"servedmodel:cpu": "15", "servedmodel:nodeInstanceTypes": ["g5.12xlarge"], "servedmodel:nodeMax": 3}, False),
    ({"servedmodel:cpu": "15", "servedmodel:nodeInstanceTypes": ["g5.12xlarge"], "servedmodel:nodeMax": 4}, True),
])
def test_a_gpu_rollout_must_fit_the_pool_maximum(overrides, fits):
    config = {"servedmodel:nodeMin": 1, "servedmodel:nodeDesired": 1, **overrides}
    found = list(capacity.fit_problems(served("prod", config), FACTS))
    if fits:
        assert found == []
    else:
        [p] = found
        text = p.render(lambda path: {"node_pool.max_size": "servedmodel:nodeMax",
                                      "autoscaling.max_replicas": "servedmodel:maxReplicas"}.get(path, path))
        assert text.startswith("servedmodel:nodeMax")
        assert "servedmodel:maxReplicas" in text and "rollout surge" in text
        assert "raise servedmodel:nodeMax to at least" in text


def test_gpu_nodes_default_to_the_clusters_private_subnets(stack_runs):
    group = stack_runs["prod"].one("aws:eks/nodeGroup:NodeGroup")
    private = sorted(s for s, tags in pulumi_harness.SUBNETS.items()
                     if tags.get("kubernetes.io/role/internal-elb") == "1")
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
