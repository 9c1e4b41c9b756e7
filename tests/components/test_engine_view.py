"""What a real engine sees: the ordering edges and resource options of every stack.

Pulumi's mocks create resources in any order, so a program that forgets an edge still passes
an ordinary mock test, yet a real `pulumi up` would start the dependent step too early (a
container before its image exists, a Deployment before the nodes it needs). The recording
monitor (pulumi_harness.RecordingMonitor) keeps each RegisterResourceRequest's dependencies,
property dependencies and options; these tests assert the edges on the real __main__.py.
"""
from __future__ import annotations

import pytest

from pulumi_harness import STACKS, Res, Run

IMAGE = "docker-build:index:Image"
CONTAINER = "docker:index/container:Container"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
# With servedmodel:rollout canary (prod) the pods come from an Argo Rollouts Rollout instead.
ROLLOUT = "kubernetes:argoproj.io/v1alpha1:Rollout"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
# nodeProvisioner karpenter (burst): the GPU capacity is a Karpenter NodePool instead.
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
# autoscaler keda (burst): a KEDA ScaledObject scales the workload instead of an HPA.
SCALED_OBJECT = "kubernetes:keda.sh/v1alpha1:ScaledObject"


def pod_workloads(run: Run) -> list[Res]:
    return run.of_type(DEPLOYMENT) + run.of_type(ROLLOUT)


def workloads(run: Run) -> list[Res]:
    return pod_workloads(run) + run.of_type(CONTAINER)


def image_of(run: Run, workload: Res) -> Res:
    return run.sibling(IMAGE, workload)


def test_the_recorder_sees_options_and_property_dependencies(stack_runs):
    """The recorder itself: options the program sets today come back from the monitor."""
    prod = stack_runs["prod"]
    assert prod.one("aws:ecr/repository:Repository").protect
    assert prod.one(IMAGE).retain_on_delete
    assert prod.one(NODE_GROUP).ignore_changes == ["scalingConfig.desiredSize"]
    assert all(r.providers.get("kubernetes") or r.provider for r in prod.resources
               if r.custom and r.type.startswith("kubernetes:") and not r.type.startswith("pulumi:"))
    (deployment,) = pod_workloads(prod)
    # Every URN behind an input is also a dependency of the resource.
    assert deployment.property_dependencies
    for key, urns in deployment.property_dependencies.items():
        assert set(urns) <= set(deployment.dependencies), key


@pytest.mark.parametrize("stack", STACKS)
def test_each_workload_waits_for_its_image_build(stack_runs, stack):
    run = stack_runs[stack]
    assert workloads(run), stack
    for workload in workloads(run):
        image = image_of(run, workload)
        assert workload.waits_for(image), f"{workload.urn} does not wait for {image.urn}"


def test_the_local_container_runs_the_built_tag_and_is_replaced_delete_first(stack_runs):
    """Finding 1: the container's image is the build's output (the engine creates it after the
    build, so the docker provider finds the image locally and never pulls it from a registry),
    and a replacement deletes the old container first: the new one needs the same host port."""
    run = stack_runs["local"]
    container, image = run.one(CONTAINER), run.one(IMAGE)
    assert image.urn in container.property_dependencies.get("image", [])
    # The loaded tag, not `ref` (tag@digest): the local engine indexes a loaded image by tag;
    # a digest reference is looked up as a repo digest, which a loaded image lacks, and the
    # docker provider would then try to pull it.
    assert container.inputs["image"] == image.inputs["tags"][0]
    assert "@" not in container.inputs["image"]
    assert container.delete_before_replace


@pytest.mark.parametrize("stack", [s for s in STACKS if s != "local"])
def test_each_deployment_waits_for_the_capacity_it_needs(stack_runs, stack):
    run = stack_runs[stack]
    assert pod_workloads(run), stack
    for deployment in pod_workloads(run):
        pod = deployment.inputs["spec"]["template"]["spec"]
        gpus = int(pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
        groups = [g for g in run.of_type(NODE_GROUP) + run.of_type(NODE_POOL)
                  if run.served_model_of(g) == run.served_model_of(deployment)]
        # A GPU model always has a pool of its own; a CPU model when it lists instance types (graviton).
        if gpus or groups:
            assert len(groups) == 1, f"{deployment.urn}: a GPU workload without a node group or NodePool"
            assert deployment.waits_for(groups[0]), f"{deployment.urn} does not wait for {groups[0].urn}"
            # The edge is carried by the selector itself, so it cannot drift from the pool label.
            assert groups[0].urn in deployment.property_dependencies["spec"]
        else:
            # No pool of its own: its pods select no pool (at most an architecture).
            assert set(pod.get("nodeSelector") or {}) <= {"kubernetes.io/arch"}


@pytest.mark.parametrize("stack", STACKS)
def test_each_autoscaler_waits_for_its_workload(stack_runs, stack):
    run = stack_runs[stack]
    for hpa in run.of_type(HPA):
        target = hpa.inputs["spec"]["scaleTargetRef"]
        deployment = run.sibling(ROLLOUT if target["kind"] == "Rollout" else DEPLOYMENT, hpa)
        assert target["kind"] in ("Deployment", "Rollout")
        assert target["name"] == deployment.state["metadata"]["name"]
        assert hpa.waits_for(deployment), f"{hpa.urn} does not wait for {deployment.urn}"
    for scaler in run.of_type(SCALED_OBJECT):
        target = scaler.inputs["spec"]["scaleTargetRef"]
        deployment = run.sibling(DEPLOYMENT, scaler)
        assert target["name"] == deployment.state["metadata"]["name"]
        assert scaler.waits_for(deployment), f"{scaler.urn} does not wait for {deployment.urn}"
    if stack != "local":
        assert run.of_type(HPA) + run.of_type(SCALED_OBJECT), f"{stack} declares no autoscaler to check"
