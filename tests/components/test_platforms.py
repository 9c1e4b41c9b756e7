"""Issue 22: the image's platforms, CPU node pools on Graviton, and the architecture of every pool
read from EC2 (supported_architectures of the recorded DescribeInstanceTypes figures), never
from a list of families.

The `graviton` stack (a CPU model on c7g nodes of its own) runs through every per-stack test of
test_stacks.py, test_engine_view.py and test_controller_table.py; here what it adds is held:
the arm64 AMI, the pods' architecture, the multi-arch image, the refusals, and what a change of
architecture replaces.
"""
from __future__ import annotations

import kubernetes_validate
import pytest

from lifecycle_model import plan
from pulumi_harness import (
    EC2_INSTANCE_TYPES,
    KUBERNETES_VERSION,
    TEST_SECRET,
    kubernetes_manifest,
    run_program,
    variant_run,
)
from servedmodel.components import capacity, platforms, specs
from servedmodel.components.settings import ConfigError, parse_settings
from test_settings import raw_for
from tests.crds.validate import validate_custom_resource

SECRETS = {"servedmodel:authToken": TEST_SECRET}
IMAGE = "docker-build:index:Image"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"


def recorded(names):
    """EC2's figures of `names` as the program's describe returns them (the recorded figures)."""
    return {n: capacity.InstanceType(
        name=n, vcpus=f["defaultVcpus"], memory_mib=f["memorySize"],
        gpus=sum(g["count"] for g in f["gpuses"] if g["manufacturer"] == "NVIDIA"),
        gpu_memory_mib=min((g["memorySize"] for g in f["gpuses"]), default=0),
        architectures=tuple(f["supportedArchitectures"]),
        default_card_enis=next(c["maximumInterfaces"] for c in f["networkCards"]
                               if c["index"] == f["defaultNetworkCardIndex"]),
        ipv4_per_eni=f["maximumIpv4AddressesPerInterface"])
        for n in names for f in [EC2_INSTANCE_TYPES[n]["describeInstanceTypes"]]}


def ec2_problems(stack: str, overrides: dict) -> list[str]:
    raw, secrets = raw_for(stack, overrides, SECRETS)
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, secrets, ec2=recorded)
    return err.value.problems


def ec2_arch(name: str) -> list[str]:
    return EC2_INSTANCE_TYPES[name]["describeInstanceTypes"]["supportedArchitectures"]


def pod(run):
    [workload] = [r for r in run.resources if r.type in ("kubernetes:apps/v1:Deployment",
                                                         "kubernetes:argoproj.io/v1alpha1:Rollout")]
    return workload.inputs["spec"]["template"]["spec"]


# ---- the facts ---------------------------------------------------------------------------------

def test_ec2_architectures_map_to_kubernetes_names():
    assert platforms.ec2_arches(("i386", "x86_64")) == ("amd64",)
    assert platforms.ec2_arches(("arm64",)) == ("arm64",)
    assert platforms.ec2_arches(("arm64_mac",)) == ()
    assert platforms.host_arch("x86_64") == "amd64" and platforms.host_arch("aarch64") == "arm64"


def test_the_image_platforms_follow_the_device_and_arch():
    assert platforms.image_platforms("cpu") == ("linux/amd64", "linux/arm64")
    assert platforms.image_platforms("cpu", "arm64") == ("linux/arm64",)
    # onnxruntime-gpu publishes no aarch64 wheel: the GPU image is amd64 only.
    assert platforms.image_platforms("cuda") == ("linux/amd64",)


def test_every_ami_type_names_one_device_and_architecture():
    for (device, arch), types in platforms.AMI_TYPES_FOR.items():
        for ami in types:
            assert platforms.ami_arch(ami) == arch and platforms.ami_device(ami) == device
            assert ("ARM_64" in ami) == (arch == "arm64") and ("NVIDIA" in ami) == (device == "cuda")
    assert platforms.default_ami_type("cpu", "arm64") == "BOTTLEROCKET_ARM_64"


