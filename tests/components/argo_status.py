"""TEST SCAFFOLDING: Rollout objects as the Argo Rollouts v1.9.1 controller leaves them.

Three are upstream's own test data, copied unchanged (argo_rollouts/*.yaml: an aborted canary, an
invalid spec, a canary past its progress deadline). The others are built here field by field,
each naming the controller code that writes those fields (argoproj/argo-rollouts v1.9.1,
b6bd3bcf8f60d717a98763d26acc983db7f97cb0):

- `status.observedGeneration` is a string, `strconv.Itoa(generation)`, written with every status
  patch together with `phase`/`message` from CalculateRolloutPhase (rollout/sync.go
  persistRolloutStatus; utils/rollout/rolloututil.go);
- pause conditions `{reason, startTime}` with `controllerPause: true` (rollout/pause.go
  CalculatePauseConditions); reasons CanaryPauseStep, InconclusiveAnalysisRun
  (pkg/apis/rollouts/v1alpha1/types.go PauseReason);
- an abort: `abort: true`, `abortedAt`, a Progressing condition False / RolloutAborted with
  "Rollout aborted update to revision N: <analysis message>" (rollout/pause.go
  CalculateAbortStatus, rollout/sync.go, rollout/analysis.go "Background analysis phase
  error/failed: ..."), phase Degraded "RolloutAborted: <message>";
- fully promoted: `stableRS == currentPodHash`, Completed and Healthy conditions, phase Healthy
  with an empty message (utils/conditions/conditions.go RolloutCompleted, RolloutHealthy).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

UPSTREAM = Path(__file__).parent / "argo_rollouts"
STABLE_HASH, CANARY_HASH = "6d4f8c9b7", "58b9c7d4f"
T = "2026-12-01T10:00:00Z"


def upstream(name: str) -> dict[str, Any]:
    """One of the copied upstream objects (argo_rollouts/<name>.yaml)."""
    return yaml.safe_load((UPSTREAM / f"{name}.yaml").read_text())


def _rollout(generation: int, status: dict[str, Any], replicas: int = 2) -> dict[str, Any]:
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "classifier-rollout-c2285cb", "namespace": "servedmodel", "generation": generation},
            "spec": {"replicas": replicas, "strategy": {"canary": {"steps": [
                {"setWeight": 20}, {"pause": {"duration": "5m"}}, {"setWeight": 50}, {"pause": {"duration": "5m"}}]}}},
            "status": {"replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
                       "availableReplicas": replicas, "HPAReplicas": replicas, "selector": "app=x",
                       "canary": {}, "blueGreen": {}} | status}


def _cond(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": T, "lastUpdateTime": T}


def healthy_stable(generation: int, pod_hash: str = STABLE_HASH) -> dict[str, Any]:
    """The revision `pod_hash` fully promoted: what the status holds between rollouts."""
    return _rollout(generation, {
        "observedGeneration": str(generation), "phase": "Healthy", "message": "",
        "stableRS": pod_hash, "currentPodHash": pod_hash, "currentStepIndex": 4,
        "conditions": [_cond("Available", "True", "AvailableReason", "Rollout has minimum availability"),
                       _cond("Completed", "True", "RolloutCompleted",
                             f"Rollout completed update to revision 3 ({pod_hash}): Rollout completed"),
                       _cond("Healthy", "True", "RolloutHealthy", "Rollout is healthy"),
                       _cond("Progressing", "True", "NewReplicaSetAvailable", "Rollout has completed rollout")]})


def stale_after_update(generation: int) -> dict[str, Any]:
    """Right after Pulumi's PATCH of a new pod template: metadata.generation is new, the status
    (observedGeneration included) is still the previous generation's Healthy."""
    obj = healthy_stable(generation - 1)
    obj["metadata"]["generation"] = generation
    return obj


