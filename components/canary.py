"""Pure builders of the Argo Rollouts objects of a metric-gated canary.

`servedmodel:rollout: canary` replaces the model's Deployment by an Argo Rollouts `Rollout`
(argoproj.io/v1alpha1) with the same pod template, canary steps from config, and a background
analysis: an `AnalysisTemplate` whose `prometheus` metrics judge the canary pods only, on the
server's own metrics (docs/protocol.md, "Metrics"). A failed analysis makes the Argo Rollouts
controller abort the rollout and scale the canary away: the stable version keeps serving.

Plain functions over frozen, self-validating args, returning the camelCase dicts the API server
reads; tested without mocks and strictly against the upstream CRD schemas (tests/crds/). The
queries' metric names and failure reasons come from components/monitoring.py (defined once).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import pulumi

from .args import ArgsError
from .args.rollout import DEFAULT_STEPS, ROLLOUT_STRATEGIES, RolloutArgs, duration_seconds, parse_step
from .monitoring import (
    FAILURES,
    HASH_LABEL,
    HASH_POD_LABEL,
    REQUEST_DURATION,
    REQUESTS,
    SERVER_FAILURE_REASONS,
    SHED_REASONS,
    promql_selector,
)
from .specs import ROLLOUT_SURGE
from .timeouts import rollout_wait_seconds

__all__ = ["CANARY_HASH_ARG", "DEFAULT_STEPS", "HASH_POD_LABEL", "ROLLOUT_STRATEGIES", "ArgsError", "RolloutArgs",
           "RolloutSpec", "analysis_queries", "analysis_seconds", "analysis_template_spec", "awaitable",
           "canary_strategy", "duration_seconds", "parse_step", "pause_seconds", "rollout_annotations", "rollout_spec",
           "rollout_timeout_seconds"]

ROLLOUT_API_VERSION = "argoproj.io/v1alpha1"
# The AnalysisTemplate argument Argo Rollouts fills with the canary ReplicaSet's pod-template
# hash (valueFrom.podTemplateHashValue: Latest); the queries select on it, so they see the
# canary's pods and never the stable ones.
CANARY_HASH_ARG = "canary-hash"
# The analysis metrics, by name (the AnalysisRun reports each under this name).
METRIC_FAILURE_RATIO = "failure-ratio"
METRIC_LATENCY_P99 = "latency-p99"
METRIC_SHED_RATIO = "shed-ratio"


def _ratio_query(reasons: tuple[str, ...], selector: str, window: str) -> str:
    """Share of the selected pods' inference requests that failed for one of `reasons` over
    `window`. A reason never seen has no series: `or vector(0)` makes that a 0, not an empty
    result; no requests at all stays empty (0/0 has no sample), which the conditions read as
    "cannot judge"."""
    reason_re = "|".join(reasons)
    failures = promql_selector(selector, f'reason=~"{reason_re}"')
    return (f"(sum(rate({FAILURES}{failures}[{window}])) or vector(0))"
            f" / sum(rate({REQUESTS}{{{selector}}}[{window}]))")


def analysis_queries(args: RolloutArgs, namespace: str,
                     hash_value: str = "{{args.%s}}" % CANARY_HASH_ARG) -> dict[str, str]:
    """The three PromQL queries, over the pods in `namespace` whose pod-template hash is
    `hash_value` (by default the template placeholder Argo Rollouts resolves)."""
    selector = f'namespace="{namespace}",{HASH_LABEL}="{hash_value}"'
    w = args.analysis_interval
    return {
        METRIC_FAILURE_RATIO: _ratio_query(SERVER_FAILURE_REASONS, selector, w),
        METRIC_LATENCY_P99: (f"histogram_quantile(0.99, sum by (le) "
                             f"(rate({REQUEST_DURATION}_bucket{{{selector}}}[{w}]))) * 1000"),
        METRIC_SHED_RATIO: _ratio_query(SHED_REASONS, selector, w),
    }


# Argo Rollouts retries a measurement that errored (Prometheus unreachable, a query timeout)
# after DefaultErrorRetryInterval = 10 s, not after the metric's interval
# (argoproj/argo-rollouts v1.9.1 analysis/analysis.go), and a metric whose consecutive errors
# exceed consecutiveErrorLimit (default 4: utils/defaults/defaults.go) is Error, which ABORTS
# the rollout like a failure (rollout/analysis.go). With the default, ~50 s of Prometheus
# restart aborts a good canary; the limit below rides out this long an outage (a wrong address
# still aborts, after it).
ARGO_ERROR_RETRY_SECONDS = 10
PROMETHEUS_OUTAGE_SECONDS = 180
CONSECUTIVE_ERROR_LIMIT = -(-PROMETHEUS_OUTAGE_SECONDS // ARGO_ERROR_RETRY_SECONDS)


def inconclusive_limit(args: RolloutArgs) -> int:
    """Idle measurements a metric tolerates: all but one. A window without canary traffic reads
    Inconclusive (below); Argo's default inconclusiveLimit is 0, so ONE quiet minute would pause
    the rollout for a person (argo-rollouts v1.9.1 analysis/analysis.go,
    assessMetricFailureInconclusiveOrError; rollout/analysis.go: Inconclusive -> pause condition
    InconclusiveAnalysisRun). With count - 1 a metric that reaches its count is Successful once
    one window was judged and none failed past failureLimit; only a canary nobody used during
    the whole analysis still stops for a person (and RolloutWait reports that at once)."""
    return args.analysis_count - 1


def _conditions(threshold: float) -> tuple[str, str]:
    """(successCondition, failureCondition) for "at most `threshold`".

    The result is the vector of one sample (or none). Both conditions require exactly one
    sample, and NaN fails every comparison: with no traffic to judge (no sample, or 0/0 = NaN)
    neither holds and Argo records the measurement Inconclusive, never Successful (a version
    nobody used is not judged good) nor Failed (nor Error: `result[0]` on an empty result would
    be an evaluation error). How many such windows a metric tolerates: inconclusive_limit.
    """
    t = repr(float(threshold))
    return f"len(result) == 1 && result[0] <= {t}", f"len(result) == 1 && result[0] > {t}"


def analysis_template_spec(args: RolloutArgs, namespace: str) -> dict[str, Any]:
    """The AnalysisTemplate's spec: one prometheus metric per signal, thresholds from args."""
    thresholds = {METRIC_FAILURE_RATIO: args.max_failure_ratio, METRIC_LATENCY_P99: args.max_p99_latency_ms,
                  METRIC_SHED_RATIO: args.max_shed_ratio}
    metrics = []
    for name, query in analysis_queries(args, namespace).items():
        success, failure = _conditions(thresholds[name])
        metrics.append({
            "name": name,
            "interval": args.analysis_interval,
            # The first measurement waits one window, so it judges a full window of canary traffic.
            "initialDelay": args.analysis_interval,
            "count": args.analysis_count,
            "failureLimit": args.analysis_failure_limit,
            "inconclusiveLimit": inconclusive_limit(args),
            "consecutiveErrorLimit": CONSECUTIVE_ERROR_LIMIT,
            "successCondition": success,
            "failureCondition": failure,
            "provider": {"prometheus": {"address": args.prometheus_address, "query": query,
                                        "timeout": args.query_timeout_seconds}},
        })
    return {"args": [{"name": CANARY_HASH_ARG}], "metrics": metrics}


