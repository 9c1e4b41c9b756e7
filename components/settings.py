"""Stack config -> the grouped `ServedModelArgs` of every model, built once and validated.

Every setting is declared once, on the args field it sets (components/args/setting.py); `SCHEMA`
indexes them. `read_config` reads the whole `servedmodel:*` config the engine passes the program
(`pulumi.Config` cannot list keys). `parse_settings` is pure (tested without mocks): it takes
those raw values (the Pulumi.yaml defaults merged with the stack file, as the CLI does) and the
values of the keys given as secrets, refuses unknown keys (naming the nearest known one), takes
each setting from its flat key or its group's structured key, checks the types, then builds the
args groups (which hold the rules) and returns `Settings`, or raises `ConfigError` listing every
problem at once, each naming the stack key as it was written, the value and what is accepted.
`load_settings` turns a `ConfigError` into one `pulumi.RunError`.

A setting may be written flat (`servedmodel:maxReplicas: 10`) or in its group
(`servedmodel:autoscaling: {maxReplicas: 10}`); a group with a shorthand also takes a plain value
(`servedmodel:rollout: canary`). The engine merges every Pulumi.yaml default into the config, so
a flat key that holds its default cannot be told from one left unset: it yields to the group;
a flat key set to anything else beside the same setting in its group is an error naming both.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import pulumi

from servedmodel.models.constants import COMPRESSIONS

from . import capacity
from .args import (
    AMI_TYPES,
    AUTOSCALE_METRICS,
    GROUP_TYPES,
    REQUIRED,
    SERVICE_TYPES,
    TARGETS,
    ZOO,
    ArgsError,
    Declared,
    ModelArgs,
    NodePoolArgs,
    Schema,
    ServedModelArgs,
    cross_group_problems,
    setting,
)
from .args.setting import camel
from .specs import ROLLOUT_SURGE

NAMESPACE = "servedmodel"

__all__ = ["AMI_TYPES", "AUTOSCALE_METRICS", "COMPRESSIONS", "ConfigError", "MODELS_KEY",
           "NAMESPACE", "PROJECT_KEYS", "ROLLOUT_SURGE", "SCHEMA", "SECRET_KEYS", "SERVICE_TYPES", "STACK_ONLY_KEYS",
           "Settings", "TARGETS", "ZOO", "load_settings", "parse_settings", "read_config"]


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

    Every setting is declared on the args field it sets (docs/config.md lists them).
    """

    target: str
    cluster_name: str
    served: tuple[ServedModelArgs, ...]
    aws_profile: str = ""
    # A given kubeconfig is a secret Output; never a plain string here.
    kubeconfig: Optional[pulumi.Input[str]] = setting(
        None, "A kubeconfig for the cluster. Without it the program builds one from @{node_pool.cluster_name} that "
              "authenticates with `aws eks get-token` (no stored token). Secret only.",
        secret=True, repr=False, compare=False)

    @property
    def models(self) -> tuple[ModelArgs, ...]:
        return tuple(a.model for a in self.served)


# Every setting of the stack, in the order docs/config.md and Pulumi.yaml list them. One Prometheus
# serves both KEDA's triggers and the canary analysis: the rollout's address takes its value.
SCHEMA = Schema((ServedModelArgs, *GROUP_TYPES.values(), Settings),
                derived={"rollout.prometheus_address": "elastic.prometheus_url"})
# Several models in one stack: a list of {name, model, compression} (components/settings.py
# reads it; each entry's keys are ModelArgs' settings).
MODELS_KEY = "models"
MODEL_ENTRY_FIELDS = ("served_name", "model", "compression")
SECRET_KEYS = tuple(d.key for d in SCHEMA.settings if d.secret)
PROJECT_KEYS = tuple(d.key for d in SCHEMA.project_settings())
STACK_ONLY_KEYS = (MODELS_KEY,) + tuple(SCHEMA.groups) + SECRET_KEYS


