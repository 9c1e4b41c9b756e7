"""RolloutArgs: how a new model version reaches traffic; the canary's grammar (steps, durations).

components/canary.py builds the Argo Rollouts objects from these args; the step and duration
grammar is the rollout's own concept and lives here, with the args that hold it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from .checking import ArgsGroup, Checker, integer, matching, one_of
from .setting import setting

ROLLOUT_STRATEGIES = ("rolling", "canary")
# 2 x 3m: the default analysis (5 measurements a minute apart after a first minute) fits in the
# pauses from its starting step, as RolloutArgs requires (issue 18).
DEFAULT_STEPS = ("setWeight:20", "pause:3m", "setWeight:50", "pause:3m")
# Argo's durations as this package accepts them: a whole number of s, m or h ("90s", "2m").
DURATION = re.compile(r"^([1-9][0-9]*)(s|m|h)$")
_ADDRESS = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def duration_seconds(value: str) -> int:
    """'90s' -> 90, '2m' -> 120, '1h' -> 3600 (the grammar DURATION accepts)."""
    m = DURATION.match(value)
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
    if kind == "pause" and sep and DURATION.match(value):
        return {"pause": {"duration": value}}
    raise ValueError(step)


def _steps(value: Any) -> Optional[list[tuple[Any, str]]]:
    steps: tuple[Any, ...] = tuple(value or ())
    bad = []
    for step in steps:
        try:
            parse_step(step)
        except (ValueError, AttributeError):
            bad.append(step)
    if not steps or bad:
        return [(list(steps), "a non-empty list of setWeight:N (N in 1..100), pause:D (D like 90s, 2m, 1h) or pause")]
    if not any(s.startswith("setWeight:") for s in steps):
        return [(list(steps), "needs a setWeight:N step: without one the canary never gets traffic to judge")]
    return None


def share_below_one(value: Any) -> Optional[str]:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        return "a share between 0 and 1, such as 0.01"
    return None


@dataclass(frozen=True)
class RolloutArgs(ArgsGroup):
    """How a new model version reaches traffic. Validates itself (ArgsError).

    `rolling` (the default) is the Deployment's rolling update; `canary` an Argo Rollouts
    Rollout whose steps shift replicas to the new version while a background analysis judges
    the canary's pods on the server's metrics, and aborts (rolls back) when they are worse than
    the thresholds. The analysis fields are ignored by `rolling`.
    """

    GROUP = "rollout"
    STACK_GROUP = "rollout"
    SHORTHAND = "strategy"  # servedmodel:rollout: canary

    strategy: str = setting(
        "rolling", "How a new model version reaches traffic - \"rolling\" (the Deployment's rolling update) or "
                   "\"canary\" (an Argo Rollouts Rollout that shifts replicas to the new version step by step while "
                   "an AnalysisTemplate judges the canary pods on the server's metrics through Prometheus, and aborts "
                   "and rolls back when they are worse than the analysis thresholds). canary needs the kubernetes "
                   "target, Argo Rollouts in the cluster and @{elastic.prometheus_url} (docs/deploy.md).",
        key="rollout", check=one_of(ROLLOUT_STRATEGIES))
    steps: tuple[str, ...] = setting(
        DEFAULT_STEPS, "Canary steps (rollout canary) - \"setWeight:N\" (N percent of the replicas run the new "
                       "version), \"pause:D\" (D such as 90s, 2m, 1h) or \"pause\" (wait for `kubectl argo rollouts "
                       "promote`). After the last step the new version takes 100%. The timed pauses from the analysis' "
                       "first "
                       "step must last (@{rollout.analysis_count} + 1) x @{rollout.analysis_interval} - Argo promotes "
                       "when the steps end, whatever the analysis has not yet measured.",
        key="canarySteps", check=_steps)
    prometheus_address: str = ""
    """Prometheus HTTP address the Argo Rollouts controller queries (canary: required), e.g.
    http://prometheus-operated.monitoring.svc:9090. The stack sets it from its one Prometheus
    (`servedmodel:prometheusUrl`). Default ""."""
    analysis_interval: str = setting(
        "1m", "Time between canary analysis measurements, and the window each one judges (a duration such as 30s, "
              "1m).", check=matching(DURATION, "a duration such as 30s, 1m or 1h"))
    analysis_count: int = setting(5, "Measurements per analysis metric during a canary.", check=integer(1, 100))
    analysis_failure_limit: int = setting(
        1, "Failed measurements an analysis metric tolerates; one more aborts the canary and rolls back. Below "
           "@{rollout.analysis_count}.", check=integer(0))
    max_failure_ratio: float = setting(
        0.01, "Highest share of the canary's requests that may fail in the server (model_error, internal), a decimal "
              "number in a string.", key="analysisMaxFailureRatio", check=share_below_one)
    max_p99_latency_ms: int = setting(500, "Highest p99 request latency of the canary in milliseconds.",
                                      key="analysisMaxP99LatencyMs", check=integer(1))
    max_shed_ratio: float = setting(
        0.01, "Highest share of the canary's requests that may be shed (503 - queue full or queue time over "
              "budget), a decimal number in a string.", key="analysisMaxShedRatio", check=share_below_one)
    query_timeout_seconds: int = 10
    """Prometheus query timeout. Default 10."""

    def rules(self, c: Checker) -> None:
        if self.strategy == "canary" and not _ADDRESS.match(self.prometheus_address or ""):
            c.bad("prometheus_address", "the canary analysis needs Prometheus' http(s):// address, e.g. "
                                        "http://prometheus-operated.monitoring.svc:9090")
        elif self.prometheus_address and not _ADDRESS.match(self.prometheus_address):
            c.bad("prometheus_address", "must be an http(s):// URL")
        if c.ok("analysis_count", "analysis_failure_limit") and self.analysis_failure_limit >= self.analysis_count:
            c.bad("analysis_failure_limit", f"must be below @{{rollout.analysis_count}} ({self.analysis_count}): "
                                            "a higher limit can never abort")
        c.check("query_timeout_seconds", integer(1, 300))
        if self.strategy == "canary" and c.ok("strategy", "steps", "analysis_interval", "analysis_count"):
            self._check_analysis_fits_the_pauses(c)

    def _check_analysis_fits_the_pauses(self, c: Checker) -> None:
        """A background analysis does not hold promotion: Argo promotes once the last step is
        done, and a run it then terminates counts as Successful whatever it had not measured yet
        (argoproj/argo-rollouts v1.9.1 rollout/canary.go and rollout/sync.go shouldFullPromote;
        analysis/analysis.go, a terminated run). So the timed pauses from the analysis' starting
        step must last as long as the analysis: its first measurement after one interval, then
        `analysis_count` of them one interval apart, plus one interval for the last query."""
        after = self.steps[self.analysis_starting_step:]
        if "pause" in after:
            return  # an indefinite pause waits for a person, and the analysis goes on meanwhile
        paused = sum(duration_seconds(s.split(":", 1)[1]) for s in after if s.startswith("pause:"))
        need = duration_seconds(self.analysis_interval) * (self.analysis_count + 1)
        if paused < need:
            c.bad("steps", f"the timed pauses from the analysis' first step (step {self.analysis_starting_step}) "
                           f"last {paused}s, less than the analysis needs ({need}s: @{{rollout.analysis_count}} "
                           f"{self.analysis_count} measurements every @{{rollout.analysis_interval}} "
                           f"{self.analysis_interval}, after a first wait of one interval); Argo Rollouts promotes "
                           "when the steps end, unjudged: lengthen the pauses or lower the count",
                  value=list(self.steps))

    @property
    def canary(self) -> bool:
        return self.strategy == "canary"

    @property
    def analysis_starting_step(self) -> int:
        """The analysis starts with the step after the first setWeight: the canary has pods (and
        traffic) by then, so the first measurement is not of an empty ReplicaSet."""
        first = next(i for i, s in enumerate(self.steps) if s.startswith("setWeight:"))
        return min(first + 1, len(self.steps) - 1)
