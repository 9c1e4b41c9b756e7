"""Stack config -> one frozen `Settings`, validated before any resource is declared.

`parse_settings` is pure (tested without mocks): it takes the raw values of every key (the
Pulumi.yaml defaults merged with the stack file, as the CLI does) and the set of keys that
were given as secrets, and either returns `Settings` or raises `ConfigError` listing every
problem at once, each naming the key, the value and what is accepted. `load_settings` reads
`pulumi.Config()` into those raw values and turns a `ConfigError` into one `pulumi.RunError`.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import pulumi
from models.zoo import ZOO as _MODEL_ZOO  # name -> factory; importing it loads no torch

NAMESPACE = "servedmodel"

TARGETS = ("docker", "kubernetes")
COMPRESSIONS = ("none", "fp16", "int8")
ZOO = tuple(_MODEL_ZOO)  # the zoo names models.build accepts
AUTOSCALE_METRICS = ("inflight", "queue", "cpu")
SERVICE_TYPES = ("ClusterIP", "LoadBalancer")
AMI_TYPES = ("BOTTLEROCKET_x86_64_NVIDIA", "AL2023_x86_64_NVIDIA")

# NVIDIA GPUs per EC2 instance type, for the node pool capacity check. A type not listed is
# rejected rather than guessed: a wrong count would let a rollout wait forever for a GPU.
GPUS_PER_INSTANCE: dict[str, int] = {
    "g4dn.xlarge": 1, "g4dn.2xlarge": 1, "g4dn.4xlarge": 1, "g4dn.8xlarge": 1,
    "g4dn.16xlarge": 1, "g4dn.12xlarge": 4, "g4dn.metal": 8,
    "g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g5.8xlarge": 1, "g5.16xlarge": 1,
    "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8,
    "g6.xlarge": 1, "g6.2xlarge": 1, "g6.4xlarge": 1, "g6.8xlarge": 1, "g6.16xlarge": 1,
    "g6.12xlarge": 4, "g6.24xlarge": 4, "g6.48xlarge": 8,
    "g6e.xlarge": 1, "g6e.2xlarge": 1, "g6e.4xlarge": 1, "g6e.8xlarge": 1,
    "g6e.16xlarge": 1, "g6e.12xlarge": 4, "g6e.24xlarge": 4, "g6e.48xlarge": 8,
    "p3.2xlarge": 1, "p3.8xlarge": 4, "p3.16xlarge": 8,
    "p4d.24xlarge": 8, "p5.48xlarge": 8,
}

# A rolling update with maxUnavailable 0 starts this many extra pods before stopping old ones.
ROLLOUT_SURGE = 1

# Settings that hold credentials: accepted only as Pulumi secrets (`pulumi config set --secret`).
SECRET_KEYS = ("authToken", "registryPassword", "kubeconfig")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_MAX_NAME = 40  # leaves room for Pulumi's auto-name suffixes and the component suffixes


class ConfigError(ValueError):
    """Every problem found in a stack's config, reported together."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "invalid stack config ({} problem{}):\n".format(len(problems), "" if len(problems) == 1 else "s")
            + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class ModelEntry:
    """One served model: `name` is the endpoint/resource name, `model` what models.build gets."""

    name: str
    model: str
    compression: str


@dataclass(frozen=True)
class Settings:
    """The typed stack config. Field docs and defaults live in Pulumi.yaml / docs/config.md."""

    target: str
    models: tuple[ModelEntry, ...]
    gpu: int
    cpu: str
    memory: str
    replicas: int
    max_replicas: int
    autoscale_metric: str
    target_inflight: int
    target_queue_ms: int
    target_cpu_percent: int
    service_type: str
    allow_load_balancer: bool
    namespace: str
    ingress_namespaces: tuple[str, ...]
    ingress_cidrs: tuple[str, ...]
    priority: int
    drain_seconds: int
    pre_stop_seconds: int
    local_port: int
    cluster_name: str
    node_instance_types: tuple[str, ...]
    node_ami_type: str
    node_min: int
    node_desired: int
    node_max: int
    node_subnet_ids: tuple[str, ...]
    registry: str
    registry_username: str
    keep_versions: int
    protect: bool
    # Secrets are attached by load_settings as secret Outputs; never plain strings here.
    auth_token: Optional[pulumi.Output[str]] = dataclasses.field(default=None, repr=False, compare=False)
    registry_password: Optional[pulumi.Output[str]] = dataclasses.field(default=None, repr=False, compare=False)
    kubeconfig: Optional[pulumi.Output[str]] = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def device(self) -> str:
        """The runtime the image packages: cuda when the replicas get GPUs."""
        return "cuda" if self.gpu > 0 else "cpu"

    @property
    def autoscaled(self) -> bool:
        """An HPA owns the replica count (the Deployment then leaves `replicas` unset)."""
        return self.max_replicas > self.replicas

    @property
    def gpu_node_pool(self) -> bool:
        return self.target == "kubernetes" and self.gpu > 0


