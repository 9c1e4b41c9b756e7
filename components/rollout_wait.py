"""RolloutWait: `pulumi up` returns when a canary's new revision is fully promoted, and fails
when the canary aborts.

Why not the provider's own await. pulumi-kubernetes awaits a custom resource only through
`pulumi.com/waitFor`, and `jsonpath={.status.phase}=Healthy` can match the PREVIOUS revision's
status: the provider skips a status whose observedGeneration is older only when it reads it as
an int64 (pulumi/pulumi-kubernetes provider/pkg/await/condition/jsonpath.go, Satisfied), while
Argo Rollouts writes it as a string (argoproj/argo-rollouts v1.9.1
pkg/apis/rollouts/v1alpha1/types.go, `ObservedGeneration string`; rollout/sync.go writes
strconv.Itoa(generation)). Right after the update the stored status is still the old Healthy,
so `up` (and CI) could report success before or during the canary, and a pause or an abort
never matches, so those ran into the timeout. Argo documents the rule itself: clients should
rely on `status.phase` only once observedGeneration equals metadata.generation (types.go, the
Phase field), which is what `kubectl argo rollouts status` does (rolloututil.GetRolloutPhase).

Design. A Pulumi dynamic resource (the Python SDK's `pulumi.dynamic`) declared after the
Rollout (the Rollout carries `pulumi.com/skipAwait`), whose inputs are the Rollout's name and a
hash of its declared spec: the engine runs it exactly when the Rollout's spec changed (and on
the first `up`), and never at preview. Its create/update polls the Rollout with the Kubernetes
Python client and the stack's kubeconfig until `rollout_verdict` says done or failed, or the
deadline (components/timeouts.py rollout_wait_seconds) passes. Chosen over a
`pulumi_command` local Command running kubectl: no kubectl binary or extra provider plugin on
the machine that runs `up`, and the verdict is a plain function the tests call directly.
The kubeconfig is a secret input that is never written to the resource's outputs.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, cast

import pulumi
import pulumi.dynamic

ROLLOUT_GROUP, ROLLOUT_VERSION, ROLLOUT_PLURAL = "argoproj.io", "v1alpha1", "rollouts"
POLL_SECONDS = 10
# Inputs whose change means "a new spec to wait for"; the kubeconfig, the deadline and the poll
# period are how to wait, not what for (a changed deadline alone must not re-run the wait).
TRIGGERS = ("namespace", "name", "specHash")

DONE, WAIT, FAILED = "done", "wait", "failed"
# Argo Rollouts v1.9.1 reasons (utils/conditions/conditions.go; pkg/apis/rollouts/v1alpha1/types.go).
ABORTED_REASON = "RolloutAborted"
TIMED_OUT_REASON = "ProgressDeadlineExceeded"
# The pause reasons of an inconclusive background analysis or experiment (types.go PauseReason:
# "InconclusiveAnalysisRun", "InconclusiveExperiment"; added by rollout/analysis.go).
INCONCLUSIVE_REASONS = ("InconclusiveAnalysisRun", "InconclusiveExperiment")


@dataclass(frozen=True)
class Verdict:
    state: str
    """done | wait | failed"""
    message: str


def _conditions(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in status.get("conditions") or [] if isinstance(c, dict)]


def rollout_verdict(rollout: dict[str, Any]) -> Verdict:
    """Argo Rollouts' own view of one Rollout object (as the API server returns it).

    In the order Argo decides it (argoproj/argo-rollouts v1.9.1):
    - not observed: `status.observedGeneration` (a string) != `metadata.generation` -> wait; the
      status describes an older spec (rolloututil.GetRolloutPhase, isGenerationObserved);
    - aborted -> failed: `status.abort`, or the Progressing condition with reason RolloutAborted
      (rollout/sync.go; a background analysis that Failed or Errored aborts, rollout/analysis.go);
    - Degraded -> failed: an InvalidSpec condition, or a condition with reason RolloutAborted or
      ProgressDeadlineExceeded, or phase Degraded (rolloututil.CalculateRolloutPhase);
    - paused by an inconclusive analysis -> failed: the pause condition InconclusiveAnalysisRun
      waits for a person (`kubectl argo rollouts promote` or `abort`), never for time;
    - the controller still unpausing (controllerPause without pause conditions) -> wait;
    - fully promoted -> done: `stableRS` == `currentPodHash` (rolloututil.IsFullyPromoted) and
      phase Healthy (every replica updated and available);
    - anything else (Progressing, Paused at a timed step) -> wait.
    """
    meta = rollout.get("metadata") or {}
    status = rollout.get("status") or {}
    generation = meta.get("generation")
    observed = status.get("observedGeneration")
    if generation is None or observed is None or str(observed) != str(generation):
        return Verdict(WAIT, f"waiting for Argo Rollouts to observe generation {generation} "
                             f"(status describes {observed!r})")
    message = status.get("message") or ""
    conditions = _conditions(status)
    aborted = [c for c in conditions if c.get("reason") == ABORTED_REASON]
    if status.get("abort") is True or aborted:
        why = (aborted[0].get("message") if aborted else "") or message
        return Verdict(FAILED, f"the canary was aborted, the stable version keeps serving: {why}".rstrip(": "))
    invalid = [c for c in conditions if c.get("type") == "InvalidSpec"]
    timed_out = [c for c in conditions if c.get("reason") == TIMED_OUT_REASON]
    if invalid or timed_out or status.get("phase") == "Degraded":
        why = (invalid or timed_out)[0].get("message", "") if (invalid or timed_out) else message
        return Verdict(FAILED, f"the rollout is Degraded: {why}".rstrip(": "))
    pauses = [p for p in status.get("pauseConditions") or [] if isinstance(p, dict)]
    if any(p.get("reason") in INCONCLUSIVE_REASONS for p in pauses):
        return Verdict(FAILED, "the canary analysis was inconclusive (no metric judged a single window: the canary "
                               "got no traffic) and Argo Rollouts paused for a person: "
                               "`kubectl argo rollouts promote <rollout>` to accept, "
                               "`... abort <rollout>` to roll back")
    if status.get("controllerPause") and not pauses:
        return Verdict(WAIT, "waiting for the rollout to unpause")
    stable, current = status.get("stableRS"), status.get("currentPodHash")
    phase = status.get("phase") or _replicas_phase(rollout)
    if stable and stable == current and phase == "Healthy":
        return Verdict(DONE, f"revision {current} is fully promoted and Healthy")
    return Verdict(WAIT, f"{phase}{': ' + message if message else ''}")


def _replicas_phase(rollout: dict[str, Any]) -> str:
    """The phase a controller older than v1.0 did not write, from the replica counts as
    rolloututil.CalculateRolloutPhase computes it for a basic canary (v1.9.1 writes the phase)."""
    spec, status = rollout.get("spec") or {}, rollout.get("status") or {}
    updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    if status.get("pauseConditions") or spec.get("paused"):
        return "Paused"
    if updated < spec.get("replicas", 1) or available < updated or status.get("replicas", 0) > updated:
        return "Progressing"
    return "Healthy"


class RolloutWaitError(Exception):
    """The canary failed (aborted, Degraded, inconclusive) or did not finish in time."""


def wait_for_rollout(fetch: Callable[[], Optional[dict[str, Any]]], timeout_seconds: float,
                     poll_seconds: float = POLL_SECONDS, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> Verdict:
    """Poll `fetch` (the Rollout, or None while it cannot be read) until the verdict is done
    (returned) or failed (raised), or `timeout_seconds` pass (raised, with the last state).
    A failed read (network, 5xx, an expired token) is retried until the deadline."""
    deadline = clock() + timeout_seconds
    last = Verdict(WAIT, "not read yet")
    while True:
        try:
            obj = fetch()
        except Exception as exc:  # noqa: BLE001 - any read failure is retried until the deadline
            last = Verdict(WAIT, f"could not read the Rollout: {exc}")
        else:
            last = rollout_verdict(obj) if obj is not None else Verdict(WAIT, "the Rollout does not exist yet")
            if last.state == DONE:
                return last
            if last.state == FAILED:
                raise RolloutWaitError(last.message)
        if clock() >= deadline:
            raise RolloutWaitError(f"the canary did not finish within {int(timeout_seconds)}s; last state: "
                                   f"{last.message} "
                                  "(follow it with `kubectl argo rollouts get rollout <name> --watch`)")
        sleep(poll_seconds)


def spec_hash(spec: Any) -> str:
    """A stable digest of the Rollout's declared spec: the waiter's trigger. Numbers are
    normalised: a spec read back from the engine has 600.0 where the program declared 600
    (the wire has only doubles)."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    return hashlib.sha256(json.dumps(plain(spec), sort_keys=True, default=str).encode()).hexdigest()


