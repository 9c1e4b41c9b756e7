"""The canary and monitoring builders: args validate themselves; every custom resource they make
is valid STRICTLY against its upstream CRD schema (tests/crds/); the dashboard's queries parse."""
from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml

from promkit import run_promtool
from servedmodel.components import canary, monitoring, specs
from servedmodel.components.args import ArgsError
from servedmodel.components.canary import RolloutArgs, RolloutSpec
from servedmodel.components.monitoring import MonitoringArgs, Scope
from tests.crds.validate import validate_custom_resource

KUBERNETES_VERSION = "1.33.0"
NS = "servedmodel"
PROM = "http://prometheus-operated.monitoring.svc:9090"
ANALYSIS = RolloutArgs(strategy="canary", prometheus_address=PROM)
MON = MonitoringArgs(mode="prometheus-operator", labels=("release=kube-prometheus-stack",))
SCOPE = Scope(served_name="classifier", namespace=NS, gpu=True)


def obj(api_version: str, kind: str, name: str, spec: dict, **meta) -> dict:
    return {"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": NS, "labels": specs.labels("classifier"), **meta}, "spec": spec}


def pod_template() -> dict:
    lifecycle, grace = specs.termination(5, 20)
    return {"metadata": {"labels": specs.labels("classifier", "v1"), "annotations": specs.scrape_annotations()},
            "spec": {"terminationGracePeriodSeconds": grace, "securityContext": specs.pod_security_context(),
                     "containers": [{"name": "server", "image": "r/x@sha256:" + "0" * 64, "lifecycle": lifecycle,
                                     "ports": [{"name": "http", "containerPort": specs.SERVER_PORT}],
                                     "resources": specs.resources("1", "1Gi", 1), **specs.probes()}]}}


def test_rollout_and_analysis_template_are_schema_valid():
    c = RolloutArgs(strategy="canary", prometheus_address=PROM,
                    steps=("setWeight:10", "pause:90s", "setWeight:50", "pause", "setWeight:80"))
    spec = canary.rollout_spec(RolloutSpec(selector=specs.selector_labels("classifier"), template=pod_template(),
                                           replicas=None), c, "classifier-analysis")
    rollout = obj(canary.ROLLOUT_API_VERSION, "Rollout", "classifier-rollout", spec,
                  annotations=canary.rollout_annotations())
    validate_custom_resource(rollout)
    template = obj(canary.ROLLOUT_API_VERSION, "AnalysisTemplate", "classifier-analysis",
                   canary.analysis_template_spec(ANALYSIS, NS))
    validate_custom_resource(template)
    steps = spec["strategy"]["canary"]["steps"]
    assert steps == [{"setWeight": 10}, {"pause": {"duration": "90s"}}, {"setWeight": 50}, {"pause": {}},
                     {"setWeight": 80}]
    analysis = spec["strategy"]["canary"]["analysis"]
    assert analysis["args"] == [{"name": canary.CANARY_HASH_ARG, "valueFrom": {"podTemplateHashValue": "Latest"}}]
    assert analysis["startingStep"] == 1 and "replicas" not in spec
    # Every query selects the canary's pods by the hash argument, in the model's namespace.
    for m in template["spec"]["metrics"]:
        assert '{{args.canary-hash}}' in m["provider"]["prometheus"]["query"]
        assert f'namespace="{NS}"' in m["provider"]["prometheus"]["query"]
    # The pod template is a valid Kubernetes pod template too (the CRD schema is looser).
    kubernetes_validate.validate({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                                  "spec": {"selector": spec["selector"], "template": spec["template"]}},
                                 KUBERNETES_VERSION, strict=True)


def test_strict_validation_catches_a_misplaced_field():
    """The schema check can fail: a field Argo does not know (it would be pruned) is an error."""
    spec = canary.analysis_template_spec(ANALYSIS, NS)
    spec["metrics"][0]["provider"]["prometheus"]["url"] = "http://x"
    with pytest.raises(AssertionError, match="url"):
        validate_custom_resource(obj(canary.ROLLOUT_API_VERSION, "AnalysisTemplate", "t", spec))


def test_pod_monitor_and_prometheus_rule_are_schema_valid():
    validate_custom_resource(obj("monitoring.coreos.com/v1", "PodMonitor", "classifier-metrics",
                                 monitoring.pod_monitor_spec(MON, SCOPE, specs.selector_labels("classifier"))))
    validate_custom_resource(obj("monitoring.coreos.com/v1", "PrometheusRule", "classifier-rules",
                                 {"groups": monitoring.rule_groups(MON, SCOPE, "classifier-deploy-1")}))