# Secrets the program itself must read while it decides what to declare (a registry lookup).
_READ_BY_PROGRAM = ("registryPassword",)
# Instance type names -> EC2's figures of each (components/capacity.py).
Describe = Callable[[tuple[str, ...]], Mapping[str, "capacity.InstanceType"]]


def _problem(key: str, value: Any, accepted: str) -> str:
    return f"{NAMESPACE}:{key} = {value!r}: {accepted}"


# ---- values as the stack writes them -> typed values ---------------------------------------------

_TYPE_TEXT = {"string": "must be a string", "integer": "must be an integer", "boolean": "must be true or false",
              "array": "must be a list of strings",
              "number": "must be a decimal number in a string, such as \"0.01\""}
_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def _float_or_none(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _decode(d: Declared, value: Any, in_group: bool) -> tuple[Any, Optional[str]]:
    """(typed value, None), or (None, what is accepted). Flat values come as the engine passes
    them (text) or already typed; a group's values are JSON-typed."""
    kind, optional_text = d.kind, d.optional and d.unset == ""
    if kind == "string":
        if isinstance(value, str):
            return value, None
        if in_group and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value), None  # `cpu: 4` inside a group: YAML made it a number
    elif kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        if not in_group and isinstance(value, str) and _INTEGER.match(value.strip()):
            return int(value), None
    elif kind == "boolean":
        if isinstance(value, bool):
            return value, None
        if not in_group and value in ("true", "false"):
            return value == "true", None
    elif kind == "number":
        if optional_text and isinstance(value, str) and not value.strip():
            return None, None
        if in_group and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), None
        if isinstance(value, str) and _float_or_none(value) is not None:
            return _float_or_none(value), None
        return None, _TYPE_TEXT["number"] + (", or \"\" (unset)" if optional_text else "")
    elif kind == "array":
        if isinstance(value, str) and not in_group:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return None, _TYPE_TEXT["array"]
        if isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
            return tuple(value), None
    return None, _TYPE_TEXT[kind]


def _json_or_text(text: Any) -> Any:
    """A structured secret's JSON text as its value; anything else as it came (its check says
    what is accepted, without echoing it)."""
    if isinstance(text, str):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def _decode_secret_map(value: Any) -> Any:
    """The value of a secret map as the engine passes it (JSON text, or an Output of it), decoded;
    an Output stays an Output (and secret)."""
    if isinstance(value, pulumi.Output):
        return value.apply(_json_or_text)
    return _json_or_text(value)


def _is_unset(d: Declared, typed: Any) -> bool:
    """The stack's way of writing None (0, [], "") for an Optional field."""
    if not d.optional or typed is None:
        return typed is None
    unset = d.unset
    return list(typed) == list(unset) if isinstance(unset, list) and isinstance(typed, tuple) else typed == unset


def _nearest(word: str, known: Any) -> Optional[str]:
    found = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    if not found:  # case slips (MaxReplicas) and long keys with a short typo
        lowered = {k.lower(): k for k in known}
        found = [lowered[m] for m in difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)]
    return found[0] if found else None


