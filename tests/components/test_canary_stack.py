"""The canary and the monitoring objects as the stacks declare them (issue 12), under the mocks:
wired from the stack config, pointing at each other by name, the rolling path unchanged, every
rule group the stacks declare accepted by the real `promtool check rules`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from pulumi_harness import TEST_SECRET, kubernetes_manifest, run_program, stack_file
from servedmodel.components import MonitoringArgs, RolloutArgs, canary, monitoring, specs
from servedmodel.components.settings import SCHEMA
from test_settings import problems

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monitoring"))
from promkit import binary, run_promtool

ROLLOUT = "kubernetes:argoproj.io/v1alpha1:Rollout"
TEMPLATE = "kubernetes:argoproj.io/v1alpha1:AnalysisTemplate"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def test_prod_rollout_is_a_canary_gated_by_its_analysis_template(stack_runs):
    run = stack_runs["prod"]
    prod = stack_file("prod")
    rollout, template = run.one(ROLLOUT), run.one(TEMPLATE)
    strategy = rollout.inputs["spec"]["strategy"]["canary"]
    assert strategy["steps"] == [canary.parse_step(s) for s in prod["servedmodel:rollout"]["steps"]]
    assert strategy["analysis"]["templates"] == [{"templateName": template.state["metadata"]["name"]}]
    assert strategy["analysis"]["args"] == [{"name": canary.CANARY_HASH_ARG,
                                             "valueFrom": {"podTemplateHashValue": "Latest"}}]
    # The analysis: the configured Prometheus, interval, count, limit and thresholds.
    metrics = {m["name"]: m for m in template.inputs["spec"]["metrics"]}
    assert set(metrics) == {canary.METRIC_FAILURE_RATIO, canary.METRIC_LATENCY_P99, canary.METRIC_SHED_RATIO}
    for m in metrics.values():
        assert m["provider"]["prometheus"]["address"] == prod["servedmodel:prometheusUrl"]
        assert (m["interval"], m["count"], m["failureLimit"]) == ("1m", 8, 1)
        assert 'namespace="servedmodel"' in m["provider"]["prometheus"]["query"]
    assert metrics[canary.METRIC_LATENCY_P99]["successCondition"].endswith("<= 250.0")
    assert metrics[canary.METRIC_FAILURE_RATIO]["successCondition"].endswith("<= 0.005")
    # `pulumi up` waits for the outcome on Argo's own view (a RolloutWait, issue 18), not on the
    # provider's await of the Rollout: tests/components/test_rollout_wait.py.
    assert rollout.inputs["metadata"]["annotations"][canary.SKIP_AWAIT_ANNOTATION] == "true"
    wait = run.one("pulumi-python:dynamic/servedmodel:RolloutWait")
    assert wait.waits_for(rollout)
    assert wait.inputs["timeoutSeconds"] >= 10 * 60 + rollout.inputs["spec"]["progressDeadlineSeconds"]
    # Idle windows and a short Prometheus outage do not stall or abort it (issue 18, finding 5).
    for m in metrics.values():
        assert m["inconclusiveLimit"] == 7 and m["consecutiveErrorLimit"] == 18
    # Scaled by the HPA through the Rollout's scale subresource.
    hpa = run.one("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert hpa.inputs["spec"]["scaleTargetRef"] == {"apiVersion": canary.ROLLOUT_API_VERSION, "kind": "Rollout",
                                                    "name": rollout.state["metadata"]["name"]}
    assert not run.of_type(DEPLOYMENT)


@pytest.fixture(scope="module")
def prod_rolling(model_cache):
    """prod with the defaults of issue 12's keys: rolling, no monitoring objects."""
    return run_program("prod", {"servedmodel:rollout": "rolling", "servedmodel:monitoring": "none"},
                       secrets={"servedmodel:authToken": TEST_SECRET})


def test_rolling_is_the_default_and_unchanged(stack_runs, prod_rolling):
    # servedmodel:rollout and servedmodel:monitoring are group keys (a plain value, or an object of
    # the group's settings): stack-only, so their defaults are the declarations' (Pulumi.yaml
    # cannot declare a key that may hold an object).
    assert SCHEMA.by_key["rollout"].stack_default == "rolling" == RolloutArgs().strategy
    assert SCHEMA.by_key["monitoring"].stack_default == "none" == MonitoringArgs().mode
    project = yaml.safe_load((Path(__file__).resolve().parents[2] / "Pulumi.yaml").read_text())
    assert "servedmodel:rollout" not in project["config"]
    kinds = {r.type for r in prod_rolling.resources}
    assert DEPLOYMENT in kinds and not {t for t in kinds if "argoproj" in t or "monitoring.coreos" in t}
    assert "servedmodel:index:ModelMonitoring" not in kinds
    deployment = prod_rolling.one(DEPLOYMENT)
    assert deployment.inputs["spec"]["strategy"] == specs.rolling_update()
    # The Rollout runs the very pod template the Deployment would run; only the label that
    # tells revisions apart in the topology spread differs (Argo's hash label).
    d_template = json.loads(json.dumps(deployment.inputs["spec"]["template"]))
    r_template = json.loads(json.dumps(stack_runs["prod"].one(ROLLOUT).inputs["spec"]["template"]))
    for t, label in ((d_template, "pod-template-hash"), (r_template, monitoring.HASH_POD_LABEL)):
        for c in t["spec"].pop("topologySpreadConstraints"):
            assert c["matchLabelKeys"] == [label]
        t["spec"].pop("serviceAccountName")  # auto-named per run
    assert d_template == r_template