def test_dashboard_configmap_is_valid_and_every_query_parses(promtool, tmp_path):
    data = monitoring.dashboard_configmap_data(SCOPE)
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "classifier-dashboard", "namespace": NS, "labels": monitoring.dashboard_labels()},
          "data": data}
    kubernetes_validate.validate(cm, KUBERNETES_VERSION, strict=True)
    assert cm["metadata"]["labels"] == {"grafana_dashboard": "1"}
    board = json.loads(next(iter(data.values())))
    titles = [p["title"] for p in board["panels"]]
    for word in ("Throughput", "latency quantiles", "Queue wait vs compute", "Batch size", "Shed", "by version"):
        assert any(word in t for t in titles), (word, titles)
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert all(monitoring.MODEL_INFO in e for e in exprs), "every panel is per version"
    # promtool parses every expression (as recording rules: the only offline PromQL parser here).
    rules = [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(exprs)]
    (tmp_path / "dash.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, "check", "rules", "dash.yml", cwd=tmp_path)


def test_args_validate_and_name_every_problem():
    with pytest.raises(ArgsError) as e:
        RolloutArgs(strategy="blue-green", prometheus_address="prometheus:9090", analysis_interval="1 minute",
                    analysis_count=3, analysis_failure_limit=3, max_failure_ratio=1.5, max_p99_latency_ms=0,
                    steps=("setWeight:0", "pause:soon"))
    fields = {p.field for p in e.value.problems}
    assert fields == {"rollout.strategy", "rollout.prometheus_address", "rollout.analysis_interval",
                      "rollout.analysis_failure_limit", "rollout.max_failure_ratio", "rollout.max_p99_latency_ms",
                      "rollout.steps"}, str(e.value)
    with pytest.raises(ArgsError, match="canary analysis needs Prometheus"):
        RolloutArgs(strategy="canary")
    with pytest.raises(ArgsError, match="setWeight"):
        RolloutArgs(steps=("pause:1m",))
    assert RolloutArgs().strategy == "rolling"  # the default needs no Prometheus
    with pytest.raises(ArgsError) as e:
        MonitoringArgs(mode="grafana", scrape_interval="often", alert_shed_ratio=0, runbook_url="my docs",
                       labels=("release",))
    assert {p.field for p in e.value.problems} == {"monitoring.mode", "monitoring.scrape_interval",
                                                   "monitoring.alert_shed_ratio", "monitoring.runbook_url",
                                                   "monitoring.labels"}, str(e.value)


def test_the_rollout_is_not_awaited_by_the_provider_and_a_person_promotes_an_indefinite_pause():
    """RolloutWait judges the outcome (components/rollout_wait.py); the Rollout's own await is off."""
    assert canary.rollout_annotations() == {"pulumi.com/skipAwait": "true"}
    assert canary.awaitable(RolloutArgs(strategy="canary", prometheus_address=PROM,
                                        steps=("setWeight:20", "pause:10m")))
    assert not canary.awaitable(RolloutArgs(strategy="canary", prometheus_address=PROM,
                                            steps=("setWeight:20", "pause:10m", "pause")))


def test_the_analysis_must_fit_in_the_pauses_it_judges():
    """Issue 18, finding 5: Argo promotes when the steps end, whatever the background analysis
    has not yet measured; steps shorter than the analysis are refused, naming both keys."""
    with pytest.raises(ArgsError) as e:
        RolloutArgs(strategy="canary", prometheus_address=PROM, steps=("setWeight:20", "pause:2m", "setWeight:50",
                                                                         "pause:2m"))
    [problem] = e.value.problems
    assert problem.field == "rollout.steps" and "240s" in problem.accepted and "360s" in problem.accepted
    assert "@{rollout.analysis_count}" in problem.accepted
    # Pauses before the analysis starts do not count; an indefinite pause waits for a person.
    with pytest.raises(ArgsError):
        RolloutArgs(strategy="canary", prometheus_address=PROM, steps=("pause:10m", "setWeight:20", "pause:1m"))
    RolloutArgs(strategy="canary", prometheus_address=PROM, steps=("setWeight:20", "pause"))
    RolloutArgs(strategy="canary", prometheus_address=PROM, analysis_count=2, steps=("setWeight:20", "pause:3m"))
    # The defaults fit; rolling does not run the analysis, so its steps are not judged.
    RolloutArgs(strategy="canary", prometheus_address=PROM)
    RolloutArgs(steps=("setWeight:20", "pause:1m"), analysis_count=30)


def test_idle_windows_and_a_prometheus_outage_are_tolerated():
    """Issue 18, finding 5: per metric, every window but one may see no traffic, and errors
    (Argo retries every 10 s) are tolerated for 3 minutes before the metric is Error."""
    template = canary.analysis_template_spec(RolloutArgs(strategy="canary", prometheus_address=PROM,
                                                         analysis_count=8, steps=("setWeight:20", "pause:10m")), NS)
    for m in template["metrics"]:
        assert m["inconclusiveLimit"] == 7
        assert m["consecutiveErrorLimit"] * canary.ARGO_ERROR_RETRY_SECONDS >= 180
