"""MonitoringArgs: what monitoring a served model gets, and its alert thresholds."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from .checking import ArgsGroup, each, integer, matching, one_of
from .rollout import DURATION
from .setting import setting

MONITORING_MODES = ("prometheus-operator", "annotations", "none")
_LABEL_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _label(item: Any) -> Optional[str]:
    key, sep, value = str(item).partition("=")
    if not sep or not _LABEL_NAME.match(key) or not _LABEL_VALUE.match(value):
        return "each entry key=value, a Kubernetes label (e.g. release=kube-prometheus-stack)"
    return None


def _share_strictly_inside(value: Any) -> Optional[str]:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
        return "a share strictly between 0 and 1, such as 0.05"
    return None


def _runbook_url(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not value or any(ch.isspace() for ch in value):
        return "a URL or path without spaces (where docs/operations.md is read)"
    return None


@dataclass(frozen=True)
class MonitoringArgs(ArgsGroup):
    """What monitoring a served model gets, and its alert thresholds. Validates itself (ArgsError)."""

    GROUP = "monitoring"
    STACK_GROUP = "monitoring"
    SHORTHAND = "mode"  # servedmodel:monitoring: annotations

    mode: str = setting(
        "none", "Monitoring objects per model (kubernetes target) - \"prometheus-operator\" (PodMonitor, "
                "PrometheusRule "
                "with recording rules and alerts, Grafana dashboard ConfigMap), \"annotations\" (the rules as a "
                "rule-file ConfigMap and the dashboard, for annotation-driven scraping) or \"none\". "
                "@{elastic.autoscaler} keda needs one other than none (KEDA reads the scraped metrics). See "
                "docs/operations.md.", key="monitoring", check=one_of(MONITORING_MODES))
    labels: tuple[str, ...] = setting(
        (), "key=value labels on the PodMonitor and PrometheusRule so the Prometheus's podMonitorSelector and "
            "ruleSelector pick them up (e.g. release=kube-prometheus-stack).",
        key="monitoringLabels", check=each(_label))
    scrape_interval: str = setting("15s", "How often Prometheus scrapes the server's /metrics (PodMonitor).",
                                   check=matching(DURATION, "a duration such as 15s or 1m"))
    latency_slo_ms: int = setting(500, "p99 request latency SLO in milliseconds; ServedModelLatencyP99OverSLO fires "
                                       "above it for 10 minutes.", check=integer(1))
    alert_failure_ratio: float = setting(
        0.01, "Share of requests failing in the server (HTTP 500) above which ServedModelHighFailureRatio pages "
              "after 5 minutes, a decimal number in a string.", check=_share_strictly_inside)
    alert_shed_ratio: float = setting(
        0.05, "Share of requests shed (HTTP 503) above which ServedModelShedding warns after 5 minutes, a decimal "
              "number in a string.", check=_share_strictly_inside)
    alert_queue_p99_ms: int = setting(250, "p99 queue wait in milliseconds above which ServedModelQueueSaturated "
                                           "warns after 10 minutes.", check=integer(1))
    runbook_url: str = setting(
        "docs/operations.md", "Where docs/operations.md is read (e.g. its URL in your repository); every alert's "
                              "runbook_url is this plus its section anchor.", check=_runbook_url)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.labels)