class _StackValues:
    """The raw config read against SCHEMA: the typed kwargs of each args group, how each setting
    was written (its flat key or its group's key, for naming it), and the problems found."""

    def __init__(self, raw: Mapping[str, Any], secrets: Mapping[str, Any]):
        self.raw, self.secrets = raw, secrets
        self.problems: list[str] = []
        self.kwargs: dict[str, dict[str, Any]] = {}
        self.failed: set[str] = set()
        self.in_group: set[str] = set()
        self.objects: dict[str, dict[str, Any]] = {}
        self._unknown_keys()
        for key in SCHEMA.groups:
            self._group_object(key)
        for d in SCHEMA.settings:
            self._read(d)
        for derived, source in SCHEMA.derived.items():  # an args field no key sets takes another's value
            src = SCHEMA.by_path[source]
            if src.field in self.kwargs.get(src.owner.GROUP, {}):
                group, _, name = derived.rpartition(".")
                self.kwargs.setdefault(group, {})[name] = self.kwargs[src.owner.GROUP][src.field]

    def name_of(self, path: str) -> str:
        """An args path -> the stack key that sets it, as the stack writes it."""
        path = SCHEMA.derived.get(path, path)
        d = SCHEMA.by_path.get(path)
        if d is None:
            return f"{NAMESPACE}:{path}"
        if path in self.in_group:
            return f"{NAMESPACE}:{d.group_key}.{d.name}"
        return f"{NAMESPACE}:{d.key}"

    def _unknown_keys(self) -> None:
        known = set(SCHEMA.by_key) | set(SCHEMA.groups) | {MODELS_KEY}
        for key in self.raw:
            if key not in known:
                nearest = _nearest(key, known)
                self.problems.append(f"{NAMESPACE}:{key}: unknown key; "
                                     + (f"did you mean {NAMESPACE}:{nearest}?" if nearest
                                        else "docs/config.md lists the known keys"))

    def _group_object(self, key: str) -> None:
        """The group key's object, when the stack gives one (a plain value is the shorthand's)."""
        if key not in self.raw:
            return
        value = self.raw[key]
        if isinstance(value, str):  # the engine passes an object (or any non-string) as JSON text
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = value
            value = parsed if not isinstance(parsed, str) else value
        if isinstance(value, dict):
            self.objects[key] = value
            members = {d.name: d for d in SCHEMA.members(key) if d.name is not None}  # (all named)
            for name in value:
                if name in members:
                    continue
                # A setting kept out of this group (a secret, a stack-wide value) or of another group.
                elsewhere = next((d for d in SCHEMA.settings if d.group_key != key or d.name is None
                                  if name in (d.key, d.name, camel(d.field))), None)
                if elsewhere is not None:
                    how = " (a secret: pulumi config set --secret)" if elsewhere.secret else ""
                    there = f" or as {NAMESPACE}:{elsewhere.group_key}.{elsewhere.name}" if elsewhere.name else ""
                    self.problems.append(f"{NAMESPACE}:{key}.{name}: not set in {NAMESPACE}:{key}; "
                                         f"set it as {NAMESPACE}:{elsewhere.key}{there}{how}")
                    continue
                nearest = _nearest(str(name), members)  # (a YAML key need not be a string)
                self.problems.append(f"{NAMESPACE}:{key}.{name}: unknown key in {NAMESPACE}:{key}; "
                                     + (f"did you mean {NAMESPACE}:{key}.{nearest}?" if nearest
                                        else f"accepted: {', '.join(members)}"))
        elif SCHEMA.shorthand(key) is None:
            self.problems.append(_problem(key, value, "must be an object of its settings: "
                                          + ", ".join(d.name for d in SCHEMA.members(key) if d.name)))

    def _read(self, d: Declared) -> None:
        group = getattr(d.owner, "GROUP", "")
        if d.secret:
            if d.key in self.secrets:
                value = self.secrets[d.key]
                if d.kind == "map":  # a structured secret: the engine passes its JSON text
                    value = _decode_secret_map(value)
                self.kwargs.setdefault(group, {})[d.field] = value
            elif d.key in self.raw:
                self.problems.append(f"{NAMESPACE}:{d.key} = [given in plain text]: must be a secret; "
                                     f"run `pulumi config set --secret {NAMESPACE}:{d.key} ...`")
            return
        obj = self.objects.get(d.group_key) if d.name is not None and d.group_key is not None else None
        # A group key holding an object is not the shorthand's flat value.
        flat = d.key in self.raw and not (d.key in SCHEMA.groups and d.key in self.objects)
        if obj is not None:
            self.in_group.add(d.path)  # named in its group's form, given there or not
        if obj is not None and d.name in obj:
            value, in_group = obj[d.name], True
            if flat:
                given, bad = _decode(d, self.raw[d.key], False)
                default, _ = _decode(d, d.stack_default, False)
                if bad or given != default:  # (one at its Pulumi.yaml default may be unset: it yields)
                    shown = self.raw[d.key] if bad else list(given) if isinstance(given, tuple) else given
                    self.problems.append(
                        f"{NAMESPACE}:{d.key} = {shown!r} and {NAMESPACE}:{d.group_key}.{d.name} = {value!r}: "
                        "the same setting given twice; keep one of them")
                    self.failed.add(d.path)
                    return
        elif flat:
            value, in_group = self.raw[d.key], False
            self.in_group.discard(d.path)
        elif d.default is REQUIRED:
            value, in_group = d.stack_default, False  # required in Python, defaulted in the stack
        else:
            return  # the declared default
        typed, accepted = _decode(d, value, in_group)
        if accepted is not None:
            self.problems.append(f"{self.name_of(d.path)} = {value!r}: {accepted}")
            self.failed.add(d.path)
        elif not _is_unset(d, typed):
            self.kwargs.setdefault(group, {})[d.field] = typed