def _rollout_reader(kubeconfig: Optional[str], namespace: str, name: str) -> Callable[[], Optional[dict[str, Any]]]:
    """A function that GETs the Rollout with the kubernetes client (kubernetes==35.0.0)."""
    import yaml
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    if kubeconfig:
        api_client = config.new_client_from_config_dict(yaml.safe_load(kubeconfig))
    else:
        try:
            config.load_kube_config()
        except config.ConfigException:
            config.load_incluster_config()
        api_client = client.ApiClient()
    api = client.CustomObjectsApi(api_client)

    def fetch() -> Optional[dict[str, Any]]:
        try:
            # The Rollout as JSON (the client annotates it `object`).
            return cast(dict[str, Any], api.get_namespaced_custom_object(
                ROLLOUT_GROUP, ROLLOUT_VERSION, namespace, ROLLOUT_PLURAL, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
    return fetch


class RolloutWaitProvider(pulumi.dynamic.ResourceProvider):
    """create/update wait for the Rollout's verdict; delete has nothing to undo."""

    def _wait(self, props: dict[str, Any]) -> dict[str, Any]:
        fetch = _rollout_reader(props.get("kubeconfig"), props["namespace"], props["name"])
        verdict = wait_for_rollout(fetch, float(props["timeoutSeconds"]),
                                   float(props.get("pollSeconds") or POLL_SECONDS))
        # Never echo the kubeconfig into the outputs (the state).
        return {k: props.get(k) for k in (*TRIGGERS, "timeoutSeconds", "pollSeconds")} | {"verdict": verdict.message}

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        return pulumi.dynamic.CreateResult(id_=f"{props['namespace']}/{props['name']}", outs=self._wait(props))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(outs=self._wait(news))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        return pulumi.dynamic.DiffResult(changes=any(olds.get(k) != news.get(k) for k in TRIGGERS),
                                         replaces=[], delete_before_replace=False)

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


@dataclass(frozen=True)
class RolloutWaitArgs:
    namespace: pulumi.Input[str]
    """The Rollout's namespace (another resource's output too). Required."""
    name: pulumi.Input[str]
    """The Rollout's name (its output, so the engine orders the wait after the Rollout). Required."""
    spec: pulumi.Input[Any]
    """The Rollout's declared spec (its output): a change of it re-runs the wait. Required."""
    timeout_seconds: int
    """The deadline of the happy path (components/timeouts.py rollout_wait_seconds). Required."""
    kubeconfig: Optional[pulumi.Input[str]] = None
    """The cluster's kubeconfig (secret); None: the client's own lookup. Default None."""
    poll_seconds: int = POLL_SECONDS
    """Seconds between reads. Default 10."""


class RolloutWait(pulumi.dynamic.Resource, module="servedmodel", name="RolloutWait"):
    """Waits for the Rollout named in `args` (type `pulumi-python:dynamic/servedmodel:RolloutWait`).

    Outputs: `verdict` (what Argo reported when the wait ended)."""

    verdict: pulumi.Output[str]

    def __init__(self, name: str, args: RolloutWaitArgs, opts: Optional[pulumi.ResourceOptions] = None):
        props = {
            "namespace": args.namespace,
            "name": args.name,
            "specHash": pulumi.Output.from_input(args.spec).apply(spec_hash),
            "timeoutSeconds": args.timeout_seconds,
            "pollSeconds": args.poll_seconds,
            "kubeconfig": pulumi.Output.secret(args.kubeconfig) if args.kubeconfig is not None else None,
            "verdict": None,
        }
        super().__init__(RolloutWaitProvider(), name, props, opts)
