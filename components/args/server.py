"""ServerArgs: the server's shutdown and batching settings (SERVEDMODEL_* variables)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from servedmodel.models.contract import DRAIN_SECONDS

from .checking import ArgsGroup, integer
from .setting import setting

# ServerArgs fields passed to the server as SERVEDMODEL_<NAME> when set.
BATCHING_SETTINGS = ("max_batch_size", "max_queue_delay_ms", "max_queue_size", "queue_timeout_ms")
# The retentions CloudWatch Logs accepts (PutRetentionPolicy, retentionInDays), in days.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                      2922, 3288, 3653)



def _retention(value: object) -> Optional[str]:
    return None if value == 0 or value in LOG_RETENTION_DAYS else \
        f"a retention CloudWatch Logs accepts: one of {', '.join(map(str, LOG_RETENTION_DAYS))} (0: no log group)"


@dataclass(frozen=True)
class ServerArgs(ArgsGroup):
    """The server's shutdown and batching settings (SERVEDMODEL_* variables).

    None leaves a setting to the server (its own default, or the model's manifest): the
    defaults live in serving/contract.py and the manifest, never restated here. The stack writes
    None as 0.
    """

    GROUP = "server"
    STACK_GROUP = "server"

    drain_seconds: int = setting(
        DRAIN_SECONDS, "Graceful drain after SIGTERM (SERVEDMODEL_DRAIN_SECONDS); the pod's grace period is longer "
                       "than preStop + drain.", check=integer(0))
    pre_stop_seconds: int = setting(
        5, "Seconds the preStop hook waits so endpoints (and, behind the public NLB, its target group) stop sending "
           "new connections to a terminating pod before the drain starts. At least 120 with "
           "@{network.service_type} LoadBalancer (the NLB keeps sending new connections for about 2 minutes after "
           "deregistration starts); the NLB's deregistration delay is preStop + drain and the grace period "
           "preStop + drain + 10.", check=integer(0))
    max_batch_size: Optional[int] = setting(
        None, "SERVEDMODEL_MAX_BATCH_SIZE, the dynamic batching cap (rows). 0 leaves it to the model's manifest.",
        unset=0, check=integer(1))
    max_queue_delay_ms: Optional[int] = setting(
        None, "SERVEDMODEL_MAX_QUEUE_DELAY_MS, how long a batch waits to fill (0-10000). 0 leaves it to the model's "
              "manifest.", unset=0, check=integer(0, 10_000))
    max_queue_size: Optional[int] = setting(
        None, "SERVEDMODEL_MAX_QUEUE_SIZE, queued requests before the server sheds with 503 (a count backstop). 0 "
              "leaves it to the server (docs/architecture.md section 3).", unset=0, check=integer(1))
    queue_timeout_ms: Optional[int] = setting(
        None, "SERVEDMODEL_QUEUE_TIMEOUT_MS, the queue-time budget - a request that cannot start within it is "
              "refused at once with 503. 0 leaves it to the server (docs/architecture.md section 3).",
        unset=0, check=integer(1))

    audit: bool = setting(
        True, "One audit record per request (caller, model version, outcome; never a token or tensor data) as JSON "
              "lines with \"log\":\"audit\" on the server's stdout (`SERVEDMODEL_AUDIT_LOG=-`). On the cluster the "
              "node's log shipper carries them to @{server.audit_retention_days}'s log group (docs/deploy.md, "
              "\"Audit\").")
    audit_retention_days: int = setting(
        365, "Days CloudWatch Logs keeps the audit records: the stack declares the log group "
             "/servedmodel/<cluster>/<namespace>/<served name>/audit with this retention (kubernetes target with "
             "its cluster named, @{server.audit} on; kept on a destroy with @{registry.retain}), which the "
             f"cluster's log shipper writes to. One of {', '.join(map(str, LOG_RETENTION_DAYS))}; 0 declares no "
             "log group (the platform's own retention applies).", check=_retention)

    def batching_env(self) -> dict[str, str]:
        """The SERVEDMODEL_* batching variables that are set (the rest stay the server's)."""
        return {name: str(getattr(self, name)) for name in BATCHING_SETTINGS if getattr(self, name) is not None}