def test_monitoring_objects_select_the_models_pods_and_workload(stack_runs):
    run = stack_runs["prod"]
    pm = run.one("kubernetes:monitoring.coreos.com/v1:PodMonitor")
    workload = run.one(ROLLOUT)
    pod_labels = workload.inputs["spec"]["template"]["metadata"]["labels"]
    assert pm.inputs["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitoring.HASH_POD_LABEL in pm.inputs["spec"]["podTargetLabels"]
    assert pm.inputs["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert pm.inputs["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rule = run.one("kubernetes:monitoring.coreos.com/v1:PrometheusRule")
    assert rule.inputs["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    exprs = [r["expr"] for g in rule.inputs["spec"]["groups"] for r in g["rules"]]
    assert any(f'pod=~"{workload.state["metadata"]["name"]}-.*"' in e for e in exprs)
    alerts = {r["alert"] for g in rule.inputs["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert "ServedModelGpuXidErrors" in alerts  # prod has GPUs
    [dash] = run.of_type("kubernetes:core/v1:ConfigMap")
    assert dash.inputs["metadata"]["labels"][monitoring.GRAFANA_DASHBOARD_LABEL] == "1"
    assert json.loads(next(iter(dash.inputs["data"].values())))["panels"]


def _declared_rule_groups(run) -> list[tuple[str, dict]]:
    """(where, {"groups": [...]}) for every rule group a stack declares."""
    out = []
    for r in run.of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule"):
        out.append((r.name, {"groups": r.inputs["spec"]["groups"]}))
    for r in run.of_type("kubernetes:core/v1:ConfigMap"):
        for key, text in r.inputs.get("data", {}).items():
            if key.endswith(".rules.yml"):
                out.append((f"{r.name}/{key}", yaml.safe_load(text)))
    return out


def test_promtool_checks_every_rule_group_the_stacks_declare(stack_runs, tmp_path):
    promtool = binary("promtool")
    checked = 0
    for stack in ("dev", "prod"):
        for where, doc in _declared_rule_groups(stack_runs[stack]):
            path = tmp_path / f"{stack}-{where.replace('/', '_')}.yml"
            path.write_text(yaml.safe_dump(doc))
            out = run_promtool(promtool, "check", "rules", str(path), cwd=tmp_path)
            assert "SUCCESS" in out.stdout, where
            checked += 1
    assert checked == 3  # prod's PrometheusRule, dev's two rule-file ConfigMaps


def test_canary_and_monitoring_config_errors_name_the_keys():
    found = problems("local", {"servedmodel:rollout": "canary", "servedmodel:monitoring": "prometheus-operator"})
    assert any(p.startswith("servedmodel:rollout = 'canary'") and "kubernetes target" in p for p in found), found
    assert any(p.startswith("servedmodel:monitoring = 'prometheus-operator'") for p in found), found
    found = problems("prod", {"servedmodel:prometheusUrl": "", "servedmodel:analysisMaxShedRatio": "a lot",
                              "servedmodel:canarySteps": ["setWeight:20", "wait 5m"],
                              "servedmodel:analysisFailureLimit": 8, "servedmodel:monitoringLabels": ["release"]},
                     secrets={"servedmodel:authToken": TEST_SECRET})
    for key in ("prometheusUrl", "analysisMaxShedRatio", "canarySteps", "analysisFailureLimit",
                "monitoringLabels"):
        assert any(p.startswith(f"servedmodel:{key} = ") for p in found), (key, found)
    assert any("servedmodel:analysisCount" in p for p in found if p.startswith("servedmodel:analysisFailureLimit"))


def test_a_changed_model_changes_only_the_rollouts_template(stack_runs):
    """The canary is triggered by the pod template (the new image and version); the
    AnalysisTemplate and the monitoring objects do not depend on the version."""
    run = stack_runs["prod"]
    version = run.outputs["modelVersion"]["classifier"]
    assert kubernetes_manifest(run.one(ROLLOUT))["spec"]["template"]["metadata"]["annotations"][
        specs.VERSION_ANNOTATION] == version
    for kind in (TEMPLATE, "kubernetes:monitoring.coreos.com/v1:PodMonitor",
                 "kubernetes:monitoring.coreos.com/v1:PrometheusRule"):
        assert version not in json.dumps(run.one(kind).inputs), kind
