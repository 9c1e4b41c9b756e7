"""Stack config -> the grouped `ServedModelArgs` of every model, built once and validated.

`parse_settings` is pure (tested without mocks): it takes the raw values of every key (the
Pulumi.yaml defaults merged with the stack file, as the CLI does) and the values of the keys
that were given as secrets, checks the types, then builds the args groups of components/args.py
(which hold the rules) and returns `Settings`, or raises `ConfigError` listing every problem at
once, each naming the stack key, the value and what is accepted. `load_settings` reads
`pulumi.Config()` into those raw values and turns a `ConfigError` into one `pulumi.RunError`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import pulumi

from .args import (AMI_TYPES, AUTOSCALE_METRICS, GPUS_PER_INSTANCE, ROLLOUT_SURGE, SERVICE_TYPES,
                             TARGETS, ZOO, ArgsError, AutoscalingArgs, ElasticArgs, ModelArgs, MonitoringArgs,
                             NetworkArgs, NodePoolArgs, Problem, RegistryArgs, ResourcesArgs, RolloutArgs,
                             ServedModelArgs, ServerArgs, canary_scaling_problems, cross_group_problems,
                             delivery_problems, elastic_problems, scaling_source_problems)
from servedmodel.models.spec import COMPRESSIONS

NAMESPACE = "servedmodel"

# Settings that hold credentials: accepted only as Pulumi secrets (`pulumi config set --secret`).
SECRET_KEYS = ("authToken", "registryPassword", "kubeconfig")

__all__ = ["AMI_TYPES", "AUTOSCALE_METRICS", "COMPRESSIONS", "ConfigError", "GPUS_PER_INSTANCE", "NAMESPACE",
           "PROJECT_KEYS", "ROLLOUT_SURGE", "SECRET_KEYS", "SERVICE_TYPES", "STACK_ONLY_KEYS", "Settings", "TARGETS",
           "ZOO", "load_settings", "parse_settings"]


class ConfigError(ValueError):
    """Every problem found in a stack's config, reported together."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "invalid stack config ({} problem{}):\n".format(len(problems), "" if len(problems) == 1 else "s")
            + "\n".join(f"  - {p}" for p in problems)
        )


@dataclass(frozen=True)
class Settings:
    """The typed stack config: the target, the cluster, and one ServedModelArgs per model.

    Field docs and defaults live in Pulumi.yaml / docs/config.md.
    """

    target: str
    cluster_name: str
    served: tuple[ServedModelArgs, ...]
    aws_profile: str = ""
    # A given kubeconfig is a secret Output; never a plain string here.
    kubeconfig: Optional[pulumi.Input[str]] = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def models(self) -> tuple[ModelArgs, ...]:
        return tuple(a.model for a in self.served)


