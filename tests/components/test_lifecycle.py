"""A stack's life as the engine would play it: first up, no-op, model change, revert A -> B -> A,
retry after a partial push, a swap of two models, a served-name rename, a retention change, a
destroy (issue 18: non-empty ECR repositories, the readiness-gate namespace patch, the GPU pool's
launch template).

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
from servedmodel.components.model_image import BUILD_MARKER_PREFIX

DEV_A = [{"name": "mnist-mlp", "model": "mnist-mlp", "compression": "none"},
         {"name": "lenet", "model": "lenet", "compression": "int8"}]
DEV_B = [{"name": "mnist-mlp", "model": "mnist-mlp", "compression": "fp16"}, DEV_A[1]]
DEV_SWAPPED = [{"name": "mnist-mlp", "model": "lenet", "compression": "int8"},
               {"name": "lenet", "model": "mnist-mlp", "compression": "none"}]


def up(before: Run | None, after: Run, registry: Registry | None = None, ports: HostPorts | None = None):
    """One `pulumi up` from `before`'s state to `after`'s program, with its pushes and ports."""
    steps = plan(before, after)
    if registry is not None:
        registry.delete_repositories(before, steps)
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
    # Every pushed version reaches the registry once (with the stack's build marker beside it).
    versions = [t for tags in registry.tags.values() for t in tags if not t.startswith(BUILD_MARKER_PREFIX)]
    assert len(versions) == len([i for i in run.of_type("docker-build:index:Image") if i.inputs.get("push")])


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


def container_image(run: Run, deployment: str) -> str:
    pod = run.named("kubernetes:apps/v1:Deployment", deployment).inputs["spec"]["template"]["spec"]
    return pod["containers"][0]["image"]


def test_an_unchanged_commit_after_a_push_takes_no_step(stack_runs):
    """The registry now holds the version just pushed, and the stack's build marker names the
    same digest: the build resource is declared again, unchanged (no step, no push)."""
    a, registry = stack_runs["dev"], Registry()
    up(None, a, registry)
    again = variant_run("dev", {}, registry.holding())
    assert again.of_type("docker-build:index:Image")
    assert plan(a, again).steps == []


def test_revert_a_b_a_deploys_the_digest_a_pushed_without_a_build(stack_runs):
    """Issue 18, finding 9: a revert to a version the registry holds deploys the image its first
    push made (looked up by tag), declares no build and pushes nothing."""
    a, registry = stack_runs["dev"], Registry()
    up(None, a, registry)
    repo, version = container_image(a, "mnist-mlp-deploy").split("@")[0].rsplit(":", 1)
    first_push = registry.tags[repo][version]
    b = variant_run("dev", {"servedmodel:models": DEV_B}, registry.holding())
    assert up(a, b, registry).summary() == ["update mnist-mlp-image", "update mnist-mlp-deploy"]
    back = variant_run("dev", {}, registry.holding())
    steps = up(b, back, registry)
    # No build: A's image resource is gone from the program (the B build it held stays in the
    # registry, retained), and the Deployment goes back to the very digest A's first push made.
    assert steps.summary() == ["update mnist-mlp-deploy", "delete mnist-mlp-image"]
    assert steps.find("delete", "mnist-mlp-image").retain
    assert not [s for s in steps if s.type == "docker-build:index:Image" and s.op != "delete"]
    assert container_image(back, "mnist-mlp-deploy") == f"{repo}:{version}@{first_push}"
    assert container_image(back, "mnist-mlp-deploy") == container_image(a, "mnist-mlp-deploy")
    assert registry.tags[repo][version] == first_push  # nothing pushed
    # ... and stays so: the next unchanged commit takes no step.
    assert plan(back, variant_run("dev", {}, registry.holding())).steps == []
    # A new version after the revert is built again (the build resource is created anew).
    c = variant_run("dev", {"servedmodel:models": [{**DEV_A[0], "compression": "int8"}, DEV_A[1]]},
                    registry.holding())
    assert up(back, c, registry).summary() == ["create mnist-mlp-image", "update mnist-mlp-deploy"]


def test_retry_after_a_push_that_landed_unrecorded_succeeds(stack_runs):
    a, b = stack_runs["dev"], variant_run("dev", {"servedmodel:models": DEV_B})
    # The update to B pushed B's tag (and the marker), then the run died: the state is still A's.
    registry = Registry()
    up(None, a, registry)
    registry.publish(b, plan(a, b))
    retry_run = variant_run("dev", {"servedmodel:models": DEV_B}, registry.holding())
    retry = up(a, retry_run, registry)
    # The marker names B's digest, which the build in the state does not hold: the build is
    # declared and pushes B again (mutable tags), as before the lookup existed.
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


def test_swapping_two_models_and_back_updates_in_place_and_back_without_a_build(stack_runs):
    a = stack_runs["dev"]
    registry = Registry()
    up(None, a, registry)
    swapped = variant_run("dev", {"servedmodel:models": DEV_SWAPPED}, registry.holding())
    there = up(a, swapped, registry)
    assert sorted(there.summary()) == ["update lenet-deploy", "update lenet-image",
                                       "update mnist-mlp-deploy", "update mnist-mlp-image"]
    # Back: each repository holds its original version from the first up: deployed, not rebuilt.
    back = up(swapped, variant_run("dev", {}, registry.holding()), registry)
    assert sorted(back.summary()) == ["delete lenet-image", "delete mnist-mlp-image",
                                      "update lenet-deploy", "update mnist-mlp-deploy"]


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
    registry = Registry()
    up(None, a, registry)
    old_repo = a.named("aws:ecr/repository:Repository", "mnist-mlp-repo").state["repositoryUrl"]
    # The old name's repository holds its image: deleting it succeeds only because dev forces it
    # (issue 18, finding 2; before, ECR refused: RepositoryNotEmptyException).
    steps = up(a, renamed, registry)
    assert old_repo not in registry.tags
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


EMPTY = Run(stack="dev", resources=[], outputs={}, secret_outputs=set())


def with_inputs(run: Run, type_: str, **changes) -> Run:
    """A copy of `run` whose resources of `type_` have `changes` (None removes) in their inputs,
    or, for the resource options protect/retain_on_delete, in the record."""
    options = {k: changes.pop(k) for k in ("protect", "retain_on_delete") if k in changes}
    out = []
    for r in run.resources:
        if r.type == type_:
            inputs = {k: v for k, v in {**r.inputs, **changes}.items() if v is not None}
            r = dataclasses.replace(r, inputs=inputs, **options)
        out.append(r)
    return Run(stack=run.stack, resources=out, outputs={}, secret_outputs=set())


def test_destroying_dev_deletes_its_repositories_with_their_images(stack_runs):
    """Issue 18, finding 2: dev's repositories hold every pushed version; force_delete lets a
    destroy (and a rename) finish. Before, each one failed with RepositoryNotEmptyException and
    every later `up` retried it."""
    a, registry = stack_runs["dev"], Registry()
    up(None, a, registry)
    assert registry.tags
    assert all(r.inputs["forceDelete"] and not r.retain_on_delete for r in a.of_type("aws:ecr/repository:Repository"))
    steps = up(a, EMPTY, registry)
    assert {s.op for s in steps} == {"delete"} and not registry.holding()
    # The rule that stopped it: the same repositories without force_delete.
    registry = Registry()
    unforced = with_inputs(a, "aws:ecr/repository:Repository", forceDelete=False)
    up(None, unforced, registry)
    with pytest.raises(PlanError, match="RepositoryNotEmptyException"):
        up(unforced, EMPTY, registry)


def test_prod_keeps_its_repository_and_images_on_destroy(stack_runs):
    """prod: retain_on_delete (and protect): once unprotected, a destroy finishes and leaves the
    repository, its images (the rollback source and audit trail) in the account."""
    prod, registry = stack_runs["prod"], Registry()
    up(None, prod, registry)
    [repo] = prod.of_type("aws:ecr/repository:Repository")
    assert repo.retain_on_delete and repo.protect and not repo.inputs["forceDelete"]
    with pytest.raises(PlanError, match="protected"):
        plan(prod, EMPTY)
    unprotected = Run(stack="prod", outputs={}, secret_outputs=set(),
                      resources=[dataclasses.replace(r, protect=False) for r in prod.resources])
    steps = up(unprotected, EMPTY, registry)
    assert step_named(steps, "delete", "classifier-repo").retain
    assert registry.tags[repo.state["repositoryUrl"]]


def test_switching_the_repositorys_delete_mode_is_an_in_place_update(stack_runs):
    """force_delete lives in the state only (the provider never sends it to ECR but on delete):
    flipping it is an update, and a destroy uses it only after an `up` recorded it."""
    a = stack_runs["dev"]
    retained = variant_run("dev", {"servedmodel:retainRegistry": True})
    steps = plan(a, retained)
    assert sorted(steps.summary()) == ["update lenet-repo", "update mnist-mlp-repo"]
    assert all(s.paths == ("forceDelete",) for s in steps)
    assert all(r.retain_on_delete for r in retained.of_type("aws:ecr/repository:Repository"))


def test_the_readiness_gate_label_comes_before_the_pods_and_goes_after_them(stack_runs):
    """Issue 18, finding 8: the LBC's webhook injects a pod's readiness gate only at its creation,
    in a labelled namespace, once a Service selects it: the engine creates the namespace patch and
    the Service before the workload, and on destroy removes the workload first."""
    prod = stack_runs["prod"]
    steps = up(None, prod)
    patch = steps.find("create", "classifier-readiness-gates")
    service = steps.find("create", "classifier-svc")
    rollout = steps.find("create", "classifier-rollout")
    assert steps.precedes(patch, rollout) and steps.precedes(service, rollout)
    unprotected = Run(stack="prod", outputs={}, secret_outputs=set(),
                      resources=[dataclasses.replace(r, protect=False) for r in prod.resources])
    down = plan(unprotected, EMPTY)
    assert down.precedes(down.find("delete", "classifier-rollout"), down.find("delete", "classifier-readiness-gates"))


def test_adding_the_launch_template_replaces_the_node_group(stack_runs):
    """Issue 18, finding 13: a managed node group created without a launch template cannot take
    one in place (launch_template id is ForceNew): the first `up` with it replaces the group, and
    prod's protected group stops that `up` until it is unprotected (docs/deploy.md)."""
    prod = stack_runs["prod"]
    before = with_inputs(prod, "aws:eks/nodeGroup:NodeGroup", launchTemplate=None)
    before = Run(stack="prod", outputs={}, secret_outputs=set(),
                 resources=[r for r in before.resources if r.type != "aws:ec2/launchTemplate:LaunchTemplate"])
    with pytest.raises(PlanError, match="protected and would be replaced"):
        plan(before, prod)
    unprotected = Run(stack="prod", outputs={}, secret_outputs=set(),
                      resources=[dataclasses.replace(r, protect=False) for r in before.resources])
    steps = plan(unprotected, prod)
    assert steps.find("create-replacement", "classifier-nodes").paths
    # The new group (create-before-delete: auto-named) is up before the old one goes.
    assert steps.precedes(steps.find("create-replacement", "classifier-nodes"),
                          steps.find("delete-replaced", "classifier-nodes"))
    assert steps.precedes(steps.find("create", "classifier-lt"), steps.find("create-replacement", "classifier-nodes"))
