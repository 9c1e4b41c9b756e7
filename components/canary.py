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

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from components.monitoring import (HASH_LABEL, REQUEST_DURATION, REQUESTS, SERVER_FAILURE_REASONS,
                                   SHED_REASONS, FAILURES, promql_selector)
from components.settings import ConfigError

ROLLOUT_STRATEGIES = ("rolling", "canary")
ROLLOUT_API_VERSION = "argoproj.io/v1alpha1"
# The AnalysisTemplate argument Argo Rollouts fills with the canary ReplicaSet's pod-template
# hash (valueFrom.podTemplateHashValue: Latest); the queries select on it, so they see the
# canary's pods and never the stable ones.
CANARY_HASH_ARG = "canary-hash"
DEFAULT_STEPS = ("setWeight:20", "pause:2m", "setWeight:50", "pause:2m")
# The analysis metrics, by name (the AnalysisRun reports each under this name).
METRIC_FAILURE_RATIO = "failure-ratio"
METRIC_LATENCY_P99 = "latency-p99"
METRIC_SHED_RATIO = "shed-ratio"

# Argo's durations as this package accepts them: a whole number of s, m or h ("90s", "2m").
_DURATION = re.compile(r"^([1-9][0-9]*)(s|m|h)$")
_ADDRESS = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def duration_seconds(value: str) -> int:
    """'90s' -> 90, '2m' -> 120, '1h' -> 3600 (the grammar _DURATION accepts)."""
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return int(m.group(1)) * _SECONDS[m.group(2)]


def parse_step(step: str) -> dict[str, Any]:
    """One canary step in the config grammar -> the Rollout's step object.

    `setWeight:N` (N in 1..100: percent of the replicas that run the new version), `pause:D`
    (D a duration such as 90s, 2m, 1h) or `pause` (wait for `kubectl argo rollouts promote`).
    """
    kind, sep, value = step.partition(":")
    if kind == "setWeight" and sep and value.isdigit() and 1 <= int(value) <= 100:
        return {"setWeight": int(value)}
    if kind == "pause" and not sep:
        return {"pause": {}}
    if kind == "pause" and sep and _DURATION.match(value):
        return {"pause": {"duration": value}}
    raise ValueError(step)


@dataclass(frozen=True)
class AnalysisArgs:
    """What the canary is judged on, and how often. Validates itself (ConfigError)."""

    prometheus_address: str
    """Prometheus HTTP address the Argo Rollouts controller queries, e.g.
    http://prometheus-operated.monitoring.svc:9090. Required."""
    namespace: str
    """Namespace of the model's pods (the `namespace` target label). Required."""
    interval: str = "1m"
    """Time between measurements, and the window each measurement judges. Default "1m"."""
    count: int = 5
    """Measurements per metric; the analysis succeeds after this many. Default 5."""
    failure_limit: int = 1
    """Failed measurements a metric tolerates; one more aborts the rollout. Default 1."""
    max_failure_ratio: float = 0.01
    """Highest tolerated share of requests failing on the server side (model_error, internal).
    Default 0.01."""
    max_p99_latency_ms: int = 500
    """Highest tolerated p99 request latency in ms. Default 500."""
    max_shed_ratio: float = 0.01
    """Highest tolerated share of requests shed (queue full or queue time over budget).
    Default 0.01."""
    timeout_seconds: int = 10
    """Prometheus query timeout. Default 10."""

    def __post_init__(self) -> None:
        problems = []
        if not _ADDRESS.match(self.prometheus_address):
            problems.append(f"prometheus address {self.prometheus_address!r} is not an http(s):// URL "
                            "(e.g. http://prometheus-operated.monitoring.svc:9090)")
        if not self.namespace:
            problems.append("namespace is empty")
        if not _DURATION.match(self.interval):
            problems.append(f"analysis interval {self.interval!r} is not a duration like 30s, 1m or 1h")
        if not 1 <= self.count <= 100:
            problems.append(f"analysis count {self.count} is not in 1..100")
        if not 0 <= self.failure_limit < self.count:
            problems.append(f"analysis failure limit {self.failure_limit} must be in 0..count-1 "
                            f"({self.count - 1}): with {self.count} measurements a higher limit never aborts")
        for name, value in (("max failure ratio", self.max_failure_ratio), ("max shed ratio", self.max_shed_ratio)):
            if not 0 <= value < 1:
                problems.append(f"{name} {value} is not in [0, 1)")
        if self.max_p99_latency_ms <= 0:
            problems.append(f"max p99 latency {self.max_p99_latency_ms} ms must be above 0")
        if not 1 <= self.timeout_seconds <= 300:
            problems.append(f"query timeout {self.timeout_seconds}s is not in 1..300")
        if problems:
            raise ConfigError(problems)


@dataclass(frozen=True)
class CanaryArgs:
    """A metric-gated canary: steps, and the analysis that gates them. Validates itself."""

    analysis: AnalysisArgs
    """The background analysis. Required."""
    steps: tuple[str, ...] = DEFAULT_STEPS
    """Canary steps: setWeight:N, pause:D, pause (indefinite). Default 20% 2m, 50% 2m."""

    def __post_init__(self) -> None:
        problems = []
        if not self.steps:
            problems.append("canary steps are empty: give at least one setWeight:N")
        bad = []
        for step in self.steps:
            try:
                parse_step(step)
            except ValueError:
                bad.append(step)
        if bad:
            problems.append(f"canary steps {bad} are not setWeight:N (N in 1..100), pause:D "
                            "(D like 90s, 2m, 1h) or pause")
        elif self.steps and not any(s.startswith("setWeight:") for s in self.steps):
            problems.append("canary steps have no setWeight:N: the canary would never get traffic to judge")
        if problems:
            raise ConfigError(problems)

    @property
    def analysis_starting_step(self) -> int:
        """The analysis starts with the step after the first setWeight: the canary has pods (and
        traffic) by then, so the first measurement is not of an empty ReplicaSet."""
        first = next(i for i, s in enumerate(self.steps) if s.startswith("setWeight:"))
        return min(first + 1, len(self.steps) - 1) if len(self.steps) > 1 else 0