# Stack key -> (ServedModelArgs field path, kind). The path names the group and its field; the
# kind drives how load_settings reads pulumi.Config. Problems the args report are written back
# with these keys, so the rules live in components/args.py only.
_FIELDS: dict[str, tuple[str, str]] = {
    "target": ("target", "str"),
    # Every model's metric allowance (issue 13); "" keeps each spec's own (ModelArgs.max_metric_drop).
    "maxMetricDrop": ("model.max_metric_drop", "optional_ratio"),
    "gpu": ("resources.gpu", "int"),
    "cpu": ("resources.cpu", "str"),
    "memory": ("resources.memory", "str"),
    "priority": ("resources.priority", "int"),
    "replicas": ("autoscaling.replicas", "int"),
    "maxReplicas": ("autoscaling.max_replicas", "int"),
    "autoscaleMetric": ("autoscaling.metric", "str"),
    "targetInflight": ("autoscaling.target_inflight", "int"),
    "targetQueueMs": ("autoscaling.target_queue_ms", "int"),
    "targetCpuPercent": ("autoscaling.target_cpu_percent", "int"),
    "serviceType": ("network.service_type", "str"),
    "allowLoadBalancer": ("network.allow_load_balancer", "bool"),
    "namespace": ("network.namespace", "str"),
    "ingressNamespaces": ("network.ingress_namespaces", "list"),
    "ingressCidrs": ("network.ingress_cidrs", "list"),
    "localPort": ("network.local_port", "int"),
    "tlsCertificateArn": ("network.tls_certificate_arn", "str"),
    "grpcPort": ("network.grpc_port", "int"),
    "drainSeconds": ("server.drain_seconds", "int"),
    "preStopSeconds": ("server.pre_stop_seconds", "int"),
    "maxBatchSize": ("server.max_batch_size", "int"),
    "maxQueueDelayMs": ("server.max_queue_delay_ms", "int"),
    "maxQueueSize": ("server.max_queue_size", "int"),
    "queueTimeoutMs": ("server.queue_timeout_ms", "int"),
    "clusterName": ("node_pool.cluster_name", "str"),
    "nodeInstanceTypes": ("node_pool.instance_types", "list"),
    "nodeAmiType": ("node_pool.ami_type", "str"),
    "nodeMin": ("node_pool.min_size", "int"),
    "nodeDesired": ("node_pool.desired_size", "int"),
    "nodeMax": ("node_pool.max_size", "int"),
    "nodeSubnetIds": ("node_pool.subnet_ids", "list"),
    "registry": ("registry.url", "str"),
    "registryUsername": ("registry.username", "str"),
    "keepVersions": ("registry.keep_versions", "int"),
    "protect": ("protect", "bool"),
    "rollout": ("rollout.strategy", "str"),
    "canarySteps": ("rollout.steps", "list"),
    "analysisInterval": ("rollout.analysis_interval", "str"),
    "analysisCount": ("rollout.analysis_count", "int"),
    "analysisFailureLimit": ("rollout.analysis_failure_limit", "int"),
    "analysisMaxFailureRatio": ("rollout.max_failure_ratio", "ratio"),
    "analysisMaxP99LatencyMs": ("rollout.max_p99_latency_ms", "int"),
    "analysisMaxShedRatio": ("rollout.max_shed_ratio", "ratio"),
    "monitoring": ("monitoring.mode", "str"),
    "monitoringLabels": ("monitoring.labels", "list"),
    "scrapeInterval": ("monitoring.scrape_interval", "str"),
    "latencySloMs": ("monitoring.latency_slo_ms", "int"),
    "alertFailureRatio": ("monitoring.alert_failure_ratio", "ratio"),
    "alertShedRatio": ("monitoring.alert_shed_ratio", "ratio"),
    "alertQueueP99Ms": ("monitoring.alert_queue_p99_ms", "int"),
    "runbookUrl": ("monitoring.runbook_url", "str"),
    # Elastic GPU capacity (issue 11): components/args.py ElasticArgs.
    "nodeProvisioner": ("elastic.node_provisioner", "str"),
    "autoscaler": ("elastic.autoscaler", "str"),
    "minReplicas": ("elastic.min_replicas", "int"),
    "kedaHttp": ("elastic.keda_http", "bool"),
    "capacityTypes": ("elastic.capacity_types", "list"),
    "gpuLimit": ("elastic.gpu_limit", "int"),
    "consolidationPolicy": ("elastic.consolidation_policy", "str"),
    "consolidateAfter": ("elastic.consolidate_after", "str"),
    "disruptionBudgetNodes": ("elastic.disruption_budget_nodes", "str"),
    "karpenterNodeRole": ("elastic.karpenter_node_role", "str"),
    "karpenterAmiAlias": ("elastic.karpenter_ami_alias", "str"),
    "karpenterSubnetIds": ("elastic.karpenter_subnet_ids", "list"),
    "karpenterSecurityGroupIds": ("elastic.karpenter_security_group_ids", "list"),
    "kedaNamespace": ("elastic.keda_namespace", "str"),
    "prometheusUrl": ("elastic.prometheus_url", "str"),
    "kedaPollingSeconds": ("elastic.keda_polling_seconds", "int"),
    "kedaCooldownSeconds": ("elastic.keda_cooldown_seconds", "int"),
    "pullBandwidthMBps": ("elastic.pull_bandwidth_mbps", "int"),
    "nodeProvisionSeconds": ("elastic.node_provision_seconds", "int"),
}
# 0 in the stack means "not set": the server's (or the model manifest's) own default applies,
# so no default of the server is restated in the stack or in components/.
_ZERO_IS_UNSET = ("maxBatchSize", "maxQueueDelayMs", "maxQueueSize", "queueTimeoutMs")
# One Prometheus serves both KEDA's triggers and the canary analysis: one key, two args fields.
_SHARED_PROMETHEUS = ("elastic.prometheus_url", "rollout.prometheus_address")
# Secrets become args fields too (their values come from the secret config, never from `raw`).
_SECRET_FIELDS = {"authToken": "network.auth_token", "registryPassword": "registry.password"}
# Read to build each ModelArgs (see _model_entries), not groups of their own.
_MODEL_KEYS = {"name": "str", "model": "str", "compression": "str", "models": "object"}
_MODEL_FIELDS = {"served_name": "name", "model": "model", "compression": "compression"}

