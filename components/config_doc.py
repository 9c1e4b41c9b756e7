"""Write Pulumi.yaml's `config:` block and docs/config.md from the settings' declarations.

Each setting is declared once, with `setting(...)` on the args field it sets (components/args/);
components/settings.py `SCHEMA` indexes them. `python -m servedmodel.components.config_doc`
rewrites both files from it, and the component provider's provider/schema.json (inferred from the
same declarations by components/provider.py); tests/components/test_docs.py and test_provider.py
fail when a committed file differs from a fresh rendering.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from .args import AMI_TYPES, KEEP_VERSIONS_FLOOR, ZOO, Declared
from .gpus import SUPPORTED_GPU_FAMILIES, UNSUPPORTED_GPU_FAMILIES
from .settings import NAMESPACE, SCHEMA, SECRET_KEYS
from .specs import NLB_DEREGISTRATION_LAG_SECONDS, REVISION_HISTORY_LIMIT, ROLLOUT_SURGE

ROOT = Path(__file__).resolve().parent.parent
CONFIG_MARK = "config:\n"

PULUMI_YAML_NOTE = """\
# Generated from the settings' declarations (`setting(...)` on the args fields, components/args/)
# by `python -m servedmodel.components.config_doc`, with docs/config.md; do not edit this block
# by hand (tests/components/test_docs.py compares). Project config cannot declare objects or
# secrets: the structured group keys (servedmodel:autoscaling, ...), servedmodel:models and the
# secrets live in the stack files and are documented in docs/config.md.
"""

HEADER = """# Stack configuration reference

Generated from the settings' declarations (`setting(...)` on the args fields in `components/args/`)
by `python -m servedmodel.components.config_doc`, which writes the `config:` block of `Pulumi.yaml`
from the same declarations (tests/components/test_docs.py keeps the three in step). Every key lives
in the `servedmodel` namespace: `pulumi config set servedmodel:<key> <value> --stack <stack>`, or in
`stacks/Pulumi.<stack>.yaml`.

The program reads the whole config once (`components/settings.py`) and validates it before it
declares any resource. Every problem is reported in one error that names the key, the value and
what is accepted, for example:

```
invalid stack config (3 problems):
  - servedmodel:replcias: unknown key; did you mean servedmodel:replicas?
  - servedmodel:model = 'gpt-17': unknown model; accepted: one of {zoo} or 'path/to/file.py:factory'
  - servedmodel:autoscaling.replicas = 3: must not exceed servedmodel:autoscaling.maxReplicas (2); min > max replicas
```

## Flat keys and groups

Each setting has a flat key (`servedmodel:maxReplicas`) and, in the groups below, a name inside its
group's key; the two forms set the same value and may be mixed in one stack:

```yaml
config:
  servedmodel:autoscaling:          # = servedmodel:replicas, servedmodel:maxReplicas, servedmodel:autoscaleMetric
    replicas: 2
    maxReplicas: 10
    metric: inflight
  servedmodel:rollout: canary       # a group with a shorthand also takes its main setting's plain value
```

Problems name a setting the way the stack wrote it (`servedmodel:autoscaling.maxReplicas` above).
Giving one setting both ways is an error naming both keys, except where the flat key holds its
Pulumi.yaml default: the engine merges every Pulumi.yaml default into the stack's config, so such a
key cannot be told from one left unset, and the group's value holds. An unknown key, flat or inside
a group, is an error naming the nearest known key. `servedmodel:rollout` and `servedmodel:monitoring`
are group keys with a shorthand (a plain value, as before, sets the strategy or the mode), so
Pulumi.yaml, which cannot declare a key that may hold an object, does not declare them.

| group key | shorthand (a plain value sets) | its settings (name in the group = flat key) |
| --- | --- | --- |
"""

STACK_ONLY = """
## Stack-only keys (structured or secret: not declarable in Pulumi.yaml)

| key | type | description |
| --- | --- | --- |
| `servedmodel:models` | list of `{{name, model, compression}}` | Serve several models from one stack. \
Each entry needs a `name` (a DNS label: resource names, labels, the key of its outputs) and a `model`; \
`compression` defaults to `servedmodel:compression`. When set, `name`/`model` are ignored. |
{groups}
{secrets}

Other namespaces: `aws:region` (kubernetes target) selects the AWS region of the cluster, ECR and
node pool; `aws:profile`, when set, is also passed to the generated kubeconfig's
`aws eks get-token` (`--profile` and `AWS_PROFILE`), so the cluster token comes from the same
profile as the AWS calls.

## Rules checked together with the types

- `target` docker takes no GPUs (`gpu` 0); `target` kubernetes needs `clusterName`.
- `replicas` <= `maxReplicas`; above it an HPA owns the replica count (`replicas` is left unset on
  the Deployment). `replicas` > 1 adds a PodDisruptionBudget (`maxUnavailable: 1`).
