"""The monitoring rules under the real `promtool`: every group syntax-checked, every alert
unit-tested firing and not firing (`promtool test rules`), the runbook of each alert present in
docs/operations.md."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from promkit import ROOT, run_promtool
from servedmodel.components import monitoring
from servedmodel.components.monitoring import MonitoringArgs, Scope

NS, MODEL, WORKLOAD = "servedmodel", "classifier", "classifier-deploy-1a2b3c"
ARGS = MonitoringArgs(mode="prometheus-operator", latency_slo_ms=500, alert_failure_ratio=0.01,
                      alert_shed_ratio=0.05, alert_queue_p99_ms=250)
SCOPE = Scope(served_name=MODEL, namespace=NS, gpu=True)
TARGET = f'namespace="{NS}",model="{MODEL}",job="{NS}/{MODEL}",instance="10.0.0.7:8080"'
POD = f'namespace="{NS}",pod="{WORKLOAD}-7d9f8-x2x4z"'
# A DCGM exporter series scraped through its chart's ServiceMonitor: the target labels are the
# exporter pod's; the GPU's pod/namespace (dcgm-exporter's Kubernetes mode) arrive as exported_*.
XID_EXPORTER = ('namespace="gpu-operator",pod="nvidia-dcgm-exporter-x7k2p",container="nvidia-dcgm-exporter",'
                'service="nvidia-dcgm-exporter",endpoint="gpu-metrics",job="nvidia-dcgm-exporter",'
                'instance="10.0.1.23:9400",gpu="0",UUID="GPU-5b1c2d3e",Hostname="ip-10-0-1-23"')
XID_OF = f'exported_namespace="{NS}",exported_pod="%s-7d9f8-x2x4z",exported_container="server"'


def counter(name: str, labels: str, per_minute: float, minutes: int = 40) -> dict:
    return {"series": f"{name}{{{labels}}}", "values": f"0+{per_minute}x{minutes}"}


def histogram(name: str, per_minute: dict[str, float], minutes: int = 40) -> list[dict]:
    """Cumulative buckets: `per_minute` maps each upper bound to the observations per minute
    that fall at or below it (the +Inf bucket is the total)."""
    return [counter(f"{name}_bucket", f'{TARGET},le="{le}"', n, minutes) for le, n in per_minute.items()]


def requests(success: float, server_error: float = 0, shed: float = 0, client_error: float = 0) -> list[dict]:
    out = []
    for outcome, n in (("success", success), ("server_error", server_error), ("shed", shed),
                       ("client_error", client_error)):
        if n:
            out.append(counter(monitoring.REQUESTS, f'{TARGET},outcome="{outcome}"', n))
    return out


def failures(**per_reason: float) -> list[dict]:
    return [counter(monitoring.FAILURES, f'{TARGET},reason="{r}"', n) for r, n in per_reason.items()]


MODEL_LABELS = {"namespace": NS, "model": MODEL}
# alert -> (firing input, labels of the firing alert, not-firing input). Each not-firing case is
# the near miss that must not page: under the threshold, the wrong kind of failure, another
# workload's pods.
CASES: dict[str, tuple[list[dict], dict[str, str], list[dict]]] = {
    "ServedModelHighFailureRatio": (
        requests(success=95, server_error=5) + failures(model_error=4, internal=1),
        MODEL_LABELS,
        # 30% of requests are the callers' mistakes (400): not the version's failure.
        requests(success=70, client_error=30) + failures(bad_request=30),
    ),
    "ServedModelLatencyP99OverSLO": (
        requests(success=100) + histogram(monitoring.REQUEST_DURATION, {"0.1": 0, "0.5": 50, "1.0": 100, "+Inf": 100}),
        MODEL_LABELS,
        requests(success=100)
        + histogram(monitoring.REQUEST_DURATION, {"0.1": 90, "0.5": 100, "1.0": 100, "+Inf": 100}),
    ),
    "ServedModelShedding": (
        requests(success=90, shed=10) + failures(queue_full=6, queue_timeout=4),
        MODEL_LABELS,
        requests(success=98, shed=2) + failures(queue_timeout=2),
    ),
    "ServedModelQueueSaturated": (
        requests(success=100) + histogram(monitoring.QUEUE_DURATION, {"0.1": 10, "0.25": 20, "0.5": 100, "+Inf": 100}),
        MODEL_LABELS,
        requests(success=100) + histogram(monitoring.QUEUE_DURATION, {"0.1": 99, "0.25": 100, "0.5": 100, "+Inf": 100}),
    ),
    "ServedModelPodsNotReady": (
        [{"series": f'kube_pod_status_ready{{{POD},condition="false"}}', "values": "1x40"},
         {"series": f'kube_pod_status_ready{{{POD},condition="true"}}', "values": "0x40"}],
        {"namespace": NS},
        [{"series": f'kube_pod_status_ready{{{POD},condition="false"}}', "values": "0x40"},
         {"series": f'kube_pod_status_ready{{{POD},condition="true"}}', "values": "1x40"},
         # Another workload's pod in the namespace, not ready: not ours.
         {"series": f'kube_pod_status_ready{{namespace="{NS}",pod="other-deploy-9-abc",condition="false"}}',
          "values": "1x40"}],
    ),
    "ServedModelPodRestarting": (
        [counter("kube_pod_container_status_restarts_total", f'{POD},container="server"', 1)],
        {"namespace": NS, "pod": f"{WORKLOAD}-7d9f8-x2x4z"},
        [{"series": f'kube_pod_container_status_restarts_total{{{POD},container="server"}}', "values": "1x40"}],
    ),
    # As the dcgm-exporter chart's ServiceMonitor (honorLabels false) delivers it: the target's
    # namespace/pod are the exporter's, the model pod's are renamed exported_* (issue 18).
    "ServedModelGpuXidErrors": (
        [{"series": f"DCGM_FI_DEV_XID_ERRORS{{{XID_EXPORTER},{XID_OF % WORKLOAD}}}", "values": "0x10 79x30"}],
        {"namespace": NS, "pod": f"{WORKLOAD}-7d9f8-x2x4z"},
        [{"series": f"DCGM_FI_DEV_XID_ERRORS{{{XID_EXPORTER},{XID_OF % WORKLOAD}}}", "values": "0x40"},
         # Another workload's GPU in the namespace: not ours.
         {"series": f"DCGM_FI_DEV_XID_ERRORS{{{XID_EXPORTER},{XID_OF % 'other-deploy-9'}}}", "values": "79x40"}],
    ),
}


def _rendered_annotations(rule: dict, labels: dict[str, str]) -> dict[str, str]:
    """The alert's annotations as Prometheus renders them (they use only $labels)."""
    out = {}
    for key, text in rule["annotations"].items():
        assert "$value" not in text, f"{rule['alert']} {key}: the unit tests expect $labels only"
        out[key] = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
    return out


