"""End to end: a real Prometheus scrapes two real servers — a stable version and a canary that
sheds under load — and the AnalysisTemplate's queries, with `{{args.canary-hash}}` resolved the
way Argo Rollouts resolves it, judged with the template's own successCondition/failureCondition,
pass for the stable pods and fail for the canary's. The alert rules, loaded into the same
Prometheus, fire for the canary's model and stay quiet for the stable one.

Target labels stand in for what Kubernetes gives each pod: `namespace` and the
`rollouts_pod_template_hash` that the PodMonitor's podTargetLabels copies from the pod.
"""
from __future__ import annotations

import json
import math
import re
import threading
import time

import httpx
import numpy as np
import pytest

from contexts import write_context  # tests/serving/contexts.py
from promkit import Prometheus, free_port
from servedmodel.components import canary, monitoring
from servedmodel.components.canary import CANARY_HASH_ARG, RolloutArgs
from servedmodel.components.monitoring import MonitoringArgs, Scope
from serverkit import ServerProcess  # tests/serving/serverkit.py

pytestmark = pytest.mark.slow

NS = "servedmodel"
STABLE_HASH, CANARY_HASH = "6d4f8c9b7", "58b9c7d4f"
STABLE_MODEL, CANARY_MODEL = "classifier", "classifier-next"
LOAD_SECONDS = 12.0        # load before the first measurement (the analysis window is 10s)
MEASUREMENTS = 3           # the template's count in this test
MEASURE_EVERY = 2.0        # seconds between measurements (Argo: the interval; shortened here)


# --- Argo Rollouts' behaviour, reproduced from its source (v1.9.1) -----------------------------

def resolve_args(metric: dict, args: dict[str, str]) -> dict:
    """utils/template.ResolveQuotedArgs over the JSON of the metric: each `{{args.NAME}}` (tag
    trimmed) becomes the JSON-escaped value; an unresolved tag is an error."""
    text = json.dumps(metric)

    def sub(m: re.Match) -> str:
        tag = m.group(1).strip()
        if not tag.startswith("args.") or tag[5:] not in args:
            raise AssertionError(f"failed to resolve {{{{{m.group(1)}}}}}")
        return json.dumps(args[tag[5:]])[1:-1]

    return json.loads(re.sub(r"\{\{(.*?)\}\}", sub, text))


def result_of(data: dict):
    """metricproviders/prometheus.processResponse: a vector -> []float64 of its samples, a scalar
    -> float64."""
    if data["resultType"] == "vector":
        return [float(s["value"][1]) for s in data["result"]]
    if data["resultType"] == "scalar":
        return float(data["result"][1])
    raise AssertionError(f"Prometheus metric type not supported: {data['resultType']}")


_EXPR_TOKENS = re.compile(r"\s*(len\(result\)|result\[\d+\]|isNaN\(result\[\d+\]\)|&&|\|\||!|==|<=|>=|<|>|"
                          r"[0-9]+(\.[0-9]+)?|\(|\))")


def eval_condition(condition: str, result) -> bool:
    """utils/evaluate.EvalCondition for the expr-lang subset the templates use (len, indexing,
    isNaN, comparisons, &&, ||, !): translated token by token; anything else is refused."""
    pos, out = 0, []
    while pos < len(condition):
        m = _EXPR_TOKENS.match(condition, pos)
        if not m or m.end() == pos:
            raise AssertionError(f"condition {condition!r}: unsupported at {condition[pos:]!r}")
        tok = m.group(1)
        out.append({"&&": " and ", "||": " or ", "!": " not "}.get(tok, tok.replace("isNaN", "isnan")))
        pos = m.end()
    return bool(eval("".join(out), {"__builtins__": {}}, {"result": result, "len": len, "isnan": math.isnan}))


def evaluate_result(metric: dict, result) -> str:
    """utils/evaluate.EvaluateResult: Failed if failureCondition holds (or, without one, if
    successCondition does not), Successful if successCondition holds, else Inconclusive."""
    success = eval_condition(metric["successCondition"], result) if metric.get("successCondition") else False
    failure = eval_condition(metric["failureCondition"], result) if metric.get("failureCondition") else False
    if not metric.get("failureCondition"):
        failure = not success
    if not metric.get("successCondition"):
        success = not failure
    if failure:
        return "Failed"
    return "Successful" if success else "Inconclusive"


def analysis_phase(phases_by_metric: dict[str, list[str]], template: dict) -> str:
    """The AnalysisRun's phase after `count` measurements: a metric fails when its failed
    measurements exceed failureLimit; the run fails when a metric fails."""
    limits = {m["name"]: m.get("failureLimit", 0) for m in template["metrics"]}
    verdicts = []
    for name, phases in phases_by_metric.items():
        if phases.count("Failed") > limits[name]:
            verdicts.append("Failed")
        elif phases.count("Inconclusive") > 0:
            verdicts.append("Inconclusive")
        else:
            verdicts.append("Successful")
    return "Failed" if "Failed" in verdicts else "Inconclusive" if "Inconclusive" in verdicts else "Successful"


