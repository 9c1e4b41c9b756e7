"""Pure builders of the Kubernetes/AWS fragments the components declare.

Plain functions over plain values, returning the camelCase dicts Kubernetes reads: tested
without mocks (tests/components/test_specs.py) and reused by the components, so what the
tests check is exactly what is deployed. The names and numbers of the server's contract
(docs/architecture.md section 3) come from serving/contract.py through models/contract.py.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from servedmodel.components.platforms import ARCH_LABEL
from servedmodel.models import contract  # the server's contract values, read as data from serving/contract.py

SERVER_PORT = contract.PORT
SERVICE_PORT = 80
TLS_PORT = 443
# The AWS Load Balancer Controller's Service annotations (kubernetes-sigs/aws-load-balancer-controller,
# docs/guide/service/annotations.md): the controller, not the in-tree one, makes an NLB for them.
LBC = "service.beta.kubernetes.io/aws-load-balancer-"
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
READY_PATH = contract.READY_PATH
LIVE_PATH = contract.LIVE_PATH
INFLIGHT_METRIC = contract.INFLIGHT_METRIC
# prometheus-adapter turns the servedmodel_queue_duration_seconds histogram into this per-pod
# mean (rate(_sum)/rate(_count)); the rule is in docs/deploy.md.
QUEUE_METRIC = contract.QUEUE_DURATION_METRIC + "_mean"
GPU_RESOURCE = "nvidia.com/gpu"

#: A Kubernetes object, or part of one, as the API's camelCase JSON: what these builders return and
#: what the components hand to pulumi_kubernetes, which accepts it, while its TypedDicts spell the
#: keys in snake_case. Its shape is checked against the API's OpenAPI schema and the CRDs' schemas
#: by tests/components (stricter than the TypedDicts, and they know the custom resources); the type
#: checker takes it as it is.
Json = Any


def as_json(obj: Any) -> Json:
    """`obj` itself, declared as Kubernetes JSON (`Json`) where it is handed to pulumi_kubernetes."""
    return obj
GPU_TAINT = {"key": GPU_RESOURCE, "value": "true", "effect": "NoSchedule"}
POOL_LABEL = "servedmodel.io/node-pool"
VERSION_ANNOTATION = "servedmodel.io/model-version"
LOAD_BALANCER_OPT_IN = "servedmodel.io/allow-load-balancer"
RUN_AS = 10001  # the image's non-root user (docs/architecture.md section 2)
TMP_VOLUME = "tmp"
STARTUP_PROBE_PERIOD = 5  # seconds between startup probes


def scrape_annotations() -> dict[str, str]:
    """Where Prometheus finds the server's /metrics (annotation-based scrape configs)."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(SERVER_PORT), "prometheus.io/path": "/metrics"}


def selector_labels(served_name: str) -> dict[str, str]:
    """Stable labels a Deployment selects on: never the version (selectors are immutable)."""
    return {"app.kubernetes.io/name": "servedmodel", "app.kubernetes.io/instance": served_name}


def labels(served_name: str, version: Optional[str] = None) -> dict[str, str]:
    out = selector_labels(served_name) | {"app.kubernetes.io/managed-by": "pulumi"}
    if version is not None:
        out["app.kubernetes.io/version"] = version
    return out


def resources(cpu: str, memory: str, gpu: int) -> dict[str, Any]:
    """Requests == limits (Guaranteed QoS); a GPU must be requested and limited identically."""
    amounts: dict[str, str] = {"cpu": cpu, "memory": memory}
    if gpu > 0:
        amounts[GPU_RESOURCE] = str(gpu)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def gpu_tolerations(gpu: int) -> list[dict[str, str]]:
    """The toleration matching the GPU pool's taint (none for CPU pods)."""
    if gpu <= 0:
        return []
    return [{"key": GPU_TAINT["key"], "operator": "Equal", "value": GPU_TAINT["value"],
             "effect": GPU_TAINT["effect"]}]