# key -> (Settings field, kind). kind drives how load_settings reads pulumi.Config.
_FIELDS: dict[str, tuple[str, str]] = {
    "target": ("target", "str"),
    "gpu": ("gpu", "int"),
    "cpu": ("cpu", "str"),
    "memory": ("memory", "str"),
    "replicas": ("replicas", "int"),
    "maxReplicas": ("max_replicas", "int"),
    "autoscaleMetric": ("autoscale_metric", "str"),
    "targetInflight": ("target_inflight", "int"),
    "targetQueueMs": ("target_queue_ms", "int"),
    "targetCpuPercent": ("target_cpu_percent", "int"),
    "serviceType": ("service_type", "str"),
    "allowLoadBalancer": ("allow_load_balancer", "bool"),
    "namespace": ("namespace", "str"),
    "ingressNamespaces": ("ingress_namespaces", "list"),
    "ingressCidrs": ("ingress_cidrs", "list"),
    "priority": ("priority", "int"),
    "drainSeconds": ("drain_seconds", "int"),
    "preStopSeconds": ("pre_stop_seconds", "int"),
    "localPort": ("local_port", "int"),
    "clusterName": ("cluster_name", "str"),
    "nodeInstanceTypes": ("node_instance_types", "list"),
    "nodeAmiType": ("node_ami_type", "str"),
    "nodeMin": ("node_min", "int"),
    "nodeDesired": ("node_desired", "int"),
    "nodeMax": ("node_max", "int"),
    "nodeSubnetIds": ("node_subnet_ids", "list"),
    "registry": ("registry", "str"),
    "registryUsername": ("registry_username", "str"),
    "keepVersions": ("keep_versions", "int"),
    "protect": ("protect", "bool"),
}
# Read to build `models` (see _parse_models), not Settings fields of their own.
_MODEL_KEYS = {"name": "str", "model": "str", "compression": "str", "models": "object"}

PROJECT_KEYS = tuple(_FIELDS) + ("name", "model", "compression")
STACK_ONLY_KEYS = ("models",) + SECRET_KEYS


def gpus_per_node(instance_types: tuple[str, ...]) -> int:
    """GPUs the smallest of the pool's instance types has (the pool may get any of them)."""
    return min(GPUS_PER_INSTANCE[t] for t in instance_types)


def is_model_ref(model: str) -> bool:
    """A zoo name or a `path/to/file.py:factory` reference."""
    if model in ZOO:
        return True
    path, sep, factory = model.rpartition(":")
    return bool(sep) and path.endswith(".py") and factory.isidentifier()


def _problem(key: str, value: Any, accepted: str) -> str:
    return f"{NAMESPACE}:{key} = {value!r}: {accepted}"


def _check_type(raw: Mapping[str, Any], key: str, kind: str, problems: list[str]) -> Any:
    value = raw.get(key)
    ok = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "list": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
    }[kind]
    if key not in raw:
        problems.append(_problem(key, None, f"missing (a {kind} is required)"))
        return None
    if not ok(value):
        problems.append(_problem(key, value, {"str": "must be a string", "int": "must be an integer",
                                              "bool": "must be true or false",
                                              "list": "must be a list of strings"}[kind]))
        return None
    return tuple(value) if kind == "list" else value