# utils/defaults/defaults.go: a metric without limits has failureLimit 0, inconclusiveLimit 0,
# consecutiveErrorLimit 4.
ARGO_DEFAULT_LIMITS = {"failureLimit": 0, "inconclusiveLimit": 0, "consecutiveErrorLimit": 4}
# analysis/analysis.go DefaultErrorRetryInterval: a measurement that errored is retried after 10 s.
ARGO_ERROR_RETRY_SECONDS = 10


def assess_metric(metric: dict, phases: list[str]) -> str:
    """analysis/analysis.go assessMetricStatus + assessMetricFailureInconclusiveOrError, applied
    after each measurement as the controller does: an Error counts only toward consecutive errors
    (DefaultErrorRetryInterval 10 s, not toward `count`); failed > failureLimit is Failed,
    inconclusive > inconclusiveLimit Inconclusive, consecutive errors > consecutiveErrorLimit
    Error (later checks win); `count` measurements within the limits is Successful."""
    limits = {k: metric.get(k, v) for k, v in ARGO_DEFAULT_LIMITS.items()}
    failed = inconclusive = count = consecutive_errors = 0
    for phase in phases:
        if phase == "Error":
            consecutive_errors += 1
        else:
            count, consecutive_errors = count + 1, 0
            failed += phase == "Failed"
            inconclusive += phase == "Inconclusive"
        verdict = None
        if limits["failureLimit"] >= 0 and failed > limits["failureLimit"]:
            verdict = "Failed"
        if inconclusive > limits["inconclusiveLimit"]:
            verdict = "Inconclusive"
        if consecutive_errors > limits["consecutiveErrorLimit"]:
            verdict = "Error"
        if verdict:
            return verdict
        if count >= metric["count"]:
            return "Successful"
    return "Running"


def test_resolve_args_refuses_an_unresolved_argument():
    metric = {"provider": {"prometheus": {"query": 'x{h="{{args.canary-hash}}"}'}}}
    assert resolve_args(metric, {CANARY_HASH_ARG: 'a"b'})["provider"]["prometheus"]["query"] == 'x{h="a"b"}'
    with pytest.raises(AssertionError, match="failed to resolve"):
        resolve_args(metric, {"stable-hash": "x"})


def test_conditions_read_no_traffic_as_inconclusive():
    args = RolloutArgs(strategy="canary", prometheus_address="http://p:9090")
    for metric in canary.analysis_template_spec(args, NS)["metrics"]:
        assert evaluate_result(metric, []) == "Inconclusive"
        assert evaluate_result(metric, [float("nan")]) == "Inconclusive"
        assert evaluate_result(metric, [0.0]) == "Successful"
        assert evaluate_result(metric, [1e6]) == "Failed"


# --- the real thing -----------------------------------------------------------------------------

def drive(url: str, model: str, width: int, clients: int, stop: threading.Event,
          statuses: list[int]) -> list[threading.Thread]:
    body = {"inputs": [{"name": "input" if width == 784 else "x", "datatype": "FP32", "shape": [1, width],
                        "data": np.random.default_rng(0).random(width).astype(np.float32).round(3).tolist()}]}

    def loop() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    statuses.append(client.post(f"{url}/v2/models/{model}/infer", json=body).status_code)
                except httpx.TransportError:
                    statuses.append(0)
                time.sleep(0.005)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads


def test_analysis_passes_stable_and_fails_a_shedding_canary(prometheus_bin, tmp_path):
    stable_ctx = write_context(tmp_path / "stable", "mlp", STABLE_MODEL, warmup=(1,))
    # The canary: a much slower model, one row per batch and a one-request queue: under the same
    # kind of load it sheds (503, queue_full / queue_timeout).
    canary_ctx = write_context(tmp_path / "canary", "slow", CANARY_MODEL, max_batch_size=1, warmup=(1,))
    servers = [ServerProcess(stable_ctx, {}),
               ServerProcess(canary_ctx, {"SERVEDMODEL_MAX_QUEUE_SIZE": "1", "SERVEDMODEL_QUEUE_TIMEOUT_MS": "50"})]
    stable, bad = servers
    prom = None
    stop = threading.Event()
    try:
        for s in servers:
            s.wait_ready(timeout=120)
        rule_files = {f"{m}.rules.yml": monitoring.rule_file(MonitoringArgs(mode="prometheus-operator"),
                                                             Scope(served_name=m, namespace=NS), f"{m}-rollout")
                      for m in (STABLE_MODEL, CANARY_MODEL)}
        prom = Prometheus(prometheus_bin, tmp_path / "prometheus", {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": f"{NS}/servedmodel", "metrics_path": "/metrics", "static_configs": [
                {"targets": [f"127.0.0.1:{stable.port}"],
                 "labels": {"namespace": NS, monitoring.HASH_LABEL: STABLE_HASH}},
                {"targets": [f"127.0.0.1:{bad.port}"],
                 "labels": {"namespace": NS, monitoring.HASH_LABEL: CANARY_HASH}}]}],
        }, rule_files).wait_ready()

        statuses: dict[str, list[int]] = {"stable": [], "canary": []}
        threads = drive(stable.url, STABLE_MODEL, 784, 2, stop, statuses["stable"])
        threads += drive(bad.url, CANARY_MODEL, 512, 6, stop, statuses["canary"])
        time.sleep(LOAD_SECONDS)

        # interval "10s": each measurement judges the last 10 s (the rate window).
        args = RolloutArgs(strategy="canary", prometheus_address=prom.url, analysis_interval="10s",
                           analysis_count=MEASUREMENTS, analysis_failure_limit=1, max_failure_ratio=0.01,
                           max_p99_latency_ms=1000, max_shed_ratio=0.05)
        template = canary.analysis_template_spec(args, NS)
        assert [a["name"] for a in template["args"]] == [CANARY_HASH_ARG]
        phases = {h: {m["name"]: [] for m in template["metrics"]} for h in (STABLE_HASH, CANARY_HASH)}
        values = {h: {m["name"]: [] for m in template["metrics"]} for h in (STABLE_HASH, CANARY_HASH)}
        for i in range(MEASUREMENTS):
            for pod_hash in (STABLE_HASH, CANARY_HASH):
                for metric in template["metrics"]:
                    resolved = resolve_args(metric, {CANARY_HASH_ARG: pod_hash})
                    prov = resolved["provider"]["prometheus"]
                    assert prov["address"] == prom.url and "{{" not in prov["query"]
                    result = result_of(prom.query(prov["query"]))
                    values[pod_hash][metric["name"]].append(result)
                    phases[pod_hash][metric["name"]].append(evaluate_result(resolved, result))
            if i < MEASUREMENTS - 1:
                time.sleep(MEASURE_EVERY)
        alerts = prom.api("alerts")["alerts"]
        # The dashboard's queries, evaluated by the real engine on these metrics (a bad join or
        # a type error is an error here). Per version once the server exports
        # servedmodel_model_info (issue 10): then every panel has the canary's version.
        has_info = bool(prom.query(f"{monitoring.MODEL_INFO}")["result"])
        dashboard = {}
        for title, targets in monitoring.dashboard_queries(Scope(served_name=CANARY_MODEL, namespace=NS)).items():
            dashboard[title] = [prom.query(expr)["result"] for _, expr in targets]
    finally:
        stop.set()
        if prom is not None:
            prom.stop()
        for s in servers:
            s.stop()

    report = json.dumps({"phases": phases, "values": values,
                         "statuses": {k: {c: v.count(c) for c in set(v)} for k, v in statuses.items()}}, indent=1)
    # The load reached both, and the canary really shed.
    assert statuses["stable"].count(200) > 50, report
    assert statuses["canary"].count(503) > 20, report
    # Stable: every measurement of every metric Successful.
    assert all(p == ["Successful"] * MEASUREMENTS for p in phases[STABLE_HASH].values()), report
    assert analysis_phase(phases[STABLE_HASH], template) == "Successful", report
    # Canary: the shed ratio fails every measurement; server errors stay at 0 (it sheds, it
    # does not fail) — the metrics judge different things.
    assert phases[CANARY_HASH][canary.METRIC_SHED_RATIO] == ["Failed"] * MEASUREMENTS, report
    assert phases[CANARY_HASH][canary.METRIC_FAILURE_RATIO] == ["Successful"] * MEASUREMENTS, report
    assert analysis_phase(phases[CANARY_HASH], template) == "Failed", report

    if has_info:
        throughput = next(v for k, v in dashboard.items() if k.startswith("Throughput"))[0]
        assert throughput and all(series["metric"].get("version") for series in throughput), dashboard

    # The alerts: loaded into this Prometheus (for: 5m, so they are pending after seconds).
    by_model: dict[str, set[str]] = {}
    for a in alerts:
        model = a["labels"].get("model", a["labels"].get("servedmodel"))
        by_model.setdefault(model, set()).add(a["labels"]["alertname"])
    assert "ServedModelShedding" in by_model.get(CANARY_MODEL, set()), (alerts, report)
    assert not by_model.get(STABLE_MODEL), (alerts, report)