def _ratio_query(reasons: tuple[str, ...], selector: str, window: str) -> str:
    """Share of the selected pods' inference requests that failed for one of `reasons` over
    `window`. A reason never seen has no series: `or vector(0)` makes that a 0, not an empty
    result; no requests at all stays empty (0/0 has no sample), which the conditions read as
    "cannot judge"."""
    reason_re = "|".join(reasons)
    failures = promql_selector(selector, f'reason=~"{reason_re}"')
    return (f"(sum(rate({FAILURES}{failures}[{window}])) or vector(0))"
            f" / sum(rate({REQUESTS}{{{selector}}}[{window}]))")


def analysis_queries(args: AnalysisArgs, hash_value: str = "{{args.%s}}" % CANARY_HASH_ARG) -> dict[str, str]:
    """The three PromQL queries, over the pods whose pod-template hash is `hash_value` (by
    default the template placeholder Argo Rollouts resolves)."""
    selector = f'namespace="{args.namespace}",{HASH_LABEL}="{hash_value}"'
    w = args.interval
    return {
        METRIC_FAILURE_RATIO: _ratio_query(SERVER_FAILURE_REASONS, selector, w),
        METRIC_LATENCY_P99: (f"histogram_quantile(0.99, sum by (le) "
                             f"(rate({REQUEST_DURATION}_bucket{{{selector}}}[{w}]))) * 1000"),
        METRIC_SHED_RATIO: _ratio_query(SHED_REASONS, selector, w),
    }


def _conditions(threshold: float) -> tuple[str, str]:
    """(successCondition, failureCondition) for "at most `threshold`".

    The result is the vector of one sample (or none). Both conditions require exactly one
    sample, and NaN fails every comparison: with no traffic to judge (no sample, or 0/0 = NaN)
    neither holds and Argo records the measurement Inconclusive — the rollout pauses for a
    person instead of promoting a version nobody has used, or aborting a good one.
    """
    t = repr(float(threshold))
    return f"len(result) == 1 && result[0] <= {t}", f"len(result) == 1 && result[0] > {t}"


def analysis_template_spec(args: AnalysisArgs) -> dict[str, Any]:
    """The AnalysisTemplate's spec: one prometheus metric per signal, thresholds from args."""
    thresholds = {METRIC_FAILURE_RATIO: args.max_failure_ratio, METRIC_LATENCY_P99: args.max_p99_latency_ms,
                  METRIC_SHED_RATIO: args.max_shed_ratio}
    metrics = []
    for name, query in analysis_queries(args).items():
        success, failure = _conditions(thresholds[name])
        metrics.append({
            "name": name,
            "interval": args.interval,
            # The first measurement waits one window, so it judges a full window of canary traffic.
            "initialDelay": args.interval,
            "count": args.count,
            "failureLimit": args.failure_limit,
            "successCondition": success,
            "failureCondition": failure,
            "provider": {"prometheus": {"address": args.prometheus_address, "query": query,
                                        "timeout": args.timeout_seconds}},
        })
    return {"args": [{"name": CANARY_HASH_ARG}], "metrics": metrics}


def canary_strategy(args: CanaryArgs, template_name: str) -> dict[str, Any]:
    """The Rollout's `strategy` (canary): steps, surge like the rolling path (one extra pod, never
    below capacity), and the background analysis with the canary's pod-template hash."""
    return {"canary": {
        "maxSurge": 1,
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


def rollout_spec(base: RolloutSpec, canary: CanaryArgs, template_name: str) -> dict[str, Any]:
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


# pulumi-kubernetes (>= 4.18) awaits a custom resource only when told how: with this
# annotation `pulumi up` waits until the Rollout reports Healthy (every step done, the analysis
# passed, the new version stable). An aborted rollout stays Degraded, so the wait times out and
# `pulumi up` fails on the Rollout — the outcome is reported, not hidden.
WAIT_FOR_ANNOTATION = "pulumi.com/waitFor"
WAIT_FOR_HEALTHY = "jsonpath={.status.phase}=Healthy"
TIMEOUT_ANNOTATION = "pulumi.com/timeoutSeconds"


def rollout_timeout_seconds(canary: CanaryArgs, progress_deadline_seconds: int = 600) -> int:
    """How long `pulumi up` waits for the Rollout: every timed pause, the whole analysis
    (initial delay + count intervals), and the progress deadline for the pods to come up."""
    pauses = sum(duration_seconds(s.split(":", 1)[1]) for s in canary.steps
                 if s.startswith("pause:"))
    interval = duration_seconds(canary.analysis.interval)
    analysis = interval * (canary.analysis.count + 1)
    return max(pauses, analysis) + progress_deadline_seconds


def rollout_annotations(canary: CanaryArgs, progress_deadline_seconds: int = 600) -> dict[str, str]:
    """The await annotations; without a timed end (an indefinite `pause`) there is nothing to
    wait for in one `pulumi up`: no waitFor, the Rollout's status is read with the plugin."""
    if any(s == "pause" for s in canary.steps):
        return {}
    return {WAIT_FOR_ANNOTATION: WAIT_FOR_HEALTHY,
            TIMEOUT_ANNOTATION: str(rollout_timeout_seconds(canary, progress_deadline_seconds))}