def canary_strategy(args: RolloutArgs, template_name: pulumi.Input[str]) -> dict[str, Any]:
    """The Rollout's `strategy` (canary): steps, surge like the rolling path (one extra pod, never
    below capacity), and the background analysis with the canary's pod-template hash."""
    return {"canary": {
        "maxSurge": ROLLOUT_SURGE,
        "maxUnavailable": 0,
        "steps": [parse_step(s) for s in args.steps],
        "analysis": {
            "templates": [{"templateName": template_name}],
            "startingStep": args.analysis_starting_step,
            "args": [{"name": CANARY_HASH_ARG, "valueFrom": {"podTemplateHashValue": "Latest"}}],
        },
    }}


@dataclass(frozen=True)
class RolloutSpec:
    """Everything the Rollout's spec needs besides the strategy (shared with the Deployment)."""

    selector: dict[str, str]
    template: dict[str, Any]
    replicas: Optional[int] = None
    """None when an HPA owns the count (the Rollout's scale subresource)."""
    revision_history_limit: int = 5
    progress_deadline_seconds: int = 600
    extra: dict[str, Any] = field(default_factory=dict)


def rollout_spec(base: RolloutSpec, canary: RolloutArgs, template_name: pulumi.Input[str]) -> dict[str, Any]:
    """The Rollout's spec: the full pod template (not a workloadRef: one owner of the pods, see
    docs/deploy.md), and the canary strategy. `progressDeadlineAbort`: a canary that does not
    become ready in time is aborted (rolled back) like one that fails its analysis."""
    spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(base.selector)},
        "template": base.template,
        "revisionHistoryLimit": base.revision_history_limit,
        "progressDeadlineSeconds": base.progress_deadline_seconds,
        "progressDeadlineAbort": True,
        "strategy": canary_strategy(canary, template_name),
    }
    if base.replicas is not None:
        spec["replicas"] = base.replicas
    return spec | base.extra


# The Rollout itself is not awaited by pulumi-kubernetes: a `pulumi.com/waitFor` jsonpath on
# `.status.phase` can match the PREVIOUS revision's Healthy (the provider's generation guard reads
# status.observedGeneration as an int64, Argo writes it as a string: pulumi/pulumi-kubernetes
# provider/pkg/await/condition/jsonpath.go; argoproj/argo-rollouts v1.9.1
# pkg/apis/rollouts/v1alpha1/types.go, ObservedGeneration string). The program declares a
# RolloutWait (components/rollout_wait.py) instead, which reads the Rollout's own view:
# observedGeneration == metadata.generation, stableRS == currentPodHash, phase Healthy.
SKIP_AWAIT_ANNOTATION = "pulumi.com/skipAwait"


def rollout_annotations() -> dict[str, str]:
    """The Rollout's own await: none (RolloutWait judges the outcome, see above)."""
    return {SKIP_AWAIT_ANNOTATION: "true"}


def awaitable(canary: RolloutArgs) -> bool:
    """A canary whose steps all end on their own: one `pulumi up` can wait for its outcome. With
    an indefinite `pause` a person promotes it (`kubectl argo rollouts promote`), so no waiter."""
    return "pause" not in canary.steps


def pause_seconds(canary: RolloutArgs, start: int = 0) -> int:
    """The timed pauses of the steps from index `start` on."""
    return sum(duration_seconds(s.split(":", 1)[1]) for s in canary.steps[start:] if s.startswith("pause:"))


def analysis_seconds(canary: RolloutArgs) -> int:
    """The background analysis from its start to its last measurement, plus one interval: the
    first measurement waits one interval (initialDelay), then one every interval, `count` times."""
    return duration_seconds(canary.analysis_interval) * (canary.analysis_count + 1)


def rollout_timeout_seconds(canary: RolloutArgs, progress_deadline_seconds: int = 600,
                            pods_seconds: int = 0) -> int:
    """How long `pulumi up` waits for the canary's outcome (components/timeouts.py)."""
    return rollout_wait_seconds(pause_seconds(canary), analysis_seconds(canary), pods_seconds,
                                progress_deadline_seconds)