- `serviceType` LoadBalancer is public: it needs `allowLoadBalancer: true`, a client identity (the
  secret `authToken`, the secret `clients` or `oidcIssuer`) and `tlsCertificateArn` (one error names
  what is missing); TLS terminates at an NLB of the AWS Load Balancer Controller. `tlsCertificateArn` is for a
  LoadBalancer only. It also needs `hostname` (a DNS name the certificate covers, not under
  amazonaws.com: the `url` is `https://<hostname>`) and `dnsZoneId` (the Route53 zone of its alias
  record), and `preStopSeconds` >= {nlb_lag} (the NLB keeps sending new connections to a
  deregistering pod for about {nlb_lag} s). `dnsZoneId` and `loadBalancerSubnetIds` are for a
  LoadBalancer only.
- `grpcPort` is 0 (off) or 1024-65535, not 8080 nor `localPort`; `maxBatchSize`, `maxQueueDelayMs`
  (up to 10000), `maxQueueSize` and `queueTimeoutMs` are 0 (the server's or the manifest's
  default) or positive.
- With GPUs on kubernetes, one replica's `cpu`, `memory` and `gpu` must fit every instance type of
  the pool: the node's allocatable (vCPUs, memory and GPUs from EC2, `aws.ec2.get_instance_type`,
  less the kubelet reservation and VM overhead as EKS and Karpenter compute them) less the
  DaemonSet headroom (`daemonSetCpu`, `daemonSetMemory`); docs/deploy.md, "The GPU node pool and
  the device plugin". The managed pool must also fit `maxReplicas` + {surge} surge pod \
(rolling updates use `maxUnavailable: 0`):
  `nodeMax` x (replicas per node) >= `maxReplicas` + {surge}, where replicas per node is what the
  scarcest of GPU, CPU and memory allows on the smallest type. These checks read EC2, so they run
  when the program runs (preview or up). GPU instance families the image supports: {types}. AMI
  types: {amis}.
- Elastic capacity (docs/deploy.md, "Elastic GPU capacity"): `nodeProvisioner: karpenter` needs the
  kubernetes target and `gpu` > 0, and admits only the GPU families the image can run (those above);
  its `gpuLimit` must be 0 or at least (`maxReplicas` + {surge}) x `gpu`, and the managed pool's
  `nodeMax` rule does not apply. `autoscaler: keda` needs the kubernetes target and `autoscaleMetric`
  inflight or queue. `minReplicas: 0` (scale to zero) needs `autoscaler: keda` and `kedaHttp: true`;
  with hpa `minReplicas` stays 1 (the minimum is `replicas`). `kedaHttp` needs `autoscaler: keda` and
  a ClusterIP Service.
- GPU instance families the image cannot run are refused, with the reason:
{refused}
- Without `nodeSubnetIds` the GPU nodes go to the cluster's private subnets only: those tagged
  `kubernetes.io/role/internal-elb=1` (none tagged stops the program with that message).
- Secrets ({secret_keys}) are accepted only as Pulumi secrets. `clients`: each client one token
  (at least 16 characters) or two (a rotation), one client per token, names of letters, digits and
  `_.@-`; not `default` beside `authToken` (the name the token takes). `oidcIssuer` (an https URL) and
  `oidcAudience` go together; `oidcScope` needs them.
- `modelEncryption` (empty: kms on kubernetes, local on docker): kms is for the kubernetes target
  (the pod's identity unwraps the key: it needs `clusterName`), local for docker; `kmsKeyArn` (a key
  ARN, not an alias) goes with kms. `auditRetentionDays` is 0 or a retention CloudWatch Logs accepts.