PROJECT_KEYS = tuple(_FIELDS) + ("name", "model", "compression")
STACK_ONLY_KEYS = ("models",) + SECRET_KEYS
_KEY_OF_PATH = ({path: key for key, (path, _) in _FIELDS.items()} | {p: k for k, p in _SECRET_FIELDS.items()}
                | {_SHARED_PROMETHEUS[1]: "prometheusUrl"})


def _problem(key: str, value: Any, accepted: str) -> str:
    return f"{NAMESPACE}:{key} = {value!r}: {accepted}"


def _namer(model_key: Callable[[str], str]) -> Callable[[str], str]:
    """Args field path -> the stack key that sets it (model fields: the flat or models[i] key)."""
    def name_of(path: str) -> str:
        group, _, name = path.partition(".")
        if group == "model" and name in _MODEL_FIELDS:
            return f"{NAMESPACE}:{model_key(_MODEL_FIELDS[name])}"
        return f"{NAMESPACE}:{_KEY_OF_PATH.get(path, path)}"
    return name_of


def _check_type(raw: Mapping[str, Any], key: str, kind: str, problems: list[str]) -> Any:
    value = raw.get(key)
    ok = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "list": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
        # Pulumi.yaml has no number type: a share is a string such as "0.01".
        "ratio": lambda v: isinstance(v, str) and _float_or_none(v) is not None,
        # The same, where the empty string means "not set".
        "optional_ratio": lambda v: isinstance(v, str) and (not v.strip() or _float_or_none(v) is not None),
    }[kind]
    if key not in raw:
        problems.append(_problem(key, None, f"missing (a {kind} is required)"))
        return None
    if not ok(value):
        problems.append(_problem(key, value, {"str": "must be a string", "int": "must be an integer",
                                              "bool": "must be true or false",
                                              "list": "must be a list of strings",
                                              "ratio": "must be a decimal number in a string, such as \"0.01\"",
                                              "optional_ratio": "must be a decimal number in a string, such as "
                                                                "\"0.01\", or \"\" (unset)"}[kind]))
        return None
    if kind == "ratio":
        return _float_or_none(value)
    if kind == "optional_ratio":
        return _float_or_none(value) if value.strip() else None
    return tuple(value) if kind == "list" else value