def _model_entries(values: _StackValues, raw: Mapping[str, Any],
                   problems: list[str]) -> list[tuple[dict[str, Any], Callable[[str], str]]]:
    """`models` (stack files, several models) or the flat `name`/`model`/`compression` keys, as
    ModelArgs keyword arguments with the function that names each of their keys.

    The served name is given, never derived from the model: changing only the model must roll
    the same Deployment out, not rename (replace) every resource.
    """
    model = values.kwargs.get("model", {})
    entries = raw.get(MODELS_KEY)
    if isinstance(entries, str):
        try:
            entries = json.loads(entries)
        except json.JSONDecodeError:
            pass
    if entries is None:
        if any(f"model.{f}" in values.failed for f in MODEL_ENTRY_FIELDS):
            return []  # reported already
        return [({f: model[f] for f in MODEL_ENTRY_FIELDS if f in model}, values.name_of)]
    keys = {SCHEMA.by_path[f"model.{f}"].key: f for f in MODEL_ENTRY_FIELDS}
    if not isinstance(entries, list) or not entries:
        problems.append(_problem(MODELS_KEY, entries, "must be a non-empty list of {name, model, compression}"))
        return []
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(_problem(f"models[{i}]", entry, "must be an object {name, model, compression}"))
            continue
        unknown = sorted(set(entry) - set(keys))
        if unknown:
            problems.append(_problem(f"models[{i}]", entry,
                                     f"unknown field(s) {unknown}; accepted: name, model, compression"))
        kwargs = {field: entry.get(key) for key, field in keys.items() if field != "compression"}
        if "compression" in entry or "compression" in model:
            kwargs["compression"] = entry.get("compression", model.get("compression"))

        def name_of(path: str, i: int = i) -> str:
            group, _, field = path.partition(".")
            if group == "model" and field in MODEL_ENTRY_FIELDS:
                return f"{NAMESPACE}:models[{i}].{SCHEMA.by_path[path].key}"
            return values.name_of(path)
        out.append((kwargs, name_of))
    return out


def _build(cls: type, kwargs: dict[str, Any], name_of: Callable[[str], str], problems: list[str]) -> Any:
    """cls(**kwargs), or None with its problems written in stack keys."""
    try:
        return cls(**kwargs)
    except ArgsError as exc:
        problems.extend(p.render(name_of) for p in exc.problems)
        return None


# The groups every model shares (each model has its own ModelArgs; the node pool only with GPUs).
_GROUP_CLASSES = tuple((name, cls) for name, cls in GROUP_TYPES.items() if name not in ("model", "node_pool"))


