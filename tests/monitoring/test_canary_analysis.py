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

from servedmodel.components import canary, monitoring
from servedmodel.components.canary import CANARY_HASH_ARG, RolloutArgs
from servedmodel.components.monitoring import MonitoringArgs, Scope
from promkit import Prometheus
from contexts import write_context  # tests/serving/contexts.py
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

def drive(url: str, model: str, width: int, clients: int, stop: threading.Event, statuses: list[int]) -> list[threading.Thread]:
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
        by_model.setdefault(a["labels"].get("model", a["labels"].get("servedmodel")), set()).add(a["labels"]["alertname"])
    assert "ServedModelShedding" in by_model.get(CANARY_MODEL, set()), (alerts, report)
    assert not by_model.get(STABLE_MODEL), (alerts, report)
