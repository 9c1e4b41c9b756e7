"""Prometheus text exposition, written by hand: counters, gauges and histograms are plain
Python numbers updated on the event loop (one thread), so a request pays a few additions."""
from __future__ import annotations

from bisect import bisect_left

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    __slots__ = ("buckets", "counts", "sum", "count")

    def __init__(self, buckets) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, labels: str) -> list[str]:
        lines, cumulative = [], 0
        for bound, n in zip(self.buckets, self.counts):
            cumulative += n
            lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum{{{labels}}} {self.sum!r}")
        lines.append(f"{name}_count{{{labels}}} {self.count}")
        return lines


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Every metric the server exports. Names are part of the contract (docs/protocol.md)."""

    def __init__(self, model: str, version: str) -> None:
        self.labels = f'model="{_escape(model)}"'
        self.info_labels = f'{self.labels},version="{_escape(version)}"'
        self.requests: dict[tuple[str, str], int] = {}    # (protocol, outcome) -> count
        self.failures: dict[tuple[str, str], int] = {}    # (protocol, reason) -> count
        self.request_duration: dict[str, Histogram] = {}  # protocol -> latencies
        self.queue_duration = Histogram(LATENCY_BUCKETS)
        self.compute_duration = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_isolations = 0                # failed batches re-run one request at a time
        self.connections = 0                     # open HTTP connections
        self.connection_errors: dict[str, int] = {}   # reason -> connections closed by a limit
        #: (kind, HTTP/2 error code) -> protocol errors of the gRPC front end's HTTP/2 layer
        self.protocol_errors: dict[tuple[str, str], int] = {}
        self.buffered_bytes = 0                  # request body bytes held by the server now
        self.received_bytes = 0                  # bytes received on all connections (internal)
        self.connections_total = 0               # connections accepted (internal)

    def request(self, protocol: str, outcome: str, seconds: float) -> None:
        key = (protocol, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.request_duration.get(protocol)
        if hist is None:
            hist = self.request_duration[protocol] = Histogram(LATENCY_BUCKETS)
        hist.observe(seconds)

    def failure(self, protocol: str, reason: str) -> None:
        key = (protocol, reason)
        self.failures[key] = self.failures.get(key, 0) + 1

    def render(self, *, inflight: int, queue_depth: int, ready: bool) -> bytes:
        """The exposition text; the gauges are read from their owners at scrape time."""
        L = self.labels
        out = [
            "# HELP servedmodel_model_info The served model and its version (from the manifest).",
            "# TYPE servedmodel_model_info gauge",
            f"servedmodel_model_info{{{self.info_labels}}} 1",
            "# HELP servedmodel_requests_total Inference requests by outcome.",
            "# TYPE servedmodel_requests_total counter",
        ]
        for protocol, outcome in sorted(self.requests):
            out.append(f'servedmodel_requests_total{{{L},protocol="{protocol}",'
                       f'outcome="{outcome}"}} {self.requests[protocol, outcome]}')
        out += ["# HELP servedmodel_request_failures_total Failed requests (any route), by reason.",
                "# TYPE servedmodel_request_failures_total counter"]
        for protocol, reason in sorted(self.failures):
            out.append(f'servedmodel_request_failures_total{{{L},protocol="{protocol}",'
                       f'reason="{reason}"}} {self.failures[protocol, reason]}')
        name = "servedmodel_request_duration_seconds"
        out += [f"# HELP {name} Time from request start to response, inference requests.",
                f"# TYPE {name} histogram"]
        for protocol in sorted(self.request_duration):
            out += self.request_duration[protocol].render(name, f'{L},protocol="{protocol}"')
        for name, hist, help_ in (
            ("servedmodel_queue_duration_seconds", self.queue_duration,
             "Time a request waited in the batching queue."),
            ("servedmodel_compute_duration_seconds", self.compute_duration,
             "Time one batch ran in the model."),
            ("servedmodel_batch_size", self.batch_size, "Rows per batch run by the model."),
        ):
            out += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
            out += hist.render(name, L)
        out += [
            "# HELP servedmodel_inflight_requests Inference requests being handled now.",
            "# TYPE servedmodel_inflight_requests gauge",
            f"servedmodel_inflight_requests{{{L}}} {inflight}",
            "# HELP servedmodel_queue_depth Requests waiting in the batching queue.",
            "# TYPE servedmodel_queue_depth gauge",
            f"servedmodel_queue_depth{{{L}}} {queue_depth}",
            "# HELP servedmodel_model_ready 1 when the model is loaded, warm and not draining.",
            "# TYPE servedmodel_model_ready gauge",
            f"servedmodel_model_ready{{{L}}} {int(ready)}",
            "# HELP servedmodel_batch_isolations_total Failed batches re-run one request at a "
            "time.",
            "# TYPE servedmodel_batch_isolations_total counter",
            f"servedmodel_batch_isolations_total{{{L}}} {self.batch_isolations}",
            "# HELP servedmodel_open_connections Open HTTP connections.",
            "# TYPE servedmodel_open_connections gauge",
            f"servedmodel_open_connections{{{L}}} {self.connections}",
            "# HELP servedmodel_buffered_request_bytes Request body bytes held by the server.",
            "# TYPE servedmodel_buffered_request_bytes gauge",
            f"servedmodel_buffered_request_bytes{{{L}}} {self.buffered_bytes}",
            "# HELP servedmodel_connection_errors_total Connections closed or refused by a "
            "limit, by reason.",
            "# TYPE servedmodel_connection_errors_total counter",
        ]
        for reason in sorted(self.connection_errors):
            out.append(f'servedmodel_connection_errors_total{{{L},reason="{reason}"}} '
                       f"{self.connection_errors[reason]}")
        out += ["# HELP servedmodel_http2_protocol_errors_total Protocol errors of the gRPC "
                "front end's HTTP/2 layer (a stream reset or a connection closed), by kind and "
                "error code.",
                "# TYPE servedmodel_http2_protocol_errors_total counter"]
        for kind, code in sorted(self.protocol_errors):
            out.append(f'servedmodel_http2_protocol_errors_total{{{L},kind="{kind}",'
                       f'code="{code}"}} {self.protocol_errors[kind, code]}')
        return ("\n".join(out) + "\n").encode()