def progressing(generation: int) -> dict[str, Any]:
    """The new template observed: the canary ReplicaSet scaling up (setWeight)."""
    return _rollout(generation, {
        "observedGeneration": str(generation), "phase": "Progressing", "message": "more replicas need to be updated",
        "stableRS": STABLE_HASH, "currentPodHash": CANARY_HASH, "currentStepIndex": 0, "updatedReplicas": 0,
        "conditions": [_cond("Progressing", "True", "ReplicaSetUpdated", "ReplicaSet is progressing")]})


def paused_at_step(generation: int) -> dict[str, Any]:
    """At a timed pause step (CanaryPauseStep): not terminal, the controller resumes it."""
    obj = progressing(generation)
    obj["status"] |= {"phase": "Paused", "message": "CanaryPauseStep", "currentStepIndex": 1, "updatedReplicas": 1,
                      "controllerPause": True, "pauseConditions": [{"reason": "CanaryPauseStep", "startTime": T}]}
    return obj


def inconclusive(generation: int) -> dict[str, Any]:
    """The background AnalysisRun ended Inconclusive: a pause for a person (rollout/analysis.go)."""
    obj = paused_at_step(generation)
    obj["status"] |= {"message": "InconclusiveAnalysisRun",
                      "pauseConditions": [{"reason": "InconclusiveAnalysisRun", "startTime": T}],
                      "canary": {"currentBackgroundAnalysisRunStatus": {
                          "name": f"classifier-rollout-{CANARY_HASH}-4", "status": "Inconclusive",
                          "message": 'Metric "latency-p99" assessed Inconclusive due to inconclusive (8) > '
                                     'inconclusiveLimit (7)'}}}
    return obj


def unpausing(generation: int) -> dict[str, Any]:
    """A person cleared the pause conditions; the controller has not reacted yet."""
    obj = paused_at_step(generation)
    obj["status"] |= {"phase": "Paused", "pauseConditions": []}
    return obj


def aborted(generation: int) -> dict[str, Any]:
    """The background analysis failed: aborted, the stable version serves again."""
    why = ('Background analysis phase error/failed: Metric "failure-ratio" assessed Failed due to failed (2) > '
           'failureLimit (1)')
    message = f"Rollout aborted update to revision 4: {why}"
    return _rollout(generation, {
        "observedGeneration": str(generation), "phase": "Degraded", "message": f"RolloutAborted: {message}",
        "abort": True, "abortedAt": T, "stableRS": STABLE_HASH, "currentPodHash": CANARY_HASH, "currentStepIndex": 0,
        "canary": {"currentBackgroundAnalysisRunStatus": {"name": f"classifier-rollout-{CANARY_HASH}-4",
                                                          "status": "Failed", "message": why}},
        "conditions": [_cond("Available", "True", "AvailableReason", "Rollout has minimum availability"),
                       _cond("Progressing", "False", "RolloutAborted", message)]})


def promoted(generation: int) -> dict[str, Any]:
    """Every step done: the canary's ReplicaSet is the stable one."""
    return healthy_stable(generation, CANARY_HASH)


def canary_that_is_promoted(generation: int) -> list[dict[str, Any]]:
    """What a reader sees, in order, after Pulumi updates the pod template of a canary that passes."""
    return [stale_after_update(generation), progressing(generation), paused_at_step(generation),
            progressing(generation), paused_at_step(generation), promoted(generation)]


def canary_that_aborts(generation: int) -> list[dict[str, Any]]:
    """... of a canary whose analysis fails at the first pause."""
    return [stale_after_update(generation), progressing(generation), paused_at_step(generation), aborted(generation)]


def canary_nobody_used(generation: int) -> list[dict[str, Any]]:
    """... of a canary that saw no traffic during its whole analysis."""
    return [stale_after_update(generation), progressing(generation), paused_at_step(generation),
            inconclusive(generation)]


def with_generation(obj: dict[str, Any], generation: int) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"]["generation"] = generation
    return out