def node_selector(pool_label: Optional[str]) -> dict[str, str]:
    return {POOL_LABEL: pool_label} if pool_label else {}


def pod_node_selector(pool_labels: Optional[dict[str, str]], select: Sequence[str],
                      arch: Optional[str]) -> dict[str, str]:
    """The pods' nodeSelector: the `select`ed labels of the pool's nodes (its own label, or a shared
    GPU's labels, which any pool sliced alike carries) and the nodes' architecture when known."""
    out = {key: (pool_labels or {})[key] for key in select}
    if arch:
        out[ARCH_LABEL] = arch
    return out


def probes(grpc_port: int = 0, startup_failure_threshold: int = 60) -> dict[str, dict[str, Any]]:
    """Startup gives the model time to load; readiness and liveness follow the V2 health routes.

    With gRPC on, readiness and liveness ask the server's grpc.health.v1 (Kubernetes' native
    `grpc` probe), so a pod is routed gRPC traffic only while that front end answers: readiness
    asks the service GRPC_HEALTH_SERVICE (the model ready, NOT_SERVING while loading or
    draining), liveness asks GRPC_LIVENESS_SERVICE (SERVING while the process runs), so a pod
    that drains or warms up is taken out of routing but never restarted by its liveness probe.
    The startup probe stays on the HTTP ready route, which both front ends share.
    """
    def http(path: str) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}}

    def check(path: str, grpc_service: str) -> dict[str, Any]:
        if grpc_port:
            return {"grpc": {"port": grpc_port, "service": grpc_service}}
        return http(path)

    return {
        "startupProbe": http(READY_PATH) | {"periodSeconds": STARTUP_PROBE_PERIOD, "timeoutSeconds": 2,
                                            "failureThreshold": startup_failure_threshold},
        "readinessProbe": check(READY_PATH, contract.GRPC_HEALTH_SERVICE)
        | {"periodSeconds": 5, "failureThreshold": 2, "timeoutSeconds": 2},
        "livenessProbe": check(LIVE_PATH, contract.GRPC_LIVENESS_SERVICE)
        | {"periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 2},
    }


# Slack between the end of the server's drain and the kubelet's SIGKILL.
TERMINATION_SLACK_SECONDS = 10
# How long an NLB keeps opening new connections to a pod IP target after its deregistration
# started: about two minutes whatever the deregistration delay, as measured and reported in
# kubernetes-sigs/aws-load-balancer-controller issues #2366 and #3270 (reports, not AWS
# documentation; docs/deploy.md, "A public endpoint", Draining). A pod behind the public NLB sleeps in preStop at
# least this long (components/args/rules.py draining_problems).
NLB_DEREGISTRATION_LAG_SECONDS = 120


def termination(pre_stop_seconds: int, drain_seconds: int) -> tuple[dict[str, Any], int]:
    """preStop lifecycle and a grace period that covers preStop + the server's drain.

    The preStop sleep (the kubelet's own `sleep` action: no shell needed in the image) keeps the
    pod serving while endpoints, kube-proxy and (behind the NLB) the target group stop sending it
    new connections; then SIGTERM starts the server's drain. The grace period is counted from the
    deletion and includes the preStop hook, so it is preStop + drain + TERMINATION_SLACK_SECONDS:
    the kubelet never SIGKILLs a drain that runs to its end.
    """
    lifecycle = {"preStop": {"sleep": {"seconds": pre_stop_seconds}}} if pre_stop_seconds > 0 else {}
    return lifecycle, pre_stop_seconds + drain_seconds + TERMINATION_SLACK_SECONDS


def deregistration_delay(pre_stop_seconds: int, drain_seconds: int) -> int:
    """The NLB target group's deregistration delay: as long as the pod serves after its target
    starts deregistering (preStop, then the drain), so the NLB never cuts a connection the pod is
    still finishing; with connection termination on, it closes what remains after that."""
    return pre_stop_seconds + drain_seconds


def pod_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


@dataclass(frozen=True)
class Identity:
    """Who may call the server and what it records (issue 21; docs/protocol.md, "Auth", "Audit").

    `clients_file`: the clients Secret is mounted (SERVEDMODEL_CLIENTS_FILE at `clients_path`);
    `oidc_*`: SERVEDMODEL_OIDC_* ("" leaves OIDC off); `audit`: SERVEDMODEL_AUDIT_LOG=- (records
    on stdout); `model_key_file`: where a local key is mounted (SERVEDMODEL_MODEL_KEY_FILE; "":
    none, a kms model needs the pod's AWS identity instead)."""

    clients_file: bool = False
    clients_path: str = ""
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_scope: str = ""
    audit: bool = False
    model_key_file: str = ""

    def env(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.clients_file:
            out.append({"name": contract.env_name("clients_file"), "value": self.clients_path or CLIENTS_PATH})
        for name, value in (("oidc_issuer", self.oidc_issuer), ("oidc_audience", self.oidc_audience),
                            ("oidc_scope", self.oidc_scope)):
            if value:
                out.append({"name": contract.env_name(name), "value": value})
        if self.audit:
            out.append({"name": contract.env_name("audit_log"), "value": AUDIT_TO_STDOUT})
        if self.model_key_file:
            out.append({"name": contract.env_name("model_key_file"), "value": self.model_key_file})
        return out


# SERVEDMODEL_AUDIT_LOG's value for "records on stdout, as JSON lines with "log":"audit"".
AUDIT_TO_STDOUT = "-"


def server_env(device: str, drain_seconds: int, auth_token_file: bool = False, *, model_name: Optional[str] = None,
               grpc_port: int = 0, settings: Optional[dict[str, str]] = None,
               gpu_mem_limit: Optional[int] = None, identity: Optional[Identity] = None) -> list[dict[str, Any]]:
    """SERVEDMODEL_* variables of docs/architecture.md section 3.

    `model_name` is the served name the server answers under (a model swap keeps the route);
    `settings` are further server settings by name (e.g. the batching ones) that were set: the
    ones left out keep the server's or the manifest's defaults. With `auth_token_file` the
    server reads its bearer token from the file the auth Secret's volume mounts
    (SERVEDMODEL_AUTH_TOKEN_FILE, AUTH_TOKEN_PATH): never from an environment value, which
    `kubectl describe`, crash dumps and every process in the container can read.
    `gpu_mem_limit` (bytes) caps the CUDA provider's memory arena (SERVEDMODEL_GPU_MEM_LIMIT): set
    on a time-sliced GPU, where nothing else keeps one model from another's memory.
    `identity`: the clients file, OIDC, the audit stream and the local model key (Identity).
    Every name is one of the server's (contract.SERVER_VARIABLES): the server refuses to start
    on any other SERVEDMODEL_* variable (tests/components/test_identity.py checks every stack).
    """
    env: list[dict[str, Any]] = [
        {"name": contract.env_name("host"), "value": "0.0.0.0"},
        {"name": contract.env_name("port"), "value": str(SERVER_PORT)},
        {"name": contract.env_name("device"), "value": device},
        {"name": contract.env_name("drain_seconds"), "value": str(drain_seconds)},
    ]
    if model_name is not None:
        env.append({"name": contract.env_name("model_name"), "value": model_name})
    if grpc_port:
        env.append({"name": contract.env_name("grpc_port"), "value": str(grpc_port)})
    if gpu_mem_limit is not None:
        env.append({"name": contract.env_name("gpu_mem_limit"), "value": str(gpu_mem_limit)})
    env += [{"name": contract.env_name(name), "value": value} for name, value in (settings or {}).items()]
    if auth_token_file:
        env.append({"name": contract.env_name("auth_token_file"), "value": AUTH_TOKEN_PATH})
    if identity is not None:
        env += identity.env()
    return env


# The auth token as a file: the Secret's one key mounted read-only (issue 18, finding 14).
AUTH_VOLUME = "auth-token"
AUTH_TOKEN_DIR = "/var/run/secrets/servedmodel.io/auth"
AUTH_TOKEN_KEY = "token"
AUTH_TOKEN_PATH = f"{AUTH_TOKEN_DIR}/{AUTH_TOKEN_KEY}"


def auth_token_volume(secret_name: Any) -> dict[str, Any]:
    """The auth Secret as a volume holding only its token, readable by the pod's group (fsGroup
    RUN_AS owns it; 0440: the server's user reads it, nobody writes it)."""
    return {"name": AUTH_VOLUME, "secret": {"secretName": secret_name, "defaultMode": 0o440,
                                            "items": [{"key": AUTH_TOKEN_KEY, "path": AUTH_TOKEN_KEY}]}}


def auth_token_mount() -> dict[str, Any]:
    return {"name": AUTH_VOLUME, "mountPath": AUTH_TOKEN_DIR, "readOnly": True}


# Named clients (issue 21): a Secret holding only the SHA-256 digests of their tokens, mounted
# read-only; the server reads it at start (SERVEDMODEL_CLIENTS_FILE).
CLIENTS_VOLUME = "clients"
CLIENTS_DIR = "/var/run/secrets/servedmodel.io/clients"
CLIENTS_KEY = "clients.json"
CLIENTS_PATH = f"{CLIENTS_DIR}/{CLIENTS_KEY}"
# The pod template's checksum of the clients document: the file is read only at start, so a
# changed document must roll the pods (the Secret itself is updated in place).
CLIENTS_ANNOTATION = "servedmodel.io/clients-sha256"
# What the pods' model is encrypted with, and the key (the policy pack reads them).
ENCRYPTION_ANNOTATION = "servedmodel.io/model-encryption"
KEY_ANNOTATION = "servedmodel.io/model-key"


def token_digest(token: str) -> str:
    """Lowercase hex SHA-256 of a token's bytes: what the server compares (serving/auth.py)."""
    return hashlib.sha256(token.encode()).hexdigest()


def clients_document(clients: Mapping[str, Sequence[str]]) -> str:
    """The clients file: client name -> the digests of its tokens, canonical JSON (sorted keys,
    the tokens' order kept: the current one, then the next). Never a token."""
    return json.dumps({name: [token_digest(t) for t in tokens] for name, tokens in sorted(clients.items())},
                      sort_keys=True, separators=(",", ":"))


def document_checksum(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def clients_volume(secret_name: Any) -> dict[str, Any]:
    """The clients Secret as a volume holding only its document, readable by the pod's group."""
    return {"name": CLIENTS_VOLUME, "secret": {"secretName": secret_name, "defaultMode": 0o440,
                                               "items": [{"key": CLIENTS_KEY, "path": CLIENTS_KEY}]}}


def clients_mount() -> dict[str, Any]:
    return {"name": CLIENTS_VOLUME, "mountPath": CLIENTS_DIR, "readOnly": True}


# EKS Pod Identity (docs/deploy.md, "The pods' identity"): the service principal that assumes a
# pod's role, and the session tags it sets, which the trust policy pins to this model's pods
# (EKS user guide, pod-id-role.html and pod-id-abac.html).
POD_IDENTITY_PRINCIPAL = "pods.eks.amazonaws.com"


def pod_identity_trust_policy(cluster_name: str, namespace: str, service_account: str) -> str:
    """The pod role's trust policy: EKS Pod Identity may assume it (and tag the session) only for
    this cluster's namespace and service account."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "EksPodIdentityForThisModel", "Effect": "Allow", "Principal": {"Service": POD_IDENTITY_PRINCIPAL},
        "Action": ["sts:AssumeRole", "sts:TagSession"],
        "Condition": {"StringEquals": {"aws:RequestTag/eks-cluster-name": cluster_name,
                                       "aws:RequestTag/kubernetes-namespace": namespace,
                                       "aws:RequestTag/kubernetes-service-account": service_account}},
    }]}, sort_keys=True)


def model_decrypt_policy(key_arn: str, served_name: str) -> str:
    """The pod role's one permission: kms:Decrypt with the model's key, for data keys whose
    encryption context names this served name (models/seal.py binds it; contract
    ENCRYPTION_CONTEXT_NAME)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DecryptThisModelsDataKey", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": key_arn,
        "Condition": {"StringEquals": {f"kms:EncryptionContext:{contract.ENCRYPTION_CONTEXT_NAME}": served_name}},
    }]}, sort_keys=True)


