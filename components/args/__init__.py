"""Typed, grouped arguments of `ServedModel`, each group validating itself on construction.

A program that serves a model builds these directly (see examples/); the stack program builds
them once from its config (components/settings.py). Every group collects all of its problems
and raises one `ArgsError` naming each field, the value and what is accepted; `ServedModelArgs`
adds the rules that span groups (components/args/rules.py).

One module per group (model, resources, autoscaling, network, server, node_pool, registry,
rollout, monitoring, elastic, encryption), `checking` (Problem, ArgsError, the Checker and common checks),
`setting` (the one declaration of a stack setting), `rules` (rules over fully built groups) and
`served_model` (ServedModelArgs). The args import only the facts they check against (gpus.py,
karpenter.py's and keda.py's grammars, specs.py's constants, models.contract): never a component.

Adding a stack setting is one declaration, on the args field that carries the value:

    # components/args/<group>.py, in the group's dataclass
    timeout_seconds: int = setting(30, "What it does, as docs/config.md shows it; name other "
                                       "settings as @{group.field}.", check=integer(1))

then, when it relates to other fields, its rule (`rules()` of the group, or a `@rule(...)` in
rules.py when it spans groups; a new group is a module like the others plus a field of its type on
ServedModelArgs), and `python -m servedmodel.components.config_doc` to regenerate
Pulumi.yaml's `config:` block, docs/config.md and the component provider's provider/schema.json
(tests/components/test_docs.py and test_provider.py fail until they match). The annotation is its
type, the default its default everywhere; the flat key (`servedmodel:timeoutSeconds`) and its name
in the group's structured key (`servedmodel:<group>: {timeoutSeconds: 30}`) are the field name in
camelCase unless `key=` / `name=` say otherwise. A secret is `secret=True` (stack-only,
`pulumi config set --secret`); an Optional value the stack writes as 0/""/[] says so with `unset=`.
A field that another resource may produce is annotated `pulumi.Input[...]`: its check then runs
when the Output is known. docs/architecture.md (section 1a) has the whole path from stack config to resources.
"""
from servedmodel.models.loader import is_model_ref

# Helpers that live with their concepts now (gpus.py, karpenter.py, keda.py, specs.py), still
# importable from here as before.
from ..gpus import IMAGE_GPU_FAMILIES, SUPPORTED_GPU_FAMILIES, instance_families
from ..karpenter import CAPACITY_TYPES, CONSOLIDATION_POLICIES, KARPENTER_DEFAULTS, gpu_limit_needed
from ..keda import METRICS as KEDA_METRICS
from ..specs import ROLLOUT_SURGE
from .autoscaling import AUTOSCALE_METRICS, AutoscalingArgs
from .checking import ArgsError, ArgsGroup, Checker, Problem, is_dns_label
from .elastic import AUTOSCALERS, NODE_PROVISIONERS, ElasticArgs
from .encryption import ENCRYPTION_MODES, EncryptionArgs
from .mapping import args_from_mapping
from .model import MAX_NAME, ZOO, ModelArgs
from .monitoring import MONITORING_MODES, MonitoringArgs
from .network import SERVICE_TYPES, NetworkArgs
from .node_pool import AMI_TYPES, NodePoolArgs  # AMI_TYPES: components/platforms.py
from .registry import KEEP_VERSIONS_FLOOR, RegistryArgs
from .resources import ResourcesArgs
from .rollout import DEFAULT_STEPS, ROLLOUT_STRATEGIES, RolloutArgs, duration_seconds, parse_step
from .rules import RULES, cross_group_problems, draining_problems, rule
from .served_model import GROUP_TYPES, TARGETS, ServedModelArgs
from .server import BATCHING_SETTINGS, LOG_RETENTION_DAYS, ServerArgs
from .setting import REQUIRED, Declared, Schema, Setting, setting, settings_of

__all__ = [
    "AMI_TYPES", "AUTOSCALERS", "AUTOSCALE_METRICS", "BATCHING_SETTINGS", "CAPACITY_TYPES", "CONSOLIDATION_POLICIES",
    "DEFAULT_STEPS", "ENCRYPTION_MODES", "GROUP_TYPES", "IMAGE_GPU_FAMILIES", "KARPENTER_DEFAULTS", "KEDA_METRICS",
    "KEEP_VERSIONS_FLOOR", "LOG_RETENTION_DAYS",
    "MAX_NAME", "MONITORING_MODES", "NODE_PROVISIONERS", "REQUIRED", "ROLLOUT_STRATEGIES", "ROLLOUT_SURGE", "RULES",
    "SERVICE_TYPES", "SUPPORTED_GPU_FAMILIES", "TARGETS", "ZOO", "ArgsError", "ArgsGroup", "AutoscalingArgs", "Checker",
    "Declared",
    "ElasticArgs", "EncryptionArgs", "ModelArgs", "MonitoringArgs", "NetworkArgs", "NodePoolArgs", "Problem",
    "RegistryArgs",
    "ResourcesArgs", "RolloutArgs", "Schema", "ServedModelArgs", "ServerArgs", "Setting", "args_from_mapping",
    "cross_group_problems", "draining_problems", "duration_seconds", "gpu_limit_needed", "instance_families",
    "is_dns_label",
    "is_model_ref", "parse_step", "rule", "setting", "settings_of",
]