def _write_rules(tmp_path: Path, args: MonitoringArgs, scope: Scope = SCOPE, workload: str = WORKLOAD) -> Path:
    path = tmp_path / "rules.yml"
    path.write_text(monitoring.rule_file(args, scope, workload))
    return path


def test_promtool_checks_rules_of_every_variant(promtool, tmp_path):
    """Every variant of the groups (GPU or not, other thresholds) passes `promtool check rules`."""
    for i, (args, scope) in enumerate([
            (ARGS, SCOPE), (MonitoringArgs(), Scope(served_name="lenet", namespace="default")),
            (MonitoringArgs(latency_slo_ms=1500, alert_queue_p99_ms=1, runbook_url="https://docs.example/ops.md"),
             Scope(served_name="m", namespace="n", gpu=True))]):
        d = tmp_path / str(i)
        d.mkdir()
        out = run_promtool(promtool, "check", "rules", str(_write_rules(d, args, scope)), cwd=d)
        assert "SUCCESS" in out.stdout


def test_promtool_check_rules_rejects_a_broken_expression(promtool, tmp_path):
    """The check itself can fail: a broken expression is refused."""
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "rate(x[5m]"}]}]}))
    with pytest.raises(AssertionError, match="exited 1"):
        run_promtool(promtool, "check", "rules", "bad.yml", cwd=tmp_path)


def test_every_alert_has_a_unit_test_and_a_runbook():
    alerts = [r for g in monitoring.rule_groups(ARGS, SCOPE, WORKLOAD) for r in g["rules"] if "alert" in r]
    assert {r["alert"] for r in alerts} == set(CASES) == set(monitoring.ALERTS)
    operations = (ROOT / "docs" / "operations.md").read_text()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", operations, flags=re.M)}
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in headings, f"docs/operations.md has no section #{anchor} ({rule['alert']})"


def test_without_gpu_there_is_no_gpu_alert():
    scope = Scope(served_name=MODEL, namespace=NS, gpu=False)
    names = {r.get("alert") for g in monitoring.rule_groups(ARGS, scope, WORKLOAD) for r in g["rules"]}
    assert "ServedModelGpuXidErrors" not in names and "ServedModelShedding" in names


