"""A stack's life as the engine would play it: first up, no-op, model change, revert A -> B -> A,
retry after a partial push, a swap of two models, a served-name rename, a retention change.

Each scenario runs the real program under the mocks before and after the change, and
lifecycle_model.plan (test scaffolding, with each provider's diff rule and its source) turns the
two runs into the steps `pulumi up` would take: what is created, updated, replaced (and whether
the old one goes first) or deleted, and which step must wait for which. Registry and HostPorts
play what lives outside the state: the tags already in a repository, the host ports held.
"""
from __future__ import annotations

import dataclasses

import pytest

from lifecycle_model import PROVIDER_RULES, HostPorts, PlanError, Registry, Step, plan
from pulumi_harness import STACKS, Run, variant_run

DEV_A = [{"name": "mnist-mlp", "model": "mnist-mlp", "compression": "none"},
         {"name": "lenet", "model": "lenet", "compression": "int8"}]
DEV_B = [{"name": "mnist-mlp", "model": "mnist-mlp", "compression": "fp16"}, DEV_A[1]]
DEV_SWAPPED = [{"name": "mnist-mlp", "model": "lenet", "compression": "int8"},
               {"name": "lenet", "model": "mnist-mlp", "compression": "none"}]


def up(before: Run | None, after: Run, registry: Registry | None = None, ports: HostPorts | None = None):
    """One `pulumi up` from `before`'s state to `after`'s program, with its pushes and ports."""
    steps = plan(before, after)
    if registry is not None:
        registry.publish(after, steps)
    if ports is not None:
        ports.apply(after, steps)
    return steps


def step_named(steps, op: str, suffix: str) -> Step:
    found = [s for s in steps if s.op == op and s.name.endswith(suffix)]
    assert len(found) == 1, f"no single {op} *{suffix} in {steps.summary()}"
    return found[0]


def test_every_resource_type_of_every_stack_has_a_diff_rule(stack_runs):
    types = {r.type for run in stack_runs.values() for r in run.resources
             if r.custom and not r.type.startswith("pulumi:providers:")}
    assert types <= set(PROVIDER_RULES), types - set(PROVIDER_RULES)
    assert all(rule.source for rule in PROVIDER_RULES.values())


# The pods come from a Deployment, or from an Argo Rollouts Rollout on a canary stack (prod).
POD_WORKLOADS = ("kubernetes:apps/v1:Deployment", "kubernetes:argoproj.io/v1alpha1:Rollout")


@pytest.mark.parametrize("stack", STACKS)
def test_first_up_creates_everything_each_step_after_what_it_needs(stack_runs, stack):
    run = stack_runs[stack]
    registry, ports = Registry(), HostPorts()
    steps = up(None, run, registry, ports)
    assert {s.op for s in steps} == {"create"}
    assert len(steps.steps) == len([r for r in run.resources if r.custom])
    def step_of(res) -> Step:
        return steps.find("create", res.urn.split("::")[-1])

    def pods_of(res):
        """The Deployment, or the Rollout on a canary stack, beside `res`."""
        found = [r for t in POD_WORKLOADS for r in run.of_type(t)
                 if run.served_model_of(r) == run.served_model_of(res)]
        assert len(found) == 1, f"expected one pod workload beside {res.urn}, found {len(found)}"
        return found[0]

    pod_workloads = [r for t in POD_WORKLOADS for r in run.of_type(t)]
    for workload in pod_workloads + run.of_type("docker:index/container:Container"):
        assert steps.precedes(step_of(run.sibling("docker-build:index:Image", workload)), step_of(workload))
    for group in run.of_type("aws:eks/nodeGroup:NodeGroup"):
        assert steps.precedes(step_of(group), step_of(pods_of(group)))
    for group in run.of_type("kubernetes:karpenter.sh/v1:NodePool"):
        assert steps.precedes(step_of(group), step_of(pods_of(group)))
    for scaler in (run.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
                   + run.of_type("kubernetes:keda.sh/v1alpha1:ScaledObject")):
        assert steps.precedes(step_of(pods_of(scaler)), step_of(scaler))
    # Every pushed version reaches the registry once.
    assert sum(len(t) for t in registry.tags.values()) == len(
        [i for i in run.of_type("docker-build:index:Image") if i.inputs.get("push")])