- `keepVersions` is at least {keep_floor}: the versions one workload may pin at once (the
  Deployment's {history} old ReplicaSets, the current one and a canary).
- `rollout` canary and `monitoring` other than none need the kubernetes target; canary needs
  `prometheusUrl` (an http(s):// URL) and at least one `setWeight:N` step;
  `analysisFailureLimit` < `analysisCount`; the ratios (`analysisMaxFailureRatio`,
  `analysisMaxShedRatio`, `alertFailureRatio`, `alertShedRatio`) are decimal numbers in strings
  (Pulumi.yaml has no number type), e.g. `"0.01"`; inside a group they may be plain numbers. See
  docs/deploy.md ("Canary rollouts") and docs/operations.md.
"""


def _stack_name(path: str) -> str:
    return f"{NAMESPACE}:{SCHEMA.stack_key(path)}"


def description(d: Declared) -> str:
    """The declared description, other settings named by their flat stack keys."""
    return SCHEMA.render(d.description, _stack_name)


def project_config() -> dict[str, dict[str, Any]]:
    """Pulumi.yaml's `config:` block: full key -> {type, (items), default, description}."""
    out: dict[str, dict[str, Any]] = {}
    for d in SCHEMA.project_settings():
        decl: dict[str, Any] = {"type": d.pulumi_type}
        if d.kind == "array":
            decl["items"] = {"type": "string"}
        decl["default"] = d.stack_default
        decl["description"] = description(d)
        out[f"{NAMESPACE}:{d.key}"] = decl
    return out


def render_pulumi_yaml(current: str) -> str:
    """`current` (Pulumi.yaml) with its `config:` block (the rest of the file) generated."""
    head = current.split(PULUMI_YAML_NOTE, 1)[0] if PULUMI_YAML_NOTE in current else current.split(CONFIG_MARK, 1)[0]
    lines = [CONFIG_MARK.rstrip("\n")]
    for key, decl in project_config().items():
        lines.append(f"  {key}:")
        lines += [f"    {name}: {_scalar(value)}" if name != "items" else f"    items:\n      type: {value['type']}"
                  for name, value in decl.items()]
    return head + PULUMI_YAML_NOTE + "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    """One YAML value on one line (a list in flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _cell(value: object) -> str:
    return "`" + json.dumps(value) + "`" if not isinstance(value, str) else f"`{value!r}`".replace("'", '"')


def _type(d: Declared) -> str:
    return {"array": "array of string", "number": "string (a decimal number)"}.get(d.kind, d.kind)


def render() -> str:
    """docs/config.md."""
    group_rows = []
    for key in SCHEMA.groups:
        short = SCHEMA.shorthand(key)
        names = ", ".join(f"`{d.name}`" + (f" (`{d.key}`)" if d.key != d.name else "") for d in SCHEMA.members(key))
        group_rows.append(f"| `{NAMESPACE}:{key}` | {f'`{short.name}`' if short else '-'} | {names} |")
    rows = []
    for d in SCHEMA.project_settings():
        where = f"`{d.group_key}.{d.name}`" if d.name else "-"
        rows.append(f"| `{NAMESPACE}:{d.key}` | {where} | {_type(d)} | {_cell(d.stack_default)} | {description(d)} |")
    groups = []
    for key in SCHEMA.groups:
        short = SCHEMA.shorthand(key)
        kind = "object" + (f" or {_type(short)}" if short else "")
        also = (f"; a plain value sets `{short.name}` (`{NAMESPACE}:{key}: {short.stack_default}`)" if short else "")
        groups.append(f"| `{NAMESPACE}:{key}` | {kind} | The {key} group: any of "
                      + ", ".join(f"`{d.name}`" for d in SCHEMA.members(key)) + f" (see the table above){also}. |")
    for d in SCHEMA.settings:
        if d.key in SCHEMA.groups and not d.secret:  # the shorthand's own row (it is not in Pulumi.yaml)
            groups.append(f"| `{NAMESPACE}:{d.key}` as a plain value | {_type(d)}, default {_cell(d.stack_default)} | "
                          f"{description(d)} |")
    kinds = {"map": "secret map (name -> string or list of strings)"}
    secrets = [f"| `{NAMESPACE}:{d.key}` | {kinds.get(d.kind, 'secret string')} | {description(d)} |"
               for d in SCHEMA.settings if d.secret]
    types = ", ".join(SUPPORTED_GPU_FAMILIES)
    project = ("\n## Project keys (typed and defaulted in Pulumi.yaml)\n\n"
               "| key | in its group | type | default | description |\n| --- | --- | --- | --- | --- |\n")
    return (HEADER.format(zoo=", ".join(ZOO)) + "\n".join(group_rows) + "\n" + project + "\n".join(rows) + "\n"
            + STACK_ONLY.format(
                groups="\n".join(groups), secrets="\n".join(secrets), surge=ROLLOUT_SURGE, types=types,
                amis=", ".join(AMI_TYPES), secret_keys=", ".join(f"`{k}`" for k in SECRET_KEYS),
                nlb_lag=NLB_DEREGISTRATION_LAG_SECONDS, keep_floor=KEEP_VERSIONS_FLOOR, history=REVISION_HISTORY_LIMIT,
                refused="\n".join(f"  - `{family}`: {why}"
                                  for family, why in sorted(UNSUPPORTED_GPU_FAMILIES.items()))))


def main() -> None:
    pulumi_yaml = ROOT / "Pulumi.yaml"
    pulumi_yaml.write_text(render_pulumi_yaml(pulumi_yaml.read_text()))
    (ROOT / "docs" / "config.md").write_text(render())
    from .provider import SCHEMA_FILE, schema_text  # the component provider's schema: the same declarations
    SCHEMA_FILE.write_text(schema_text())
    sys.stdout.write("wrote Pulumi.yaml (config:), docs/config.md and provider/schema.json\n")


if __name__ == "__main__":
    main()