def test_the_graviton_types_in_the_recorded_figures_are_arm64_from_ec2():
    """The figures come from EC2 (the file cites its source); the program reads the
    architecture from them, not from the family name."""
    graviton = [n for n in EC2_INSTANCE_TYPES if n.split(".")[0] in ("c7g", "m7g", "g5g")]
    assert {"c7g.large", "c7g.xlarge", "c7g.2xlarge", "m7g.large", "m7g.xlarge", "g5g.xlarge"} <= set(graviton)
    for name in EC2_INSTANCE_TYPES:
        arches = ec2_arch(name)
        assert arches and set(arches) <= {"x86_64", "arm64", "i386"}
        assert (name in graviton) == (arches == ["arm64"])


# ---- the graviton stack ----------------------------------------------------------------------------

def test_graviton_runs_its_pods_on_an_arm64_pool_of_its_own(stack_runs):
    run = stack_runs["graviton"]
    group = run.one(NODE_GROUP)
    # The architecture EC2 gives c7g.xlarge, the AMI of that architecture, no GPU taint.
    assert ec2_arch("c7g.xlarge") == ["arm64"]
    assert group.inputs["amiType"] == "BOTTLEROCKET_ARM_64"
    assert group.inputs["instanceTypes"] == ["c7g.xlarge"]
    assert "taints" not in group.inputs
    labels = group.inputs["labels"]
    assert pod(run)["nodeSelector"] == {specs.POOL_LABEL: labels[specs.POOL_LABEL], "kubernetes.io/arch": "arm64"}
    assert "tolerations" not in pod(run)
    # The Deployment waits for the node group: its selector is the group's output.
    deploy = run.one("kubernetes:apps/v1:Deployment")
    assert deploy.waits_for(group) and group.urn in deploy.property_dependencies["spec"]
    # One multi-arch image, pushed, pinned by the index digest.
    image = run.one(IMAGE)
    assert image.inputs["platforms"] == ["linux/amd64", "linux/arm64"] and image.inputs["push"] is True
    assert pod(run)["containers"][0]["image"] == f"{image.inputs['tags'][0]}@{image.state['digest']}"


@pytest.mark.parametrize("version", ["1.30.0", KUBERNETES_VERSION])
def test_graviton_objects_are_valid_for_the_cluster_version(stack_runs, version):
    objects = [r for r in stack_runs["graviton"].resources if r.type.startswith("kubernetes:")]
    assert objects
    for r in objects:
        kubernetes_validate.validate(kubernetes_manifest(r), version, strict=True)


def test_graviton_with_karpenter_declares_a_cpu_pool_of_exactly_its_types():
    run = variant_run("graviton", {"servedmodel:nodeProvisioner": "karpenter"})
    assert not run.of_type(NODE_GROUP)
    pool, node_class = run.one(NODE_POOL), run.one(NODE_CLASS)
    for r in (pool, node_class):
        validate_custom_resource(kubernetes_manifest(r))
    spec = pool.inputs["spec"]
    requirements = {r["key"]: r for r in spec["template"]["spec"]["requirements"]}
    assert requirements["kubernetes.io/arch"]["values"] == ["arm64"]
    assert requirements["node.kubernetes.io/instance-type"]["values"] == ["c7g.xlarge"]
    assert not any("gpu" in key for key in requirements)
    assert "taints" not in spec["template"]["spec"]
    # Karpenter counts the nodes' vCPUs against `limits`: (4 replicas + 1 surge) on nodes of 4.
    vcpus = EC2_INSTANCE_TYPES["c7g.xlarge"]["describeInstanceTypes"]["defaultVcpus"]
    assert spec["limits"] == {"cpu": (4 + 1) * vcpus}
    assert "userData" not in node_class.inputs["spec"]
    assert pod(run)["nodeSelector"] == {specs.POOL_LABEL: spec["template"]["metadata"]["labels"][specs.POOL_LABEL],
                                        "kubernetes.io/arch": "arm64"}