def kms_alias_name(project: str, stack: str, served_name: str) -> str:
    """alias/<project>/<stack>/<served name>: unique per account and region, as aliases must be."""
    return f"alias/{project}/{stack}/{served_name}"


def audit_log_group_name(cluster_name: str, namespace: str, served_name: str) -> str:
    """Where the cluster's log shipper sends a model's audit records (docs/deploy.md, "Audit")."""
    return f"/servedmodel/{cluster_name}/{namespace}/{served_name}/audit"


# The local key of a `local`-encrypted model inside the container (read-only bind mount).
LOCAL_KEY_PATH = "/run/servedmodel/model.key"
LOCAL_CLIENTS_PATH = "/run/servedmodel/clients.json"


def topology_spread(served_name: str, revision_label: str = "pod-template-hash") -> list[dict[str, Any]]:
    """Spread across zones and nodes; only pods of the same rollout revision (`revision_label`)
    are counted."""
    selector = {"matchLabels": selector_labels(served_name)}
    return [
        {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": selector, "matchLabelKeys": [revision_label]}
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]


# Extra pods a rollout starts before stopping old ones; GPU capacity checks count it
# (components/capacity.py fit_problems).
ROLLOUT_SURGE = 1
# Old ReplicaSets a Deployment keeps (rollback targets of `kubectl rollout undo`): each pins an
# image digest the registry must keep (components/args/registry.py KEEP_VERSIONS_FLOOR).
REVISION_HISTORY_LIMIT = 5


def rolling_update() -> dict[str, Any]:
    """Never drop below the current capacity: a new pod must be ready before an old one goes."""
    return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": ROLLOUT_SURGE}}


def hpa_metric(metric: str, target_inflight: int, target_queue_ms: int, target_cpu_percent: int) -> dict[str, Any]:
    """One autoscaling/v2 metric: a per-pod server metric (GPU stacks) or CPU utilisation."""
    if metric == "cpu":
        return {"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": target_cpu_percent}}}
    name, value = {
        "inflight": (INFLIGHT_METRIC, str(target_inflight)),
        "queue": (QUEUE_METRIC, f"{target_queue_ms}m" if target_queue_ms % 1000 else str(target_queue_ms // 1000)),
    }[metric]
    return {"type": "Pods", "pods": {"metric": {"name": name},
                                     "target": {"type": "AverageValue", "averageValue": value}}}


def hpa_behavior() -> dict[str, Any]:
    """Scale up fast, scale down slowly: a model pod is expensive to bring back."""
    return {
        "scaleUp": {"stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
        "scaleDown": {"stabilizationWindowSeconds": 300,
                      "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]},
    }


def network_policy_ingress(ingress_namespaces: tuple[str, ...], ingress_cidrs: tuple[str, ...],
                           grpc_port: int = 0) -> list[dict[str, Any]]:
    """Admit the model's own namespace, the configured namespaces and CIDRs, on the server's
    ports (HTTP, and gRPC when on)."""
    sources: list[dict[str, Any]] = [{"podSelector": {}}]
    sources += [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
                for ns in ingress_namespaces]
    sources += [{"ipBlock": {"cidr": cidr}} for cidr in ingress_cidrs]
    ports = [{"protocol": "TCP", "port": SERVER_PORT}]
    if grpc_port:
        ports.append({"protocol": "TCP", "port": grpc_port})
    return [{"from": sources, "ports": ports}]


def container_ports(grpc_port: int = 0) -> list[dict[str, Any]]:
    ports = [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}]
    if grpc_port:
        ports.append({"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"})
    return ports


def service_ports(grpc_port: int = 0, tls: bool = False) -> list[dict[str, Any]]:
    """Port 80 (443 named `https` when TLS terminates at the load balancer) to the server's HTTP
    port; with gRPC on, a port named `grpc` with appProtocol grpc (so L7 proxies and meshes speak
    HTTP/2 to it) on the same number as the container's."""
    ports = [{"name": "https", "port": TLS_PORT, "targetPort": "http", "protocol": "TCP"} if tls
             else {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}]
    if grpc_port:
        ports.append({"name": "grpc", "port": grpc_port, "targetPort": "grpc", "protocol": "TCP",
                      "appProtocol": "grpc"})
    return ports


# ALPN on the NLB's TLS listeners (annotations.md "alpn-policy"; applied to every TLS listener of
# the Service, pkg/service/model_build_listener.go): HTTP2Optional offers http/1.1, http/1.0 and
# h2 in that order of preference, so gRPC clients, which offer only h2 (grpcio, grpc-go), get
# h2, and REST clients offering both keep HTTP/1.1. The default (None) negotiates nothing, and
# gRPC clients refuse such a handshake.
ALPN_POLICY = "HTTP2Optional"
# The LBC's mutating webhook injects a target-health readiness gate into pods created in a
# namespace with this label (docs/deploy/pod_readiness_gate.md): a new pod is Ready only once the
# NLB sends it traffic, so a rollout never stops an old pod before its successor takes traffic.
READINESS_GATE_LABEL = ("elbv2.k8s.aws/pod-readiness-gate-inject", "enabled")


def target_group_attributes(pre_stop_seconds: int, drain_seconds: int) -> str:
    """The NLB target group's attributes (annotations.md "target-group-attributes"): deregistration
    delay sized by deregistration_delay and connection termination after it; client IP
    preservation off, stated (the default for IP targets) because the NetworkPolicy admits the
    NLB's own subnets, which are the source of forwarded traffic only while it is off."""
    return (f"deregistration_delay.timeout_seconds={deregistration_delay(pre_stop_seconds, drain_seconds)},"
            "deregistration_delay.connection_termination.enabled=true,"
            "preserve_client_ip.enabled=false")


def public_load_balancer_annotations(certificate_arn: Any, grpc_port: int = 0, *,
                                     pre_stop_seconds: int = 0, drain_seconds: int = 0,
                                     subnet_ids: Sequence[str] = ()) -> dict[str, Any]:
    """An internet-facing NLB (AWS Load Balancer Controller, pod IPs as targets) whose listeners
    terminate TLS with the ACM certificate and negotiate ALPN (h2 for gRPC); the NLB forwards
    plain TCP to the pods inside the VPC. Every Service port is a TLS listener: nothing public
    travels in clear text. The NLB lives in `subnet_ids` (pinned, so the NetworkPolicy can admit
    exactly their CIDRs) and drains a target as long as the pod serves after it is deleted. The
    certificate's ARN is a str or another resource's Output (pulumi.Input[str]): only a value here."""
    out: dict[str, Any] = {
        LBC + "type": "external",
        LBC + "nlb-target-type": "ip",
        LBC + "scheme": "internet-facing",
        LBC + "ssl-cert": certificate_arn,
        LBC + "ssl-ports": "https,grpc" if grpc_port else "https",
        LBC + "ssl-negotiation-policy": TLS_POLICY,
        LBC + "alpn-policy": ALPN_POLICY,
        LBC + "backend-protocol": "tcp",
        LBC + "target-group-attributes": target_group_attributes(pre_stop_seconds, drain_seconds),
    }
    if subnet_ids:
        out[LBC + "subnets"] = ",".join(subnet_ids)
    return out


def docker_env(env: list[dict[str, Any]]) -> list[str]:
    """The plain (non-secret) entries of server_env as `NAME=value` for a docker container."""
    return [f"{e['name']}={e['value']}" for e in env if "value" in e]


UNTAGGED_EXPIRY_DAYS = 14
"""Days an image that lost its tag (an older build of a version that was pushed again) stays in
ECR: long enough for pods and ReplicaSets still pinned to its digest to pull it."""


def ecr_lifecycle_policy(keep_versions: int) -> str:
    """Keep the newest N tagged images (versions) so a rollback to any of them stays possible;
    expire untagged ones (a re-pushed version's older build) after UNTAGGED_EXPIRY_DAYS.

    ECR evaluates the lower rulePriority first and an image matched by one rule is not counted
    by the next, so the untagged rule goes first and the count only sees tagged versions."""
    return json.dumps({"rules": [
        {"rulePriority": 1,
         "description": f"expire replaced builds {UNTAGGED_EXPIRY_DAYS} days after their push",
         "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed", "countUnit": "days",
                       "countNumber": UNTAGGED_EXPIRY_DAYS},
         "action": {"type": "expire"}},
        {"rulePriority": 2,
         "description": f"keep the last {keep_versions} model versions",
         "selection": {"tagStatus": "tagged", "tagPatternList": ["*"], "countType": "imageCountMoreThan",
                       "countNumber": keep_versions},
         "action": {"type": "expire"}},
    ]}, sort_keys=True)


def pinned_reference(tag: str, digest: str) -> str:
    """`repo:version@sha256:...`: what a workload runs. The digest is the contract (a running pod
    never changes under it); the version tag is for people and for the registry's lifecycle."""
    if not digest.startswith("sha256:"):
        raise ValueError(f"not a manifest digest: {digest!r} (expected sha256:<64 hex>)")
    return f"{tag}@{digest}"


def node_assume_role_policy() -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
        sort_keys=True)


NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")


def eks_kubeconfig(cluster_name: str, endpoint: str, ca_data: str, region: str, aws_profile: str = "") -> str:
    """A kubeconfig for an EKS cluster that authenticates with `aws eks get-token` (no stored token).

    With an AWS profile (the stack's `aws:profile`), the exec credential uses it too (`--profile`
    and AWS_PROFILE): the providers deploy with that profile, so the token must come from it.
    """
    args = ["eks", "get-token", "--cluster-name", cluster_name, "--region", region]
    command: dict[str, Any] = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws", "args": args}
    if aws_profile:
        args += ["--profile", aws_profile]
        command["env"] = [{"name": "AWS_PROFILE", "value": aws_profile}]
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": cluster_name,
        "clusters": [{"name": cluster_name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
        "users": [{"name": cluster_name, "user": {"exec": command}}],
    }, sort_keys=True)


def registry_host(repository_url: str) -> str:
    """`123.dkr.ecr.eu-west-1.amazonaws.com/servedmodel/x` -> the registry host part."""
    return repository_url.split("/", 1)[0]


def docker_healthcheck_test() -> list[str]:
    """The local container's health check: the readiness route, with the image's own Python,
    on the port the server was given (SERVEDMODEL_PORT, 8080 by default)."""
    return ["CMD", "python3", "-c",
            "import os,urllib.request;urllib.request.urlopen('http://127.0.0.1:%s" + READY_PATH + "'"
            f" % os.environ.get('SERVEDMODEL_PORT','{SERVER_PORT}'),timeout=2)"]
