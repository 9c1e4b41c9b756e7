"""How long the engine waits for what becomes ready only when the model does.

Pure arithmetic over the model's start-up time (tested without mocks in
tests/components/test_timeouts.py). The Deployment, a LoadBalancer Service (Pulumi's await
waits for its NLB and for ready endpoints) and the GPU node group get `customTimeouts` from
here, a canary's RolloutWait its deadline, and the Deployment's progress deadline and startup probe
budget come from the same per-pod figure, so a slow model fails its rollout for a reason, not for a default.

The program passes the model's cold-start budget (components/coldstart.py): its start (process
+ the load and warm-up the build measured, kept beside the manifest), pull and node parts; without
a measurement the startup probe's full budget is assumed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .specs import ROLLOUT_SURGE, STARTUP_PROBE_PERIOD

# Measured on the build machine: production hardware, a cold page cache and CUDA's context
# creation can be slower, so the budget is this many times the measurement, never below a floor.
STARTUP_MARGIN = 3.0
STARTUP_FLOOR_SECONDS = {"cpu": 60, "cuda": 120}
# No measurement: the startup probe's historical budget (60 probes x 5 s).
UNMEASURED_STARTUP_SECONDS = 300
# Pulling the image onto a node that does not have it (the CUDA image is several GB).
IMAGE_PULL_SECONDS = {"cpu": 60, "cuda": 240}
# A new GPU node: the node group (or autoscaler) launches it, it joins, the device plugin
# advertises its GPUs. A surge pod may have to wait for one.
NODE_START_SECONDS = 420
# The NLB of a LoadBalancer Service: provisioning and its first healthy targets.
LOAD_BALANCER_SECONDS = 420
# An EKS managed node group: creating it, and replacing one node at a time on an update.
NODE_GROUP_CREATE_SECONDS = 1800
NODE_REPLACE_SECONDS = 900
# Never below the provider's own default await (10 minutes).
MIN_AWAIT_SECONDS = 600
# A canary's wait (RolloutWait) beyond its steps and pods: Argo's reconcile of the new spec, the
# analysis' last query and the scale-down of the old ReplicaSet after promotion.
ROLLOUT_WAIT_MARGIN_SECONDS = 300


@dataclass(frozen=True)
class ReadinessTimeouts:
    startup_budget_seconds: int
    """How long the startup probe lets one server start (probe period x failure threshold)."""
    startup_failure_threshold: int
    pod_seconds: int
    """One pod from scheduling to ready: maybe a new node, the image pull, the start-up."""
    progress_deadline_seconds: int
    """The Deployment's progressDeadlineSeconds: one pod's worth of progress, with slack."""
    deployment: str
    """customTimeouts create/update of the Deployment: a whole rolling update at max replicas."""
    service: str
    """customTimeouts create/update of a LoadBalancer Service: the NLB and a ready pod."""
    node_group_create: str
    node_group_update: str


def _minutes(seconds: float) -> str:
    return f"{math.ceil(max(seconds, MIN_AWAIT_SECONDS) / 60)}m"


def minutes_to_seconds(timeout: str) -> int:
    """"45m" (a customTimeouts value written by _minutes) -> 2700."""
    return int(timeout.removesuffix("m")) * 60


def readiness_timeouts(startup_seconds: Optional[float], device: str, max_replicas: int,
                       node_max: int = 0, pull_seconds: Optional[float] = None,
                       node_seconds: Optional[float] = None, termination_seconds: int = 0) -> ReadinessTimeouts:
    """Timeouts for one model: `startup_seconds` measured (None: unknown), on `device`
    (cpu/cuda), rolled out up to `max_replicas` pods, on a GPU pool of up to `node_max` nodes.

    `pull_seconds` / `node_seconds` are the model's cold-start budget's parts
    (components/coldstart.py: its image's compressed bytes at the configured bandwidth, the
    instance family's node time); without them the per-device allowances below are used.
    `termination_seconds` is how long a replaced pod keeps its slot (its grace period: preStop +
    drain): on a pool sized for max replicas + the surge, each step's new pod may wait for it."""
    if startup_seconds is None:
        budget = UNMEASURED_STARTUP_SECONDS
    else:
        budget = max(STARTUP_FLOOR_SECONDS[device], math.ceil(startup_seconds * STARTUP_MARGIN))
    threshold = math.ceil(budget / STARTUP_PROBE_PERIOD)
    budget = threshold * STARTUP_PROBE_PERIOD
    pull = IMAGE_PULL_SECONDS[device] if pull_seconds is None else math.ceil(pull_seconds)
    node = (NODE_START_SECONDS if device == "cuda" else 0) if node_seconds is None else math.ceil(node_seconds)
    pod = pull + budget + node
    # maxUnavailable 0: pods are replaced ROLLOUT_SURGE at a time, each waiting to be ready.
    steps = math.ceil(max_replicas / ROLLOUT_SURGE)
    return ReadinessTimeouts(
        startup_budget_seconds=budget,
        startup_failure_threshold=threshold,
        pod_seconds=pod,
        progress_deadline_seconds=max(MIN_AWAIT_SECONDS, math.ceil(pod * 1.5)),
        deployment=_minutes(steps * (pod + termination_seconds) * 1.25),
        service=_minutes(LOAD_BALANCER_SECONDS + pod),
        node_group_create=_minutes(NODE_GROUP_CREATE_SECONDS),
        node_group_update=_minutes(max(1, node_max) * NODE_REPLACE_SECONDS),
    )


def rollout_wait_seconds(pause_seconds: int, analysis_seconds: int, pods_seconds: int,
                         progress_deadline_seconds: int) -> int:
    """How long `pulumi up` waits for a canary's outcome (components/rollout_wait.py).

    The steps end on their own: the timed pauses (`pause_seconds`) plus bringing every pod of
    the new version up (`pods_seconds`, the Deployment's rolling time: maxSurge 1, each pod
    maybe on a new node; never less than one progress deadline, after which Argo aborts the
    canary anyway with progressDeadlineAbort). The background analysis runs within the pauses
    (RolloutArgs refuses steps shorter than it, since Argo promotes when the steps end:
    argoproj/argo-rollouts v1.9.1 rollout/canary.go, rollout/sync.go shouldFullPromote); its
    length counts too in case it is the longer. An abort, a Degraded rollout or an
    inconclusive analysis ends the wait at once, so this bounds only the happy path."""
    return (max(pause_seconds, analysis_seconds) + max(pods_seconds, progress_deadline_seconds)
            + ROLLOUT_WAIT_MARGIN_SECONDS)