def test_an_explicit_arch_builds_that_platform_only():
    run = variant_run("graviton", {"servedmodel:arch": "arm64"})
    assert run.one(IMAGE).inputs["platforms"] == ["linux/arm64"]
    assert run.one(NODE_GROUP).inputs["amiType"] == "BOTTLEROCKET_ARM_64"


def test_the_other_stacks_platforms(stack_runs):
    # dev: CPU models on the cluster's nodes: both architectures, no architecture selected.
    for image in stack_runs["dev"].of_type(IMAGE):
        assert image.inputs["platforms"] == ["linux/amd64", "linux/arm64"]
    assert all("nodeSelector" not in r.inputs["spec"]["template"]["spec"]
               for r in stack_runs["dev"].of_type("kubernetes:apps/v1:Deployment"))
    # prod: the GPU image, amd64 only.
    assert stack_runs["prod"].one(IMAGE).inputs["platforms"] == ["linux/amd64"]
    # local: the host's platform, loaded (a multi-platform image cannot be loaded).
    local = stack_runs["local"].one(IMAGE)
    assert local.inputs["platforms"] == [platforms.platform(platforms.host_arch())] and local.inputs["load"] is True


def test_a_cpu_model_with_an_arch_but_no_pool_selects_the_cluster_nodes_of_it():
    run = variant_run("dev", {"servedmodel:arch": "arm64"})
    assert not run.of_type(NODE_GROUP)
    for deploy in run.of_type("kubernetes:apps/v1:Deployment"):
        assert deploy.inputs["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert {tuple(i.inputs["platforms"]) for i in run.of_type(IMAGE)} == {("linux/arm64",)}


# ---- refusals, from EC2's figures ----------------------------------------------------------------

def test_an_arch_the_types_lack_is_refused_naming_key_type_and_ec2s_architecture():
    found = ec2_problems("graviton", {"servedmodel:arch": "amd64"})
    [msg] = [p for p in found if p.startswith("servedmodel:nodeInstanceTypes = 'c7g.xlarge'")]
    assert f"EC2 gives c7g.xlarge the architecture {', '.join(ec2_arch('c7g.xlarge'))}" in msg
    assert "built for amd64 (servedmodel:arch)" in msg


def test_a_graviton_gpu_type_is_refused_from_ec2_because_the_gpu_image_is_amd64():
    found = ec2_problems("prod", {"servedmodel:nodeInstanceTypes": ["g5g.xlarge"]})
    [msg] = [p for p in found if p.startswith("servedmodel:nodeInstanceTypes = 'g5g.xlarge': EC2")]
    assert f"the architecture {', '.join(ec2_arch('g5g.xlarge'))} (arm64)" in msg
    assert "GPU image is built for amd64 only" in msg


def test_a_pool_of_two_architectures_is_refused():
    found = ec2_problems("graviton", {"servedmodel:nodeInstanceTypes": ["c7g.xlarge", "c6i.xlarge"]})
    [msg] = [p for p in found if "share no architecture" in p]
    assert msg.startswith("servedmodel:nodeInstanceTypes = ['c7g.xlarge', 'c6i.xlarge']")
    assert "c7g.xlarge: arm64" in msg and "c6i.xlarge: amd64" in msg


def test_an_ami_type_of_the_other_architecture_is_refused():
    found = ec2_problems("graviton", {"servedmodel:nodeAmiType": "BOTTLEROCKET_x86_64"})
    assert any(p.startswith("servedmodel:nodeAmiType = 'BOTTLEROCKET_x86_64': runs amd64 nodes, but the pool's "
                            "types are arm64") for p in found), found
    # Without EC2: a GPU AMI for a CPU model, and an AMI against an explicit arch.
    raw, secrets = raw_for("graviton", {"servedmodel:nodeAmiType": "BOTTLEROCKET_x86_64_NVIDIA"}, SECRETS)
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, secrets)
    assert any("an AMI for GPU nodes, but the model has no GPUs" in p for p in err.value.problems)
    raw, secrets = raw_for("graviton", {"servedmodel:nodeAmiType": "AL2023_x86_64_STANDARD",
                                        "servedmodel:arch": "arm64"}, SECRETS)
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, secrets)
    assert any("runs amd64 nodes, but servedmodel:arch is arm64" in p for p in err.value.problems)


