"""Issue 18: lifecycles whose plan the engine accepts but a controller decides.

The real program runs under the mocks before and after a change; lifecycle_model.plan turns the
two runs into the engine's steps, and lifecycle_model's controller rules (each citing the
upstream source it was read from) play what KEDA, the HPA controller, Argo Rollouts and
pulumi-kubernetes' await do with them:

- autoscaler hpa <-> keda in one `up`, both directions (KEDA's ScaledObject webhook, its
  finalizer, the HPA at zero replicas);
- what `pulumi up` reports for a canary that is promoted, aborts, or is not judged;
- a priority change (an immutable PriorityClass field);
- the order a destroy deletes KEDA's objects in (their finalizers need the Deployment).
"""
from __future__ import annotations

import dataclasses

import pytest

import argo_status as argo
from lifecycle_model import CONTROLLER_RULES, HPA, ROLLOUT_WAIT, SCALED_OBJECT, Cluster, PlanError, canary_up, plan
from pulumi_harness import Run, variant_run

# burst with the HPA instead of KEDA (and so without scale to zero and the interceptor).
BURST_HPA = {"servedmodel:autoscaler": "hpa", "servedmodel:minReplicas": 1, "servedmodel:kedaHttp": False}


def switch(before: Run, after: Run, scaled_to_zero: bool = True):
    steps = plan(before, after)
    Cluster(before, scaled_to_zero=scaled_to_zero).apply(before, after, steps)
    return steps


def test_every_controller_rule_cites_its_source():
    for name, source in CONTROLLER_RULES.items():
        assert "/" in source and len(source) > 80, name


def test_hpa_to_keda_in_one_up(stack_runs, model_cache):
    """The ScaledObject is created while the old HPA still exists (Pulumi deletes last); KEDA's
    webhook admits it only because our HPA waives its ownership."""
    hpa, keda = variant_run("burst", BURST_HPA), stack_runs["burst"]
    steps = switch(hpa, keda)
    created = {s.type for s in steps if s.op == "create"}
    deleted = {s.type for s in steps if s.op == "delete"}
    assert SCALED_OBJECT in created and HPA in deleted
    so, old = steps.find("create", "burst-classifier-scaler"), steps.find("delete", "burst-classifier-hpa")
    assert steps.precedes(so, old)  # the overlap the webhook sees


def test_the_webhook_refuses_the_switch_from_an_hpa_that_claims_the_workload(stack_runs, model_cache):
    """A stack deployed before the annotation (or an HPA of someone else's): refused, as KEDA
    does; one `up` on this version first adds the annotation, then the switch passes."""
    hpa, keda = variant_run("burst", BURST_HPA), stack_runs["burst"]
    unannotated = Run(stack="burst", outputs={}, secret_outputs=set(), resources=[
        dataclasses.replace(r, inputs={**r.inputs, "metadata": {**r.inputs["metadata"], "annotations": {}}})
        if r.type == HPA else r for r in hpa.resources])
    with pytest.raises(PlanError, match="already managed by the hpa"):
        switch(unannotated, keda)
    upgrade = plan(unannotated, hpa)
    assert [(s.op, s.type) for s in upgrade] == [("update", HPA)]
    assert upgrade.steps[0].paths == ("metadata.annotations.validations.keda.sh/hpa-ownership",)
    switch(hpa, keda)


def test_keda_to_hpa_in_one_up_brings_an_idle_model_back(stack_runs, model_cache):
    """No webhook guards HPAs: ours is created beside KEDA's. On the ScaledObject's delete KEDA
    puts the workload back to its original count; without that, a model idle at zero stays
    there, since an HPA never scales a target at 0."""
    keda, hpa = stack_runs["burst"], variant_run("burst", BURST_HPA)
    so = keda.one(SCALED_OBJECT)
    assert so.inputs["spec"]["advanced"]["restoreToOriginalReplicaCount"] is True
    steps = switch(keda, hpa, scaled_to_zero=True)
    assert steps.find("create", "burst-classifier-hpa") and steps.find("delete", "burst-classifier-scaler")
    # The same switch from a ScaledObject without it strands the model.
    bare = Run(stack="burst", outputs={}, secret_outputs=set(), resources=[
        dataclasses.replace(r, inputs={**r.inputs, "spec": {**r.inputs["spec"], "advanced": {
            k: v for k, v in r.inputs["spec"]["advanced"].items() if k != "restoreToOriginalReplicaCount"}}})
        if r.type == SCALED_OBJECT else r for r in keda.resources])
    with pytest.raises(PlanError, match="left at 0 replicas"):
        switch(bare, hpa, scaled_to_zero=True)


def test_a_second_scaledobject_for_the_workload_is_refused(stack_runs):
    keda = stack_runs["burst"]
    so = keda.one(SCALED_OBJECT)
    twin = dataclasses.replace(so, urn=so.urn + "-twin", name=so.name + "-twin")
    doubled = Run(stack="burst", outputs={}, secret_outputs=set(), resources=keda.resources + [twin])
    with pytest.raises(PlanError, match="already managed by the ScaledObject"):
        switch(keda, doubled)


def test_a_destroy_deletes_kedas_objects_before_the_workload_they_scale(stack_runs):
    """KEDA's finalizer scales the Deployment (restoreToOriginalReplicaCount) and the add-on's
    removes its route: both while their controllers and the Deployment still exist."""
    keda = stack_runs["burst"]
    steps = plan(keda, Run(stack="burst", resources=[], outputs={}, secret_outputs=set()))
    deployment = steps.find("delete", "burst-classifier-deploy")
    for name in ("burst-classifier-scaler", "burst-classifier-http"):
        assert steps.precedes(steps.find("delete", name), deployment), name


# --- a canary's `up` ------------------------------------------------------------------------------

def test_up_returns_when_the_new_revision_is_fully_promoted(stack_runs):
    states = argo.canary_that_is_promoted(5)
    outcome = canary_up(stack_runs["prod"], states)
    assert outcome.ok and outcome.at == len(states) - 1, outcome


def test_up_fails_when_the_canary_aborts(stack_runs):
    states = argo.canary_that_aborts(5)
    outcome = canary_up(stack_runs["prod"], states)
    assert not outcome.ok and outcome.at == len(states) - 1 and "aborted" in outcome.message, outcome


def test_up_fails_at_once_when_nobody_can_judge_the_canary(stack_runs):
    outcome = canary_up(stack_runs["prod"], argo.canary_nobody_used(5))
    assert not outcome.ok and outcome.at is not None and "promote" in outcome.message, outcome


def test_the_wait_follows_the_rollout_in_the_plan(stack_runs):
    run = stack_runs["prod"]
    steps = plan(None, run)
    rollout = steps.find("create", "classifier-rollout")
    wait = steps.find("create", "classifier-rollout-wait")
    assert steps.precedes(rollout, wait) and wait.type == ROLLOUT_WAIT


# --- an immutable field ---------------------------------------------------------------------------

def test_a_priority_change_replaces_the_priority_class(stack_runs, model_cache):
    """The API server refuses to change a PriorityClass's value; the class is replaced instead
    (auto-named: the new one exists before the old one goes)."""
    steps = plan(stack_runs["prod"], variant_run("prod", {"servedmodel:priority": 200000}))
    replaced = [s for s in steps if s.type == "kubernetes:scheduling.k8s.io/v1:PriorityClass"]
    assert [s.op for s in replaced] == ["create-replacement", "delete-replaced"]
    assert steps.precedes(replaced[0], replaced[1])