def measure(prom_url: str, template: dict, pod_hash: str) -> dict[str, str]:
    """One measurement of every metric, as metricproviders/prometheus does it: a query that fails
    (Prometheus unreachable) is an Error, otherwise the result judged by the conditions."""
    out = {}
    for metric in template["metrics"]:
        resolved = resolve_args(metric, {CANARY_HASH_ARG: pod_hash})
        query = resolved["provider"]["prometheus"]["query"]
        try:
            r = httpx.get(f"{prom_url}/api/v1/query", params={"query": query}, timeout=5)
            data = r.json()["data"]
        except httpx.TransportError:
            out[metric["name"]] = "Error"
            continue
        out[metric["name"]] = evaluate_result(resolved, result_of(data))
    return out


def test_an_idle_window_and_a_prometheus_outage_do_not_stall_or_abort_the_canary(prometheus_bin, tmp_path):
    """Issue 18, finding 5, on a real Prometheus scraping a real server: a window without canary
    traffic reads Inconclusive (never Successful, never Failed); with Argo's default
    inconclusiveLimit 0 that one window makes the metric Inconclusive, which pauses the
    rollout for a person. The template tolerates idle windows (all but one) and a Prometheus
    outage of minutes (errors are retried every 10 s), so the same measurements end Successful."""
    ctx = write_context(tmp_path / "canary", "mlp", STABLE_MODEL, warmup=(1,))
    server = ServerProcess(ctx, {})
    prom = None
    stop = threading.Event()
    try:
        server.wait_ready(timeout=120)
        prom = Prometheus(prometheus_bin, tmp_path / "prometheus", {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": f"{NS}/servedmodel", "metrics_path": "/metrics", "static_configs": [
                {"targets": [f"127.0.0.1:{server.port}"],
                 "labels": {"namespace": NS, monitoring.HASH_LABEL: CANARY_HASH}}]}],
        }, {}).wait_ready()
        args = RolloutArgs(strategy="canary", prometheus_address=prom.url, analysis_interval="5s", analysis_count=4,
                           analysis_failure_limit=1, max_p99_latency_ms=1000)
        template = canary.analysis_template_spec(args, NS)
        window = 6.0  # one analysis window (5 s) and a scrape
        timeline: list[dict[str, str]] = []
        time.sleep(window)                                          # idle: no request yet
        timeline.append(measure(prom.url, template, CANARY_HASH))
        statuses: list[int] = []
        threads = drive(server.url, STABLE_MODEL, 784, 2, stop, statuses)
        time.sleep(window)                                          # traffic
        timeline.append(measure(prom.url, template, CANARY_HASH))
        stop.set()
        for t in threads:
            t.join(timeout=10)
        time.sleep(window)                                          # idle again: counters flat
        timeline.append(measure(prom.url, template, CANARY_HASH))
        # Prometheus goes away for two minutes: every retry (each 10 s) is an Error.
        dead = f"http://127.0.0.1:{free_port()}"
        outage = [measure(dead, template, CANARY_HASH)] * (120 // ARGO_ERROR_RETRY_SECONDS)
        stop.clear()
        threads = drive(server.url, STABLE_MODEL, 784, 2, stop, statuses)
        time.sleep(window)                                          # back, with traffic
        timeline.append(measure(prom.url, template, CANARY_HASH))
    finally:
        stop.set()
        if prom is not None:
            prom.stop()
        server.stop()

    report = json.dumps({"timeline": timeline, "outage": outage[0], "requests": len(statuses)}, indent=1)
    assert statuses.count(200) > 20, report
    names = [m["name"] for m in template["metrics"]]
    assert all(timeline[0][n] == "Inconclusive" and timeline[2][n] == "Inconclusive" for n in names), report
    assert all(timeline[1][n] == "Successful" and timeline[3][n] == "Successful" for n in names), report
    assert all(outage[0][n] == "Error" for n in names), report
    for metric in template["metrics"]:
        n = metric["name"]
        phases = [timeline[0][n], timeline[1][n], timeline[2][n]] + [o[n] for o in outage] + [timeline[3][n]]
        # The template's limits: two idle windows and the outage, then Successful at `count`.
        assert assess_metric(metric, phases) == "Successful", (n, report)
        # Argo's defaults would have stopped at the first idle window, and at the fifth error.
        defaults = {k: v for k, v in metric.items() if k not in ARGO_DEFAULT_LIMITS}
        assert assess_metric(defaults, phases) == "Inconclusive", (n, report)
        assert assess_metric(defaults, [timeline[1][n]] + [o[n] for o in outage]) == "Error", (n, report)
    # Nobody used it at all: the canary stops for a person (and RolloutWait says so at once).
    for metric in template["metrics"]:
        assert assess_metric(metric, ["Inconclusive"] * metric["count"]) == "Inconclusive"