def parse_settings(raw: Mapping[str, Any], secrets: Mapping[str, pulumi.Input[str]] | None = None,
                   build_root: Path = Path("build"), ec2: Optional[Describe] = None) -> Settings:
    """Validate raw config values (defaults already merged) into Settings, or raise ConfigError.

    `raw` maps keys without the namespace (e.g. "maxReplicas", "autoscaling") to their values,
    as the engine passes them (text) or already typed; a secret key present in `raw` was given
    (its value there is a marker); `secrets` holds the values of the keys given as secrets. Each
    model's build context goes to `build_root/<served name>`. With `ec2` (instance type names ->
    EC2's figures: capacity.describe in the program, recorded figures in tests) every GPU model's
    replicas are also checked against its pool's nodes (components/capacity.py).
    """
    secrets = dict(secrets or {})
    values = _StackValues(raw, secrets)
    problems = list(values.problems)
    name_of = values.name_of
    entries = _model_entries(values, raw, problems)

    groups = {name: dict(kwargs) for name, kwargs in values.kwargs.items()}
    top = groups.pop("", {})
    model_settings = {k: v for k, v in groups.pop("model", {}).items() if k not in MODEL_ENTRY_FIELDS}
    target = top.get("target", SCHEMA.by_path["target"].default) if "target" not in values.failed else None
    check_target = SCHEMA.by_path["target"].check
    assert check_target is not None         # the target's declaration has its check
    target_ok = target is not None and not check_target(target)
    if target is not None and not target_ok:
        problems.append(_problem("target", target, check_target(target)))
    kubernetes = target == "kubernetes"
    gpu = groups.get("resources", {}).get("gpu") or 0

    pool_kwargs = groups.pop("node_pool", {})
    cluster_name = pool_kwargs.get("cluster_name", "")
    # The model's own pool: a GPU model always, a CPU model when it lists instance types (Graviton...).
    wants_pool = kubernetes and bool(gpu or pool_kwargs.get("instance_types"))
    if kubernetes and not cluster_name and not wants_pool:
        problems.append(f"{name_of('node_pool.cluster_name')} = {cluster_name!r}: the kubernetes target needs the "
                        "name of an existing EKS cluster")
    net = groups.get("network", {})
    if len(entries) > 1 and "local_port" in net and net["local_port"] > 65535 - len(entries):
        problems.append(f"{name_of('network.local_port')} = {net['local_port']!r}: must be a port between 1024 and "
                        "65535 (one port per model)")
    if target == "docker" and len(entries) > 1 and net.get("grpc_port") and "local_port" in net:
        # Model i publishes HTTP on localPort + i and gRPC on grpcPort + i: the ranges must not meet.
        n, http, grpc = len(entries), net["local_port"], net["grpc_port"]
        if http < grpc + n and grpc < http + n:
            problems.append(f"{name_of('network.grpc_port')} = {grpc!r}: on the docker target models use "
                            f"localPort..localPort+{n - 1} ({http}-{http + n - 1}) and grpcPort..grpcPort+{n - 1}: "
                            "choose ranges that do not overlap")

    # Build every group; one that fails reports its own problems, and the rules that need it skip.
    built = {name: _build(cls, groups.get(name, {}), name_of, problems) for name, cls in _GROUP_CLASSES}
    node_pool = _build(NodePoolArgs, pool_kwargs, name_of, problems) if wants_pool else None
    ready: dict[str, Any] = {name: group for name, group in built.items() if group is not None}
    if not wants_pool or node_pool is not None:
        ready["node_pool"] = node_pool
    if target_ok:
        ready["target"] = target
    problems.extend(p.render(name_of) for p in cross_group_problems(ready))

    served: list[ServedModelArgs] = []
    for index, (kwargs, model_name_of) in enumerate(entries):
        model = _build(ModelArgs, kwargs | model_settings, model_name_of, problems)
        if model is None or None in built.values() or "node_pool" not in ready or not target_ok:
            continue
        network = built["network"]
        if index and target == "docker":  # further models on the docker target use the next host ports
            network = dataclasses.replace(network, local_port=network.local_port + index,
                                          grpc_port=network.grpc_port + index if network.grpc_port else 0)
        args = _build(ServedModelArgs, dict(
            model=model, out_dir=build_root / model.served_name, target=target, node_pool=node_pool,
            protect=top.get("protect", False), cluster_name=cluster_name if kubernetes else "",
            **(built | {"network": network})), name_of, problems)
        if args is not None:
            served.append(args)
            if ec2 is not None and args.has_pool:
                # The pool's architecture and fit, from EC2's figures of each of its instance types.
                types = ec2(args.pool_instance_types)
                problems.extend(p.render(name_of) for p in capacity.architecture_problems(args, types)
                                + capacity.fit_problems(args, types, args.resources.gpu_memory_bytes))
    names = [m.served_name for m in (a.model for a in served)]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(_problem(MODELS_KEY, dup, "each served name must be unique"))

    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))  # the same rule per model: say it once
    assert target is not None               # read, and checked without a problem
    return Settings(target=target, cluster_name=cluster_name, served=tuple(served),
                    kubeconfig=secrets.get("kubeconfig"))


