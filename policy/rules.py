"""The policy pack's rules as plain functions (no pulumi_policy import: tests call them directly).

Each rule takes a resource's type token and its properties as the engine sees them (Kubernetes
objects in camelCase) and returns violation messages, empty when the resource passes.
Properties that are unknown during a preview (not yet computed) are never reported.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

GPU = "nvidia.com/gpu"
LOAD_BALANCER_OPT_IN = "servedmodel.io/allow-load-balancer"
# The AWS Load Balancer Controller's annotations for TLS at an NLB (components/specs.py sets them).
LBC = "service.beta.kubernetes.io/aws-load-balancer-"
# How the server knows its callers (docs/architecture.md, section 3): a bearer token (the client
# "default"), the clients file (named clients, digests of their tokens), or OIDC (the issuer).
AUTH_ENV = ("SERVEDMODEL_AUTH_TOKEN", "SERVEDMODEL_AUTH_TOKEN_FILE", "SERVEDMODEL_CLIENTS_FILE",
            "SERVEDMODEL_OIDC_ISSUER")
# What a served model's pods say of its encryption (components/specs.py sets them on the pod
# template, and as labels on a local container): the mode, and with kms the key's ARN.
VERSION_ANNOTATION = "servedmodel.io/model-version"
ENCRYPTION_ANNOTATION = "servedmodel.io/model-encryption"
KEY_ANNOTATION = "servedmodel.io/model-key"
ENCRYPTED = ("kms", "local")
# The stacks where an unencrypted model must never ship (the pack's config `stacks` overrides).
PROTECTED_STACKS = ("prod",)

# digest-pinned: repo@sha256:<64 hex>; version tags: a content hash (our model versions) or a
# semantic version. Anything else (latest, main, stable, no tag) can move under a running pod.
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
_VERSION_TAG = re.compile(r"^(?:[0-9a-f]{12,64}|v?\d+\.\d+(?:\.\d+)?(?:[-+][0-9A-Za-z.-]+)?)$")

_POD_SPEC_PATHS = {
    "kubernetes:apps/v1:Deployment": ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:ReplicaSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "kubernetes:core/v1:Pod": ("spec",),
    # Argo Rollouts' Rollout (servedmodel:rollout canary) carries a full pod template.
    "kubernetes:argoproj.io/v1alpha1:Rollout": ("spec", "template", "spec"),
}


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: Callable[[str, dict[str, Any]], list[str]]


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def pod_spec(resource_type: str, props: dict[str, Any]) -> dict[str, Any] | None:
    path = _POD_SPEC_PATHS.get(resource_type)
    spec = _get(props, *path) if path else None
    return spec if isinstance(spec, dict) else None


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers"):
        for c in spec.get(field) or []:
            if isinstance(c, dict):
                yield f"{field[:-1]} {c.get('name', '?')!r}", c


def is_pinned_image(ref: str) -> bool:
    """A digest or a version tag; never latest, a branch name or no tag."""
    if _DIGEST.search(ref):
        return True
    name = ref.rsplit("/", 1)[-1]
    if ":" not in name:
        return False
    return bool(_VERSION_TAG.match(name.rsplit(":", 1)[1]))


# The tag each build of a stack also pushes to record which version its build resource last
# pushed (components/model_image.py BUILD_MARKER_PREFIX; tests/policy keeps the two equal). It
# moves by design and nothing runs it: allowed on a build beside the version tag it records.
BUILD_MARKER_PREFIX = "servedmodel-build-"


def _is_build_marker(ref: str) -> bool:
    name = ref.rsplit("/", 1)[-1]
    return ":" in name and name.rsplit(":", 1)[1].startswith(BUILD_MARKER_PREFIX)


def no_mutable_tags(resource_type: str, props: dict[str, Any]) -> list[str]:
    images: list[tuple[str, Any]] = []
    spec = pod_spec(resource_type, props)
    if spec is not None:
        images = [(where, c.get("image")) for where, c in _containers(spec)]
    elif resource_type == "docker-build:index:Image":
        tags = [t for t in props.get("tags") or [] if isinstance(t, str)]
        versions = [t for t in tags if is_pinned_image(t)]
        images = [("tag", t) for t in tags if not (versions and _is_build_marker(t))]
    elif resource_type == "docker:index/container:Container":
        images = [("image", props.get("image"))]
    return [f"{where}: image {ref!r} uses a mutable tag; use a digest (@sha256:...) or a version tag"
            for where, ref in images if isinstance(ref, str) and not is_pinned_image(ref)]


def requests_and_limits(resource_type: str, props: dict[str, Any]) -> list[str]:
    spec = pod_spec(resource_type, props)
    out = []
    for where, c in _containers(spec or {}):
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if not (res.get(kind) or {}).get(r)]
            if missing:
                out.append(f"{where}: resources.{kind} must set {' and '.join(missing)}")
    return out


def gpu_limit_equals_request(resource_type: str, props: dict[str, Any]) -> list[str]:
    spec = pod_spec(resource_type, props)
    out = []
    for where, c in _containers(spec or {}):
        res = c.get("resources") or {}
        req, lim = (res.get("requests") or {}).get(GPU), (res.get("limits") or {}).get(GPU)
        if (req is not None or lim is not None) and str(req) != str(lim):
            out.append(f"{where}: {GPU} request ({req}) must equal its limit ({lim})")
    return out


def probes_present(resource_type: str, props: dict[str, Any]) -> list[str]:
    if resource_type in ("kubernetes:batch/v1:Job", "kubernetes:batch/v1:CronJob"):
        return []  # run-to-completion pods are not served
    spec = pod_spec(resource_type, props)
    out = []
    for where, c in _containers(spec or {}):
        if where.startswith("initContainer"):
            continue
        missing = [p for p in ("readinessProbe", "livenessProbe") if not c.get(p)]
        if missing:
            out.append(f"{where}: {' and '.join(missing)} missing")
    return out


def hardened_security_context(resource_type: str, props: dict[str, Any]) -> list[str]:
    spec = pod_spec(resource_type, props)
    if spec is None:
        return []
    pod_sc = spec.get("securityContext") or {}
    out = []
    for where, c in _containers(spec):
        sc = c.get("securityContext") or {}
        problems = []
        if not (sc.get("runAsNonRoot") if "runAsNonRoot" in sc else pod_sc.get("runAsNonRoot")):
            problems.append("runAsNonRoot true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append("allowPrivilegeEscalation false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append("readOnlyRootFilesystem true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append("capabilities.drop [ALL]")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append("seccompProfile RuntimeDefault")
        if spec.get("hostNetwork") or spec.get("hostPID") or sc.get("privileged"):
            problems.append("no privileged/host namespaces")
        if problems:
            out.append(f"{where}: securityContext needs {', '.join(problems)}")
    return out


def no_unapproved_load_balancer(resource_type: str, props: dict[str, Any]) -> list[str]:
    if resource_type != "kubernetes:core/v1:Service" or _get(props, "spec", "type") != "LoadBalancer":
        return []
    if (_get(props, "metadata", "annotations") or {}).get(LOAD_BALANCER_OPT_IN) == "true":
        return []
    return [f"Service of type LoadBalancer is public: opt in explicitly with the annotation "
            f"{LOAD_BALANCER_OPT_IN}: \"true\" (servedmodel:allowLoadBalancer), or use ClusterIP"]


def load_balancer_terminates_tls(resource_type: str, props: dict[str, Any]) -> list[str]:
    """A public Service: an NLB of the AWS Load Balancer Controller whose every port is a TLS
    listener with a certificate. (The in-tree controller's Classic ELB speaks plain HTTP.)"""
    if resource_type != "kubernetes:core/v1:Service" or _get(props, "spec", "type") != "LoadBalancer":
        return []
    annotations = _get(props, "metadata", "annotations") or {}
    problems = []
    if annotations.get(LBC + "type") not in ("external", "nlb") and not _get(props, "spec", "loadBalancerClass"):
        problems.append(f"{LBC}type: external (an NLB of the AWS Load Balancer Controller)")
    if not annotations.get(LBC + "ssl-cert"):
        problems.append(f"{LBC}ssl-cert: an ACM certificate ARN (servedmodel:tlsCertificateArn)")
    ssl_ports = {p.strip() for p in str(annotations.get(LBC + "ssl-ports", "")).split(",") if p.strip()}
    ports = [p for p in _get(props, "spec", "ports") or [] if isinstance(p, dict)]
    clear = [str(p.get("name") or p.get("port")) for p in ports
             if "*" not in ssl_ports and not {str(p.get("name")), str(p.get("port"))} & ssl_ports]
    if clear:
        problems.append(f"{LBC}ssl-ports covering every port (in clear text now: {', '.join(clear)})")
    if not problems:
        return []
    return ["Service of type LoadBalancer is public and must terminate TLS; it needs " + "; ".join(problems)]


def _selects(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def stack_of(urn: str) -> str:
    """The stack a resource URN names: `urn:pulumi:<stack>::<project>::<type>::<name>`."""
    head = urn.split("::", 1)[0]
    return head.rsplit(":", 1)[-1] if head.startswith("urn:pulumi:") else ""


def public_endpoint_requires_auth(resources: list[tuple[str, dict[str, Any]]], stack: str = "") -> list[str]:
    """Stack rule: every workload a LoadBalancer Service selects knows its callers (its server
    container reads a bearer token, the clients file or an OIDC issuer). Needs the whole stack:
    the identity is on the Deployment, the exposure on the Service."""
    out = []
    workloads = [(t, props, spec) for t, props in resources if (spec := pod_spec(t, props)) is not None]
    for t, props in resources:
        if t != "kubernetes:core/v1:Service" or _get(props, "spec", "type") != "LoadBalancer":
            continue
        selector = _get(props, "spec", "selector") or {}
        if not isinstance(selector, dict):
            continue  # unknown during a preview
        name = _get(props, "metadata", "name") or "?"
        for wt, wprops, spec in workloads:
            template_labels = _get(wprops, "spec", "template", "metadata", "labels") or {}
            if not _selects(selector, template_labels):
                continue
            env_names = {e.get("name") for _, c in _containers(spec) for e in c.get("env") or [] if isinstance(e, dict)}
            if not env_names & set(AUTH_ENV):
                out.append(f"LoadBalancer Service {name!r} exposes {wt.rsplit(':', 1)[-1]} "
                           f"{_get(wprops, 'metadata', 'name') or '?'!r} without a client identity "
                           f"({' or '.join(AUTH_ENV)}; servedmodel:authToken, servedmodel:clients or "
                           "servedmodel:oidcIssuer)")
    return out


def _labels(props: dict[str, Any]) -> dict[Any, Any]:
    """A docker container's labels ([{label, value}]) as a dict."""
    return {item.get("label"): item.get("value") for item in props.get("labels") or [] if isinstance(item, dict)}


def model_encrypted_in_protected_stacks(resources: list[tuple[str, dict[str, Any]]], stack: str,
                                        protected: tuple[str, ...] = PROTECTED_STACKS) -> list[str]:
    """Stack rule (issue 21): in a protected stack (prod), every served model is encrypted (kms,
    or a local key) and a kms model names its key; every ECR repository is encrypted with a
    customer-managed key (the model's), not ECR's AWS-managed one. A value unknown during a
    preview (a key not created yet) is not reported."""
    if stack not in protected:
        return []
    out = []
    for t, props in resources:
        name = _get(props, "metadata", "name") or _get(props, "name") or "?"
        spec = pod_spec(t, props)
        if spec is not None:
            annotations = _get(props, "spec", "template", "metadata", "annotations") or {}
            if not isinstance(annotations, dict) or VERSION_ANNOTATION not in annotations:
                continue  # not a served model's workload (or unknown)
            where = f"{t.rsplit(':', 1)[-1]} {name!r}"
        elif t == "docker:index/container:Container":
            annotations = _labels(props)
            if not any(isinstance(e, str) and e.startswith("SERVEDMODEL_") for e in props.get("envs") or []):
                continue
            where = f"container {name!r}"
        elif t == "aws:ecr/repository:Repository":
            configs = [c for c in props.get("encryptionConfigurations") or [] if isinstance(c, dict)]
            if not configs:
                out.append(f"ECR repository {name!r} in stack {stack!r} is not encrypted with a KMS key; "
                           "servedmodel:modelEncryption kms encrypts it with the model's key")
            elif configs[0].get("kmsKey") == "" or "kmsKey" not in configs[0]:
                out.append(f"ECR repository {name!r} in stack {stack!r} uses ECR's AWS-managed key; "
                           "servedmodel:modelEncryption kms encrypts it with the model's own key")
            continue
        else:
            continue
        mode = annotations.get(ENCRYPTION_ANNOTATION)
        if mode not in ENCRYPTED:
            out.append(f"{where} in stack {stack!r} serves a model in clear ({ENCRYPTION_ANNOTATION}: {mode!r}); "
                       "set servedmodel:modelEncryption kms")
        elif mode == "kms" and KEY_ANNOTATION in annotations and annotations[KEY_ANNOTATION] == "":
            out.append(f"{where} in stack {stack!r} is kms-encrypted but names no key ({KEY_ANNOTATION})")
    return out


RULES: tuple[Rule, ...] = (
    Rule("no-mutable-image-tags", "Images are pinned by digest or a version tag, never latest or a branch.",
         no_mutable_tags),
    Rule("requests-and-limits", "Every container sets CPU and memory requests and limits.", requests_and_limits),
    Rule("gpu-limit-equals-request", "nvidia.com/gpu request equals its limit.", gpu_limit_equals_request),
    Rule("probes-present", "Served containers have readiness and liveness probes.", probes_present),
    Rule("hardened-security-context", "Non-root, read-only root filesystem, no privilege escalation, "
         "all capabilities dropped, RuntimeDefault seccomp.", hardened_security_context),
    Rule("no-load-balancer-without-opt-in", "A LoadBalancer Service needs an explicit opt-in annotation.",
         no_unapproved_load_balancer),
    Rule("load-balancer-terminates-tls", "A LoadBalancer Service is an NLB terminating TLS on every port "
         "with an ACM certificate (AWS Load Balancer Controller annotations).", load_balancer_terminates_tls),
)


@dataclass(frozen=True)
class StackRule:
    name: str
    description: str
    check: Callable[..., list[str]]
    """check(resources [(type, props)], stack name[, protected stacks]) -> messages."""


STACK_RULES: tuple[StackRule, ...] = (
    StackRule("public-endpoint-requires-auth", "Workloads behind a LoadBalancer Service know their callers: a "
              "bearer token, named clients or OIDC.", public_endpoint_requires_auth),
    StackRule("model-encrypted-in-protected-stacks", "In a protected stack (prod; the pack's config `stacks`), every "
              "served model is encrypted and its ECR repository uses the model's KMS key.",
              model_encrypted_in_protected_stacks),
)


def violations(resource_type: str, props: dict[str, Any]) -> dict[str, list[str]]:
    """Every rule's messages for one resource (rules with none left out)."""
    found = {rule.name: rule.check(resource_type, props) for rule in RULES}
    return {name: msgs for name, msgs in found.items() if msgs}
