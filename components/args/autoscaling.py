"""AutoscalingArgs: replica bounds and the HPA's signal."""
from __future__ import annotations

from dataclasses import dataclass

from .checking import ArgsGroup, Checker, integer, one_of
from .setting import setting

AUTOSCALE_METRICS = ("inflight", "queue", "cpu")


@dataclass(frozen=True)
class AutoscalingArgs(ArgsGroup):
    """Replica bounds; above `replicas` an autoscaling/v2 HPA owns the count."""

    GROUP = "autoscaling"
    STACK_GROUP = "autoscaling"

    replicas: int = setting(1, "Minimum (and, without autoscaling, exact) number of replicas.", check=integer(1))
    max_replicas: int = setting(1, "Maximum replicas. Above @{autoscaling.replicas} an autoscaling/v2 HPA owns the "
                                   "replica count and the Deployment leaves replicas unset.", check=integer(1))
    metric: str = setting(
        "inflight", "HPA signal - \"inflight\" (per-pod servedmodel_inflight_requests), \"queue\" (per-pod mean "
                    "queue time from servedmodel_queue_duration_seconds) or \"cpu\" (CPU utilisation). The first "
                    "two need Prometheus and prometheus-adapter, \"cpu\" needs metrics-server (docs/deploy.md, "
                    "prerequisites).",
        key="autoscaleMetric", check=one_of(AUTOSCALE_METRICS))
    target_inflight: int = setting(4, "Average in-flight requests per pod the HPA aims for (autoscaleMetric "
                                      "inflight).", check=integer(1))
    target_queue_ms: int = setting(50, "Average queue time per pod in milliseconds the HPA aims for "
                                       "(autoscaleMetric queue).", check=integer(1))
    target_cpu_percent: int = setting(70, "Average CPU utilisation in percent of the request the HPA aims for "
                                          "(autoscaleMetric cpu).", check=integer(1, 100))

    def rules(self, c: Checker) -> None:
        if c.ok("replicas", "max_replicas") and self.replicas > self.max_replicas:
            c.bad("replicas", f"must not exceed @{{autoscaling.max_replicas}} ({self.max_replicas}); "
                              "min > max replicas")

    @property
    def autoscaled(self) -> bool:
        return self.max_replicas > self.replicas