@pytest.mark.parametrize("stack", STACKS)
def test_an_unchanged_commit_takes_no_step(stack_runs, stack):
    assert plan(stack_runs[stack], variant_run(stack, {})).steps == []


def test_a_model_change_updates_the_image_then_rolls_the_deployment(stack_runs):
    a, b = stack_runs["dev"], variant_run("dev", {"servedmodel:models": DEV_B})
    registry = Registry()
    up(None, a, registry)
    steps = up(a, b, registry)
    assert steps.summary() == ["update mnist-mlp-image", "update mnist-mlp-deploy"]
    image, deployment = steps.steps
    assert steps.precedes(image, deployment)
    # A rollout of the pod template: the selector (a replacement) is untouched.
    assert not any(p.startswith("spec.selector") for p in deployment.paths)
    assert "spec.template.spec.containers[0].image" in deployment.paths


def test_a_model_change_on_the_local_target_replaces_the_container_delete_first(stack_runs):
    a, b = stack_runs["local"], variant_run("local", {"servedmodel:model": "lenet"})
    ports = HostPorts(a)
    steps = up(a, b, ports=ports)
    assert steps.summary() == ["update mnist-mlp-image", "delete-replaced port-8080", "create-replacement port-8080"]
    assert steps.precedes(steps.find("update", "mnist-mlp-image"), steps.find("create-replacement", "port-8080"))


def test_revert_a_b_a_pushes_an_existing_version_again_and_succeeds(stack_runs):
    a, b = stack_runs["dev"], variant_run("dev", {"servedmodel:models": DEV_B})
    registry = Registry()
    up(None, a, registry)
    up(a, b, registry)
    back = up(b, a, registry)  # rebuilds A (another digest) and pushes A's existing tag
    assert back.summary() == ["update mnist-mlp-image", "update mnist-mlp-deploy"]
    # The workload follows the digest of this push, not whatever the tag pointed at before.
    image = a.named("docker-build:index:Image", "mnist-mlp-image")
    deployment = a.named("kubernetes:apps/v1:Deployment", "mnist-mlp-deploy")
    assert deployment.inputs["spec"]["template"]["spec"]["containers"][0]["image"] == \
        f"{image.inputs['tags'][0]}@{image.state['digest']}"


def test_retry_after_a_push_that_landed_unrecorded_succeeds(stack_runs):
    a, b = stack_runs["dev"], variant_run("dev", {"servedmodel:models": DEV_B})
    # The update to B pushed B's tag, then the run died: the state is still A's.
    registry = Registry()
    up(None, a, registry)
    registry.publish(b, plan(a, b))
    retry = up(a, b, registry)
    assert retry.summary() == ["update mnist-mlp-image", "update mnist-mlp-deploy"]

    # The first up died the same way: the push landed, nothing of the image (or what waits for it)
    # was recorded. The retry creates them and pushes the same tag again.
    image = a.named("docker-build:index:Image", "mnist-mlp-image")
    waiting = {image.urn}
    for r in a.resources:
        if set(r.dependencies) & waiting:
            waiting.add(r.urn)
    partial = Run(stack="dev", resources=[r for r in a.resources if r.urn not in waiting], outputs={},
                  secret_outputs=set())
    registry = Registry()
    registry.publish(a, plan(None, a))
    retry = up(partial, a, registry)
    assert {s.op for s in retry} == {"create"}
    assert {s.name for s in retry} >= {"mnist-mlp-image", "mnist-mlp-deploy", "mnist-mlp-hpa"}