def test_a_cpu_model_on_gpu_types_is_refused():
    found = ec2_problems("graviton", {"servedmodel:nodeInstanceTypes": ["g5.xlarge"]})
    assert any(p.startswith("servedmodel:nodeInstanceTypes = 'g5.xlarge': EC2 gives g5.xlarge 1 NVIDIA GPU(s)")
               for p in found), found


def test_arch_on_the_docker_target_and_arm64_gpus_are_refused():
    raw, secrets = raw_for("local", {"servedmodel:arch": "arm64"})
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, secrets)
    assert any(p.startswith("servedmodel:arch = 'arm64': the docker target builds") for p in err.value.problems)
    raw, secrets = raw_for("prod", {"servedmodel:arch": "arm64"}, SECRETS)
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, secrets)
    assert any(p.startswith("servedmodel:arch = 'arm64': the GPU image is built for amd64 only")
               for p in err.value.problems)


def test_the_program_refuses_a_wrong_architecture_before_building():
    with pytest.raises(Exception) as err:
        run_program("graviton", {"servedmodel:arch": "amd64"}, secrets=SECRETS)
    assert "servedmodel:nodeInstanceTypes = 'c7g.xlarge'" in str(err.value)


@pytest.mark.parametrize("overrides, fits", [
    ({}, True),
    # 4 + 1 surge at 3 per c7g.xlarge (3670m after reservation and headroom): 2 nodes.
    ({"servedmodel:nodeMax": 1}, False),
    ({"servedmodel:cpu": "3670m", "servedmodel:nodeMax": 5}, True),
    ({"servedmodel:cpu": "3671m", "servedmodel:nodeMax": 5}, False),
])
def test_capacity_fit_applies_to_cpu_pools(overrides, fits):
    raw, secrets = raw_for("graviton", overrides, SECRETS)
    args = parse_settings(raw, secrets).served[0]
    types = recorded(args.pool_instance_types)
    a = capacity.allocatable(types["c7g.xlarge"])
    assert a.cpu_millis - 250 == 3670  # EC2's 4 vCPUs less the kubelet's reservation and the headroom
    assert (capacity.fit_problems(args, types) == []) == fits


# ---- what a change of architecture replaces ------------------------------------------------------

def test_moving_a_pool_to_another_architecture_replaces_the_node_group(stack_runs):
    """amiType and instanceTypes are ForceNew (lifecycle_model: terraform-provider-aws
    node_group.go): the group is replaced, the new one first; the image's platforms do not change
    (both), the pods roll to the new architecture's selector."""
    before = stack_runs["graviton"]
    after = variant_run("graviton", {"servedmodel:nodeInstanceTypes": ["m6i.xlarge"]})
    assert after.one(NODE_GROUP).inputs["amiType"] == "BOTTLEROCKET_x86_64"
    steps = plan(before, after)
    replaced = steps.find("create-replacement", "digits-nodes")
    assert {p.split("[")[0] for p in replaced.paths} >= {"amiType", "instanceTypes"}
    deploy = steps.find("update", "digits-deploy")
    assert any(p.startswith("spec.template.spec.nodeSelector") for p in deploy.paths)
    assert not [s for s in steps if s.type == IMAGE]


def test_narrowing_the_image_to_one_platform_rebuilds_in_place(stack_runs):
    steps = plan(stack_runs["graviton"], variant_run("graviton", {"servedmodel:arch": "arm64"}))
    image = [s for s in steps if s.type == IMAGE]
    assert [s.op for s in image] == ["update"] and "platforms" in image[0].paths
    assert not [s for s in steps if s.type == NODE_GROUP]