def _parse_models(raw: Mapping[str, Any], problems: list[str]) -> tuple[ModelEntry, ...]:
    """`models` (stack files, several models) or the flat `name`/`model`/`compression` keys.

    The served name is given, never derived from the model: changing only the model must roll
    the same Deployment out, not rename (replace) every resource.
    """
    entries = raw.get("models")
    if entries is None:
        entries = [{"name": raw.get("name"), "model": raw.get("model"), "compression": raw.get("compression")}]
        key_of = lambda i, field: field  # noqa: E731 - the flat keys
    else:
        if not isinstance(entries, list) or not entries:
            problems.append(_problem("models", entries, "must be a non-empty list of {name, model, compression}"))
            return ()
        key_of = lambda i, field: f"models[{i}].{field}"  # noqa: E731
    default_compression = raw.get("compression")
    out: list[ModelEntry] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(_problem(f"models[{i}]", entry, "must be an object {name, model, compression}"))
            continue
        unknown = sorted(set(entry) - {"name", "model", "compression"})
        if unknown:
            problems.append(_problem(f"models[{i}]", entry, f"unknown field(s) {unknown}; accepted: name, model, compression"))
        model, name = entry.get("model"), entry.get("name")
        compression = entry.get("compression", default_compression)
        ok = True
        if not isinstance(model, str) or not is_model_ref(model):
            problems.append(_problem(key_of(i, "model"), model,
                                     f"unknown model; accepted: one of {', '.join(ZOO)} or 'path/to/file.py:factory'"))
            ok = False
        if compression not in COMPRESSIONS:
            problems.append(_problem(key_of(i, "compression"), compression, f"accepted: one of {', '.join(COMPRESSIONS)}"))
            ok = False
        if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > _MAX_NAME:
            problems.append(_problem(key_of(i, "name"), name,
                                     f"must be a DNS label (lowercase letters, digits, '-') of at most {_MAX_NAME} characters"))
            ok = False
        if ok:
            out.append(ModelEntry(name=name, model=model, compression=compression))
    names = [e.name for e in out]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(_problem("models", dup, "each served name must be unique"))
    return tuple(out)


