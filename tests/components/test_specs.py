"""The pure spec builders, without mocks."""
from __future__ import annotations

import json

import pytest

from servedmodel.components import specs
from servedmodel.components.args import ArgsError


def test_gpu_limit_equals_request_and_cpu_pods_get_no_gpu():
    r = specs.resources("2", "4Gi", 1)
    assert r["requests"] == r["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert "nvidia.com/gpu" not in specs.resources("1", "1Gi", 0)["limits"]


def test_toleration_matches_the_pool_taint():
    [tol] = specs.gpu_tolerations(1)
    assert (tol["key"], tol["value"], tol["effect"], tol["operator"]) == (
        specs.GPU_TAINT["key"], specs.GPU_TAINT["value"], specs.GPU_TAINT["effect"], "Equal")
    assert specs.gpu_tolerations(0) == []


def test_probes_follow_the_server_contract():
    p = specs.probes()
    assert p["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert p["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert p["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # The startup probe allows minutes for a model to load before liveness can kill the pod.
    assert p["startupProbe"]["periodSeconds"] * p["startupProbe"]["failureThreshold"] >= 120


@pytest.mark.parametrize("pre_stop, drain", [(5, 20), (0, 0), (10, 60)])
def test_grace_period_outlasts_pre_stop_plus_drain(pre_stop, drain):
    lifecycle, grace = specs.termination(pre_stop, drain)
    assert grace > pre_stop + drain
    assert (lifecycle.get("preStop", {}).get("sleep", {}).get("seconds", 0)) == pre_stop


def test_security_contexts_are_hardened():
    c = specs.container_security_context()
    assert c["allowPrivilegeEscalation"] is False and c["readOnlyRootFilesystem"] is True
    assert c["capabilities"] == {"drop": ["ALL"]} and c["runAsNonRoot"] is True
    pod = specs.pod_security_context()
    assert pod["runAsNonRoot"] and pod["runAsUser"] == 10001 and pod["seccompProfile"] == {"type": "RuntimeDefault"}


def test_selector_labels_never_carry_the_version():
    assert "app.kubernetes.io/version" not in specs.selector_labels("m")
    assert specs.labels("m", "abc")["app.kubernetes.io/version"] == "abc"
    assert specs.selector_labels("m").items() <= specs.labels("m", "abc").items()


def test_hpa_metrics():
    inflight = specs.hpa_metric("inflight", 4, 50, 70)
    assert inflight["pods"]["metric"]["name"] == "servedmodel_inflight_requests"
    assert inflight["pods"]["target"] == {"type": "AverageValue", "averageValue": "4"}
    queue = specs.hpa_metric("queue", 4, 50, 70)
    assert queue["pods"]["metric"]["name"] == specs.QUEUE_METRIC and queue["pods"]["target"]["averageValue"] == "50m"
    assert specs.hpa_metric("queue", 4, 2000, 70)["pods"]["target"]["averageValue"] == "2"
    cpu = specs.hpa_metric("cpu", 4, 50, 70)
    assert cpu == {"type": "Resource",
                   "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}


def test_server_env_uses_the_contract_names_and_reads_the_token_from_a_file():
    """Issue 18, finding 14: the token reaches the server as a mounted file, never as an
    environment value (which `kubectl describe`, crash dumps and child processes see)."""
    env = {e["name"]: e for e in specs.server_env("cuda", 20, True)}
    assert env["SERVEDMODEL_DEVICE"]["value"] == "cuda" and env["SERVEDMODEL_PORT"]["value"] == "8080"
    assert env["SERVEDMODEL_DRAIN_SECONDS"]["value"] == "20"
    assert env["SERVEDMODEL_AUTH_TOKEN_FILE"] == {"name": "SERVEDMODEL_AUTH_TOKEN_FILE", "value": specs.AUTH_TOKEN_PATH}
    assert "SERVEDMODEL_AUTH_TOKEN" not in env
    names = {e["name"] for e in specs.server_env("cpu", 20)}
    assert not {"SERVEDMODEL_AUTH_TOKEN", "SERVEDMODEL_AUTH_TOKEN_FILE"} & names
    volume = specs.auth_token_volume("auth-abc")
    assert volume["secret"] == {"secretName": "auth-abc", "defaultMode": 0o440,
                                "items": [{"key": "token", "path": "token"}]}
    mount = specs.auth_token_mount()
    assert mount["readOnly"] and f"{mount['mountPath']}/token" == specs.AUTH_TOKEN_PATH


def test_network_policy_admits_own_namespace_configured_namespaces_and_cidrs_only():
    [rule] = specs.network_policy_ingress(("monitoring",), ("10.0.0.0/16",))
    assert rule["from"] == [{"podSelector": {}},
                            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
                            {"ipBlock": {"cidr": "10.0.0.0/16"}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]


def test_rolling_update_never_drops_capacity():
    assert specs.rolling_update()["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


def test_ecr_lifecycle_keeps_the_last_n_versions():
    untagged, tagged = sorted(json.loads(specs.ecr_lifecycle_policy(7))["rules"], key=lambda r: r["rulePriority"])
    # Tagged versions are counted on their own: re-pushed builds (untagged) never use up the window.
    assert tagged["selection"] == {"tagStatus": "tagged", "tagPatternList": ["*"],
                                   "countType": "imageCountMoreThan", "countNumber": 7}
    # A replaced build stays pullable for pods still pinned to its digest, then goes.
    assert untagged["selection"] == {"tagStatus": "untagged", "countType": "sinceImagePushed",
                                     "countUnit": "days", "countNumber": specs.UNTAGGED_EXPIRY_DAYS}
    assert untagged["action"] == tagged["action"] == {"type": "expire"}


def test_pinned_reference_needs_a_manifest_digest():
    digest = "sha256:" + "a" * 64
    assert specs.pinned_reference("r/m:v1", digest) == f"r/m:v1@{digest}"
    with pytest.raises(ValueError, match="manifest digest"):
        specs.pinned_reference("r/m:v1", "")


def test_kubeconfig_uses_aws_token_exec_not_a_stored_token():
    cfg = json.loads(specs.eks_kubeconfig("c", "https://x", "Q0E=", "eu-west-1"))
    user = cfg["users"][0]["user"]
    assert "token" not in user and user["exec"]["args"][:4] == ["eks", "get-token", "--cluster-name", "c"]


def test_registry_host():
    assert specs.registry_host("1.dkr.ecr.eu-west-1.amazonaws.com/a/b") == "1.dkr.ecr.eu-west-1.amazonaws.com"


def test_kubeconfig_passes_the_aws_profile_to_the_token_command():
    cfg = json.loads(specs.eks_kubeconfig("c", "https://x", "Q0E=", "eu-west-1", aws_profile="deploy"))
    exec_ = cfg["users"][0]["user"]["exec"]
    assert exec_["args"][-2:] == ["--profile", "deploy"]
    assert exec_["env"] == [{"name": "AWS_PROFILE", "value": "deploy"}]
    plain = json.loads(specs.eks_kubeconfig("c", "https://x", "Q0E=", "eu-west-1"))["users"][0]["user"]["exec"]
    assert "--profile" not in plain["args"] and "env" not in plain


def test_retention_keeps_at_least_what_one_workload_may_pin():
    """ECR's count rule keeps the newest pushes, not what runs: fewer kept versions than one
    workload may pin at once (its rollout history, the current version, a canary) could expire a
    digest a ReplicaSet still runs (issue 18, "ECR retention counts pushes")."""
    from servedmodel.components.args import KEEP_VERSIONS_FLOOR, RegistryArgs

    assert KEEP_VERSIONS_FLOOR == specs.REVISION_HISTORY_LIMIT + 2 == 7
    RegistryArgs(keep_versions=KEEP_VERSIONS_FLOOR)
    with pytest.raises(ArgsError) as err:
        RegistryArgs(keep_versions=KEEP_VERSIONS_FLOOR - 1)
    assert "registry.keep_versions = 6: must be 7 or more" in str(err.value)
    policy = json.loads(specs.ecr_lifecycle_policy(KEEP_VERSIONS_FLOOR))
    assert [r["selection"]["tagStatus"] for r in policy["rules"]] == ["untagged", "tagged"]


def test_the_public_load_balancer_drains_as_long_as_the_pod_serves():
    annotations = specs.public_load_balancer_annotations("arn", 9000, pre_stop_seconds=120, drain_seconds=20,
                                                         subnet_ids=["subnet-a", "subnet-b"])
    assert annotations[specs.LBC + "target-group-attributes"] == (
        "deregistration_delay.timeout_seconds=140,deregistration_delay.connection_termination.enabled=true,"
        "preserve_client_ip.enabled=false")
    assert annotations[specs.LBC + "subnets"] == "subnet-a,subnet-b"
    assert annotations[specs.LBC + "alpn-policy"] == "HTTP2Optional"
    lifecycle, grace = specs.termination(120, 20)
    assert lifecycle == {"preStop": {"sleep": {"seconds": 120}}} and grace == 150