def _float_or_none(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _model_entries(raw: Mapping[str, Any], problems: list[str]) -> list[tuple[dict[str, Any], Callable[[str], str]]]:
    """`models` (stack files, several models) or the flat `name`/`model`/`compression` keys, as
    ModelArgs keyword arguments with the function that names each of their keys.

    The served name is given, never derived from the model: changing only the model must roll
    the same Deployment out, not rename (replace) every resource.
    """
    entries = raw.get("models")
    default_compression = raw.get("compression")
    if entries is None:
        flat = {"served_name": raw.get("name"), "model": raw.get("model"), "compression": default_compression}
        return [(flat, lambda field: field)]
    if not isinstance(entries, list) or not entries:
        problems.append(_problem("models", entries, "must be a non-empty list of {name, model, compression}"))
        return []
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(_problem(f"models[{i}]", entry, "must be an object {name, model, compression}"))
            continue
        unknown = sorted(set(entry) - {"name", "model", "compression"})
        if unknown:
            problems.append(_problem(f"models[{i}]", entry, f"unknown field(s) {unknown}; accepted: name, model, compression"))
        kwargs = {"served_name": entry.get("name"), "model": entry.get("model"),
                  "compression": entry.get("compression", default_compression)}
        out.append((kwargs, lambda field, i=i: f"models[{i}].{field}"))
    return out


def _build(cls: type, kwargs: dict[str, Any], name_of: Callable[[str], str], problems: list[str]) -> Any:
    """cls(**kwargs), or None with its problems written in stack keys."""
    try:
        return cls(**kwargs)
    except ArgsError as exc:
        problems.extend(p.render(name_of) for p in exc.problems)
        return None


def parse_settings(raw: Mapping[str, Any], secrets: Mapping[str, pulumi.Input[str]] | None = None,
                   build_root: Path = Path("build")) -> Settings:
    """Validate raw config values (defaults already merged) into Settings, or raise ConfigError.

    `raw` maps keys without the namespace (e.g. "maxReplicas") to their values; a secret key
    present in `raw` was given (its value there is a marker); `secrets` holds the values of the
    keys given as secrets. Each model's build context goes to `build_root/<served name>`.
    """
    secrets = dict(secrets or {})
    problems: list[str] = []
    typed = {key: _check_type(raw, key, kind, problems) for key, (_, kind) in _FIELDS.items()}
    entries = _model_entries(raw, problems)
    stack_names = _namer(lambda field: field)

    for key in SECRET_KEYS:
        if key in raw and key not in secrets:
            problems.append(f"{NAMESPACE}:{key} = [given in plain text]: must be a secret; "
                            f"run `pulumi config set --secret {NAMESPACE}:{key} ...`")

    # Group the typed values by args group; a value of the wrong type is left to its default
    # (its problem is reported already).
    groups: dict[str, dict[str, Any]] = {}
    for key, (path, _) in _FIELDS.items():
        group, _, name = path.rpartition(".")
        if typed[key] is not None and not (key in _ZERO_IS_UNSET and typed[key] == 0):
            groups.setdefault(group, {})[name] = typed[key]
    if "prometheus_url" in groups.get("elastic", {}):
        groups.setdefault("rollout", {})["prometheus_address"] = groups["elastic"]["prometheus_url"]
    for key, path in _SECRET_FIELDS.items():
        if key in secrets:
            group, _, name = path.rpartition(".")
            groups.setdefault(group, {})[name] = secrets[key]
    top = groups.pop("", {})
    model_settings = groups.pop("model", {})  # stack-wide ModelArgs fields, given to every model
    target = top.get("target")
    kubernetes = target == "kubernetes"
    gpu = groups.get("resources", {}).get("gpu") or 0

    pool_kwargs = groups.pop("node_pool", {})
    cluster_name = pool_kwargs.get("cluster_name", "")
    if kubernetes and not cluster_name and not gpu:
        problems.append(_problem("clusterName", cluster_name, "the kubernetes target needs the name of an existing EKS cluster"))
    if pool_kwargs.get("subnet_ids") == ():
        pool_kwargs["subnet_ids"] = None  # [] in the config: the default subnets
    if len(entries) > 1 and "local_port" in groups.get("network", {}):
        if groups["network"]["local_port"] > 65535 - len(entries):
            problems.append(_problem("localPort", groups["network"]["local_port"],
                                     "must be a port between 1024 and 65535 (one port per model)"))

    net = groups.get("network", {})
    if target == "docker" and len(entries) > 1 and net.get("grpc_port") and "local_port" in net:
        # Model i publishes HTTP on localPort + i and gRPC on grpcPort + i: the ranges must not meet.
        n, http, grpc = len(entries), net["local_port"], net["grpc_port"]
        if http < grpc + n and grpc < http + n:
            problems.append(_problem("grpcPort", grpc, f"on the docker target models use localPort..localPort+{n - 1} "
                                                       f"({http}-{http + n - 1}) and grpcPort..grpcPort+{n - 1}: "
                                                       "choose ranges that do not overlap"))
    built = {name: _build(cls, groups.get(name, {}), stack_names, problems) for name, cls in (
        ("resources", ResourcesArgs), ("autoscaling", AutoscalingArgs), ("network", NetworkArgs),
        ("server", ServerArgs), ("registry", RegistryArgs), ("rollout", RolloutArgs),
        ("monitoring", MonitoringArgs), ("elastic", ElasticArgs))}
    node_pool = _build(NodePoolArgs, pool_kwargs, stack_names, problems) if kubernetes and gpu else None
    if target is not None:
        problems.extend(p.render(stack_names) for p in cross_group_problems(
            target, built["resources"], built["autoscaling"], node_pool, built["elastic"])
            if p.field != "node_pool")  # a pool that failed reported its own problems
        problems.extend(p.render(stack_names) for p in delivery_problems(
            target, built["rollout"], built["monitoring"], groups.get("rollout", {}).get("strategy"),
            groups.get("monitoring", {}).get("mode")))
        problems.extend(p.render(stack_names) for p in elastic_problems(
            target, built["resources"], built["autoscaling"], built["network"], node_pool, built["elastic"]))
        problems.extend(p.render(stack_names) for p in canary_scaling_problems(
            built["rollout"], built["elastic"], groups.get("rollout", {}).get("strategy"),
            groups.get("elastic", {}).get("autoscaler")))
        problems.extend(p.render(stack_names) for p in scaling_source_problems(
            built["elastic"], built["monitoring"], built["network"], groups.get("elastic", {}).get("autoscaler"),
            groups.get("monitoring", {}).get("mode"), groups.get("elastic", {}).get("keda_http"),
            groups.get("network", {}).get("grpc_port")))

    served: list[ServedModelArgs] = []
    for index, (kwargs, model_key) in enumerate(entries):
        model = _build(ModelArgs, kwargs | model_settings, _namer(model_key), problems)
        if model is None or None in built.values() or (kubernetes and gpu and node_pool is None) or target not in TARGETS:
            continue
        network = built["network"]
        if index and target == "docker":  # further models on the docker target use the next host ports
            network = dataclasses.replace(network, local_port=network.local_port + index,
                                          grpc_port=network.grpc_port + index if network.grpc_port else 0)
        args = _build(ServedModelArgs, dict(
            model=model, out_dir=build_root / model.served_name, target=target, node_pool=node_pool,
            protect=top.get("protect", False), **(built | {"network": network})), stack_names, problems)
        if args is not None:
            served.append(args)
    names = [m.served_name for m in (a.model for a in served)]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(_problem("models", dup, "each served name must be unique"))

    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))  # the same rule per model: say it once
    return Settings(target=target, cluster_name=cluster_name, served=tuple(served),
                    kubeconfig=secrets.get("kubeconfig"))


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
        except (pulumi.ConfigTypeError, ValueError):
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
        secrets = {key: cfg.require_secret(key) for key in secret_keys}
        settings = parse_settings(raw, secrets, build_root=Path("build") / "stacks" / pulumi.get_stack())
    except ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
    return dataclasses.replace(settings, aws_profile=pulumi.Config("aws").get("profile") or "")