def parse_settings(raw: Mapping[str, Any], secret_keys: frozenset[str] | set[str] = frozenset()) -> Settings:
    """Validate raw config values (defaults already merged) into Settings, or raise ConfigError.

    `raw` maps keys without the namespace (e.g. "maxReplicas") to their values; `secret_keys`
    names the keys that were set as secrets.
    """
    problems: list[str] = []
    values = {field: _check_type(raw, key, kind, problems) for key, (field, kind) in _FIELDS.items()}
    models = _parse_models(raw, problems)
    v = values

    def bad(key: str, accepted: str) -> None:
        problems.append(_problem(key, raw.get(key), accepted))

    if v["target"] is not None and v["target"] not in TARGETS:
        bad("target", f"accepted: one of {', '.join(TARGETS)}")
    kubernetes = v["target"] == "kubernetes"
    for key in ("gpu", "priority", "drainSeconds", "preStopSeconds"):
        if v[_FIELDS[key][0]] is not None and v[_FIELDS[key][0]] < 0:
            bad(key, "must be 0 or more")
    for key in ("replicas", "maxReplicas", "targetInflight", "targetQueueMs", "keepVersions"):
        if v[_FIELDS[key][0]] is not None and v[_FIELDS[key][0]] < 1:
            bad(key, "must be 1 or more")
    if v["target_cpu_percent"] is not None and not 1 <= v["target_cpu_percent"] <= 100:
        bad("targetCpuPercent", "must be between 1 and 100")
    if v["replicas"] and v["max_replicas"] and v["replicas"] > v["max_replicas"]:
        bad("replicas", f"must not exceed servedmodel:maxReplicas ({v['max_replicas']}); min > max replicas")
    for key in ("cpu", "memory"):
        if v[key] is not None and not _QUANTITY.match(v[key]):
            bad(key, "must be a Kubernetes quantity such as 500m, 2, 512Mi or 4Gi")
    if v["autoscale_metric"] is not None and v["autoscale_metric"] not in AUTOSCALE_METRICS:
        bad("autoscaleMetric", f"accepted: one of {', '.join(AUTOSCALE_METRICS)}")
    if v["service_type"] is not None and v["service_type"] not in SERVICE_TYPES:
        bad("serviceType", f"accepted: one of {', '.join(SERVICE_TYPES)}")
    if v["service_type"] == "LoadBalancer" and v["allow_load_balancer"] is False:
        bad("serviceType", "a LoadBalancer is public: set servedmodel:allowLoadBalancer to true to opt in, or use ClusterIP")
    for key in ("namespace",):
        if v[key] is not None and not _DNS_LABEL.match(v[key]):
            bad(key, "must be a DNS label (lowercase letters, digits, '-')")
    for ns in v["ingress_namespaces"] or ():
        if not _DNS_LABEL.match(ns):
            problems.append(_problem("ingressNamespaces", ns, "each entry must be a namespace name (DNS label)"))
    for cidr in v["ingress_cidrs"] or ():
        try:
            ipaddress.ip_network(cidr)
        except ValueError:
            problems.append(_problem("ingressCidrs", cidr, "each entry must be a CIDR block such as 10.0.0.0/16"))
    if v["local_port"] is not None and not 1024 <= v["local_port"] <= 65535 - max(len(models), 1):
        bad("localPort", "must be a port between 1024 and 65535 (one port per model)")

    if v["target"] == "docker" and v["gpu"]:
        bad("gpu", "GPUs are served on the kubernetes target only; use 0 on the docker target")
    if kubernetes and not v["cluster_name"]:
        bad("clusterName", "the kubernetes target needs the name of an existing EKS cluster")
    if v["registry_username"] and "registryPassword" not in raw:
        bad("registryUsername", "needs the secret servedmodel:registryPassword (pulumi config set --secret)")

    for key in SECRET_KEYS:
        if key in raw and key not in secret_keys:
            problems.append(f"{NAMESPACE}:{key} = [given in plain text]: must be a secret; "
                            f"run `pulumi config set --secret {NAMESPACE}:{key} ...`")

    if kubernetes and v["gpu"]:
        types = v["node_instance_types"] or ()
        unknown = [t for t in types if t not in GPUS_PER_INSTANCE]
        if not types or unknown:
            bad("nodeInstanceTypes", f"GPU instance types only; accepted: {', '.join(GPUS_PER_INSTANCE)}")
        if v["node_ami_type"] is not None and v["node_ami_type"] not in AMI_TYPES:
            bad("nodeAmiType", f"accepted: one of {', '.join(AMI_TYPES)}")
        nmin, ndes, nmax = v["node_min"], v["node_desired"], v["node_max"]
        if None not in (nmin, ndes, nmax):
            if nmin < 0 or nmax < 1 or not nmin <= ndes <= nmax:
                bad("nodeDesired", f"need 0 <= nodeMin ({nmin}) <= nodeDesired ({ndes}) <= nodeMax ({nmax}), nodeMax >= 1")
            elif types and not unknown and v["max_replicas"]:
                per_node = gpus_per_node(types)
                if per_node < v["gpu"]:
                    bad("nodeInstanceTypes", f"each node must hold one replica's {v['gpu']} GPU(s); "
                                             f"the smallest type has {per_node}")
                else:
                    # Pods cannot span nodes: count whole replicas per node.
                    fit = nmax * (per_node // v["gpu"])
                    need = v["max_replicas"] + ROLLOUT_SURGE
                    if fit < need:
                        bad("nodeMax", f"{nmax} node(s) fit {fit} replica(s) of {v['gpu']} GPU(s); "
                                       f"maxReplicas ({v['max_replicas']}) + {ROLLOUT_SURGE} rollout surge "
                                       f"(maxUnavailable 0) need {need}; raise nodeMax to at least "
                                       f"{-(-need // (per_node // v['gpu']))}")

    if problems:
        raise ConfigError(problems)
    return Settings(models=models, **values)


def _read_raw(cfg: pulumi.Config) -> tuple[dict[str, Any], set[str]]:
    """Every key the stack (with Pulumi.yaml defaults) sets, typed as declared."""
    raw: dict[str, Any] = {}
    problems: list[str] = []
    kinds = {key: kind for key, (_, kind) in _FIELDS.items()} | _MODEL_KEYS
    for key, kind in kinds.items():
        try:
            if kind in ("list", "object"):
                value = cfg.get_object(key)
            elif kind == "int":
                value = cfg.get_int(key)
            elif kind == "bool":
                value = cfg.get_bool(key)
            else:
                value = cfg.get(key)
        except (pulumi.ConfigTypeError, ValueError) as exc:
            accepted = {"list": "a list of strings", "object": "a list of objects", "int": "an integer",
                        "bool": "true or false"}.get(kind, "a string")
            problems.append(_problem(key, cfg.get(key), f"must be {accepted}"))
            continue
        if value is not None:
            raw[key] = value
    secret_keys: set[str] = set()
    for key in SECRET_KEYS:
        full = f"{NAMESPACE}:{key}"
        if pulumi.runtime.is_config_secret(full):
            secret_keys.add(key)
            raw[key] = "[secret]"
        elif cfg.get(key) is not None:
            raw[key] = "[plain]"
    if problems:
        raise ConfigError(problems)
    return raw, secret_keys


def load_settings(cfg: Optional[pulumi.Config] = None) -> Settings:
    """Read and validate the stack config; a bad config stops the program with one RunError."""
    cfg = cfg or pulumi.Config(NAMESPACE)
    try:
        raw, secret_keys = _read_raw(cfg)
        settings = parse_settings(raw, secret_keys)
    except ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
    return dataclasses.replace(
        settings,
        auth_token=cfg.get_secret("authToken"),
        registry_password=cfg.get_secret("registryPassword"),
        kubeconfig=cfg.get_secret("kubeconfig"),
    )
