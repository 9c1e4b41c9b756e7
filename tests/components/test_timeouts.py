"""customTimeouts sized from the model's start-up (issue 8, finding 7), pure and in the program."""
from __future__ import annotations

import pytest

from servedmodel.components import timeouts
from servedmodel.components.timeouts import readiness_timeouts


def minutes(text: str) -> int:
    assert text.endswith("m")
    return int(text[:-1])


def test_a_slow_model_gets_longer_timeouts_than_a_fast_one():
    fast = readiness_timeouts(2.0, "cpu", max_replicas=2)
    slow = readiness_timeouts(400.0, "cpu", max_replicas=2)
    assert slow.startup_budget_seconds >= 400 * timeouts.STARTUP_MARGIN
    assert fast.startup_budget_seconds == timeouts.STARTUP_FLOOR_SECONDS["cpu"]
    assert slow.pod_seconds > fast.pod_seconds
    assert minutes(slow.deployment) > minutes(fast.deployment)
    assert slow.progress_deadline_seconds > slow.pod_seconds
    assert slow.startup_failure_threshold * 5 == slow.startup_budget_seconds


def test_an_unmeasured_model_keeps_the_full_startup_budget():
    t = readiness_timeouts(None, "cpu", max_replicas=1)
    assert t.startup_budget_seconds == timeouts.UNMEASURED_STARTUP_SECONDS and t.startup_failure_threshold == 60


def test_the_deployment_waits_for_a_whole_rollout_at_max_replicas():
    one = readiness_timeouts(100.0, "cuda", max_replicas=1, node_max=2)
    ten = readiness_timeouts(100.0, "cuda", max_replicas=10, node_max=11)
    # maxSurge 1, maxUnavailable 0: ten pods one after the other, each maybe on a new GPU node.
    assert minutes(ten.deployment) * 60 >= 10 * ten.pod_seconds
    assert ten.pod_seconds >= timeouts.NODE_START_SECONDS + timeouts.IMAGE_PULL_SECONDS["cuda"] + 300
    assert minutes(ten.node_group_update) > minutes(one.node_group_update)
    # The load balancer's await covers the NLB and a ready pod behind it.
    assert minutes(ten.service) * 60 >= timeouts.LOAD_BALANCER_SECONDS + ten.pod_seconds


@pytest.mark.parametrize("startup", [None, 0.1, 30.0, 5000.0])
def test_never_below_the_providers_default(startup):
    t = readiness_timeouts(startup, "cpu", max_replicas=1)
    for value in (t.deployment, t.service, t.node_group_create, t.node_group_update):
        assert minutes(value) >= 10


def test_the_program_sets_them_on_the_readiness_bound_resources(stack_runs):
    import json

    from pulumi_harness import ROOT

    run = stack_runs["prod"]
    # The start-up is measured by the build and kept beside the manifest (issue 11); the program
    # sizes the timeouts from the model's cold-start budget, the `coldStart` output.
    assert "startup" not in json.loads(next((ROOT / "build" / "stacks" / "prod").rglob("manifest.json")).read_text())
    cold = run.outputs["coldStart"]["classifier"]
    grace = run.one("kubernetes:argoproj.io/v1alpha1:Rollout").inputs["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"]
    expected = readiness_timeouts(cold["startSeconds"], "cuda", max_replicas=10, node_max=11,
                                  pull_seconds=cold["pullSeconds"], node_seconds=cold["nodeSeconds"],
                                  termination_seconds=grace)
    # prod rolls out as a canary (issue 12): `up` waits on the RolloutWait (issue 18), for the
    # pods like the Deployment would, plus the canary's pauses (which outlast its analysis).
    rollout = run.one("kubernetes:argoproj.io/v1alpha1:Rollout")
    wait = run.one("pulumi-python:dynamic/servedmodel:RolloutWait")
    assert wait.inputs["timeoutSeconds"] > minutes(expected.deployment) * 60 + 10 * 60
    assert rollout.inputs["spec"]["progressDeadlineSeconds"] == expected.progress_deadline_seconds
    probe = rollout.inputs["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["failureThreshold"] == expected.startup_failure_threshold
    service = run.one("kubernetes:core/v1:Service")
    assert service.custom_timeouts == {"create": expected.service, "update": expected.service}
    group = run.one("aws:eks/nodeGroup:NodeGroup")
    assert group.custom_timeouts == {"create": expected.node_group_create, "update": expected.node_group_update}
    # A ClusterIP Service does not wait for a load balancer: the provider's default applies.
    for svc in stack_runs["dev"].of_type("kubernetes:core/v1:Service"):
        assert not svc.custom_timeouts


def test_each_rollout_step_waits_for_the_replaced_pod_to_give_back_its_slot():
    """maxUnavailable 0 on a pool sized for max replicas + the surge: the next new pod may need
    the slot (a GPU) the replaced one holds for its whole grace period (preStop + drain)."""
    quick = readiness_timeouts(100.0, "cuda", max_replicas=10, node_max=11)
    draining = readiness_timeouts(100.0, "cuda", max_replicas=10, node_max=11, termination_seconds=140)
    assert minutes(draining.deployment) * 60 >= minutes(quick.deployment) * 60 + 10 * 140