def test_swapping_two_models_and_back_updates_in_place_and_pushes(stack_runs):
    a, swapped = stack_runs["dev"], variant_run("dev", {"servedmodel:models": DEV_SWAPPED})
    registry = Registry()
    up(None, a, registry)
    there = up(a, swapped, registry)
    assert sorted(there.summary()) == ["update lenet-deploy", "update lenet-image",
                                       "update mnist-mlp-deploy", "update mnist-mlp-image"]
    back = up(swapped, a, registry)  # each repository gets a version it already holds
    assert sorted(back.summary()) == sorted(there.summary())


def test_an_immutable_repository_would_refuse_the_revert(stack_runs):
    """The check the registry model makes is the one that failed before this design."""
    a, b = stack_runs["dev"], variant_run("dev", {"servedmodel:models": DEV_B})
    registry = Registry()
    up(None, a, registry)
    up(a, b, registry)
    # The same program with the repository's old setting (a copy: the runs are shared).
    immutable = Run(stack="dev", outputs={}, secret_outputs=set(), resources=[
        dataclasses.replace(r, inputs={**r.inputs, "imageTagMutability": "IMMUTABLE"})
        if r.type == "aws:ecr/repository:Repository" else r for r in a.resources])
    with pytest.raises(PlanError, match="ImageTagAlreadyExistsException"):
        up(b, immutable, registry)


def test_a_served_name_rename_on_the_local_target_frees_the_port_first(stack_runs):
    a, renamed = stack_runs["local"], variant_run("local", {"servedmodel:name": "digits"})
    steps = up(a, renamed, ports=HostPorts(a))
    # New image (the old one is retained in the engine), the container on the same port replaced
    # delete-first (it keeps its URN: named after the port), then the old image leaves the state.
    assert steps.summary() == ["create digits-image", "delete-replaced port-8080",
                               "create-replacement port-8080", "delete mnist-mlp-image"]
    assert step_named(steps, "delete", "mnist-mlp-image").retain


def test_a_served_name_rename_on_kubernetes_replaces_every_child_new_before_old(stack_runs):
    a = stack_runs["dev"]
    renamed = variant_run("dev", {"servedmodel:models": [{**DEV_A[0], "name": "digits"}, DEV_A[1]]})
    steps = up(a, renamed, Registry())
    created = sorted(s.name for s in steps if s.op == "create")
    deleted = sorted(s.name for s in steps if s.op == "delete")
    assert [n.replace("digits", "X") for n in created] == [n.replace("mnist-mlp", "X") for n in deleted]
    assert {s.op for s in steps} == {"create", "delete"}, "lenet's resources must not change"
    # Nothing old goes before everything new is up (the Service of the new name serves first).
    for c in (s for s in steps if s.op == "create"):
        for d in (s for s in steps if s.op == "delete"):
            assert steps.precedes(c, d)
    assert step_named(steps, "delete", "mnist-mlp-image").retain


def test_a_served_name_rename_on_prod_stops_at_its_protected_resources(stack_runs):
    """docs/deploy.md: renaming a protected stack's model needs `pulumi state unprotect` first."""
    renamed = variant_run("prod", {"servedmodel:name": "classifier-v2"})
    with pytest.raises(PlanError, match="protected and would be deleted"):
        plan(stack_runs["prod"], renamed)


def test_a_retention_change_replaces_the_lifecycle_policy_delete_first(stack_runs):
    a, b = stack_runs["dev"], variant_run("dev", {"servedmodel:keepVersions": 25})
    steps = plan(a, b)
    assert steps.summary() == ["delete-replaced lenet-lifecycle", "create-replacement lenet-lifecycle",
                               "delete-replaced mnist-mlp-lifecycle", "create-replacement mnist-mlp-lifecycle"] or \
        steps.summary() == ["delete-replaced mnist-mlp-lifecycle", "create-replacement mnist-mlp-lifecycle",
                            "delete-replaced lenet-lifecycle", "create-replacement lenet-lifecycle"]