# ---- the program's side: the whole config as the engine passes it ----------------------------------

def read_config() -> tuple[dict[str, str], set[str]]:
    """Every `servedmodel:*` key the engine passes the program (without the namespace), as text,
    and the keys given as secrets.

    `pulumi.Config` reads one named key and cannot list them, so an unknown key would go unseen.
    The CLI's language host passes the whole config as JSON in PULUMI_CONFIG (and the secret keys
    in PULUMI_CONFIG_SECRET_KEYS); its exec shim loads both into the runtime's config
    (pulumi/runtime/config.py `set_all_config`), which the Automation API's inline programs and
    Pulumi's test mocks set directly. The keys are read from both; each value through
    `pulumi.runtime.get_config`, as `pulumi.Config` reads it.
    """
    prefix = f"{NAMESPACE}:"
    names = set(pulumi.runtime.get_config_env()) | set(pulumi.runtime.config.CONFIG.get())
    secret = set(pulumi.runtime.get_config_secret_keys_env())
    raw: dict[str, str] = {}
    secret_keys: set[str] = set()
    for full in sorted(names):
        if not full.startswith(prefix):
            continue
        value = pulumi.runtime.get_config(full)
        if value is None:
            continue
        key = full[len(prefix):]
        raw[key] = value if isinstance(value, str) else json.dumps(value)
        if full in secret or pulumi.runtime.is_config_secret(full):
            secret_keys.add(key)
    return raw, secret_keys


def load_settings() -> Settings:
    """Read and validate the stack config; a bad config stops the program with one RunError."""
    raw, secret_keys = read_config()
    cfg = pulumi.Config(NAMESPACE)
    # Secrets reach parse_settings as secret Outputs, their text replaced by a marker; the
    # registry password stays plain text here: the program asks the registry which versions it
    # holds before it declares a build (components/model_image.py), and an Output cannot be read
    # then. The component marks it secret wherever it is stored.
    secrets = {key: cfg.require(key) if key in _READ_BY_PROGRAM else cfg.require_secret(key)
               for key in SECRET_KEYS if key in secret_keys}
    for key in SECRET_KEYS:
        if key in raw:
            raw[key] = "[secret]" if key in secrets else "[plain]"
    try:
        # EC2's figures of each pool instance type (aws.ec2.get_instance_type invokes, which run at
        # preview too): replicas that cannot fit their nodes, or a type whose architecture the image
        # lacks, are config errors like any other.
        settings = parse_settings(raw, secrets, build_root=Path("build") / "stacks" / pulumi.get_stack(),
                                  ec2=capacity.describe)
    except ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
    return dataclasses.replace(settings, aws_profile=pulumi.Config("aws").get("profile") or "")