def test_promtool_unit_tests_every_alert_firing_and_not_firing(promtool, tmp_path):
    rules = _write_rules(tmp_path, ARGS)
    by_name = {r["alert"]: r for g in monitoring.rule_groups(ARGS, SCOPE, WORKLOAD) for r in g["rules"] if "alert" in r}
    tests = []
    for alert, (firing, labels, quiet) in CASES.items():
        rule = by_name[alert]
        exp_labels = {**rule["labels"], **labels}
        # At 30m every `for:` (at most 10m) has elapsed since the 5m/15m windows filled.
        tests.append({"interval": "1m", "input_series": firing, "alert_rule_test": [
            {"eval_time": "30m", "alertname": alert, "exp_alerts": [
                {"exp_labels": exp_labels, "exp_annotations": _rendered_annotations(rule, exp_labels)}]}]})
        tests.append({"interval": "1m", "input_series": quiet, "alert_rule_test": [
            {"eval_time": "30m", "alertname": alert, "exp_alerts": []}]})
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(
        {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    out = run_promtool(promtool, "test", "rules", "tests.yml", cwd=tmp_path)
    assert "SUCCESS" in out.stdout


def test_promtool_unit_test_fails_when_an_alert_stays_quiet(promtool, tmp_path):
    """The unit tests can fail: expecting the failure alert from the near-miss input does."""
    rules = _write_rules(tmp_path, ARGS)
    alert = "ServedModelHighFailureRatio"
    _, labels, quiet = CASES[alert]
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": [rules.name], "tests": [
        {"interval": "1m", "input_series": quiet, "alert_rule_test": [
            {"eval_time": "30m", "alertname": alert, "exp_alerts": [{"exp_labels": labels}]}]}]}))
    with pytest.raises(AssertionError, match="exited 1"):
        run_promtool(promtool, "test", "rules", "tests.yml", cwd=tmp_path)


def _xid_test(series: list[dict], exp_alerts: list[dict]) -> dict:
    return {"interval": "1m", "input_series": series, "alert_rule_test": [
        {"eval_time": "30m", "alertname": "ServedModelGpuXidErrors", "exp_alerts": exp_alerts}]}


def test_promtool_the_xid_alert_fires_for_both_label_shapes(promtool, tmp_path):
    """Issue 18, finding 10: with the exporter's ServiceMonitor at honorLabels false (its chart's
    default) the model pod's labels arrive as exported_namespace/exported_pod; with honorLabels
    true as namespace/pod. The alert fires for both and names the model's pod either way, and
    not for the exporter's own namespace/pod."""
    rules = _write_rules(tmp_path, ARGS)
    rule = next(r for g in monitoring.rule_groups(ARGS, SCOPE, WORKLOAD) for r in g["rules"]
                if r.get("alert") == "ServedModelGpuXidErrors")
    labels = {**rule["labels"], "namespace": NS, "pod": f"{WORKLOAD}-7d9f8-x2x4z"}
    expected = [{"exp_labels": labels, "exp_annotations": _rendered_annotations(rule, labels)}]
    renamed = f"DCGM_FI_DEV_XID_ERRORS{{{XID_EXPORTER},{XID_OF % WORKLOAD}}}"
    honoured = f'DCGM_FI_DEV_XID_ERRORS{{{POD},gpu="0",UUID="GPU-5b1c2d3e",job="nvidia-dcgm-exporter"}}'
    # The exporter's own pod reporting (it has no exported_* labels when no workload holds the GPU).
    exporter_only = f"DCGM_FI_DEV_XID_ERRORS{{{XID_EXPORTER}}}"
    tests = [_xid_test([{"series": renamed, "values": "0x10 79x30"}], expected),
             _xid_test([{"series": honoured, "values": "0x10 48x30"}], expected),
             _xid_test([{"series": exporter_only, "values": "79x40"}], [])]
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(
        {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    out = run_promtool(promtool, "test", "rules", "tests.yml", cwd=tmp_path)
    assert "SUCCESS" in out.stdout


def test_the_xid_description_says_the_gauge_is_a_code_not_a_count():
    rule = next(r for g in monitoring.rule_groups(ARGS, SCOPE, WORKLOAD) for r in g["rules"]
                if r.get("alert") == "ServedModelGpuXidErrors")
    assert "last XID code, not a count" in rule["annotations"]["description"]
