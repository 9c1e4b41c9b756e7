"""Render docs/config.md from Pulumi.yaml's `config:` block (the single source of the reference).

`python -m components.config_doc` rewrites docs/config.md; tests/components/test_docs.py fails
when the committed file and Pulumi.yaml drift apart.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from .args import KEEP_VERSIONS_FLOOR
from .gpus import SUPPORTED_GPU_FAMILIES, UNSUPPORTED_GPU_FAMILIES
from .settings import AMI_TYPES, ROLLOUT_SURGE
from .specs import NLB_DEREGISTRATION_LAG_SECONDS, REVISION_HISTORY_LIMIT

ROOT = Path(__file__).resolve().parent.parent

HEADER = """# Stack configuration reference

Generated from the `config:` block of `Pulumi.yaml` by `python -m components.config_doc`
(tests/components/test_docs.py keeps the two in step). Every key lives in the `servedmodel`
namespace: `pulumi config set servedmodel:<key> <value> --stack <stack>`, or in
`stacks/Pulumi.<stack>.yaml`.

The program reads the config once (`components/settings.py`) and validates it before it declares
any resource. Every problem is reported in one error that names the key, the value and what is
accepted, for example:

```
invalid stack config (2 problems):
  - servedmodel:model = 'gpt-17': unknown model; accepted: one of mnist-mlp, lenet, resnet-tiny, digits-cnn, minilm or 'path/to/file.py:factory'
  - servedmodel:replicas = 3: must not exceed servedmodel:maxReplicas (2); min > max replicas
```

## Project keys (typed and defaulted in Pulumi.yaml)

| key | type | default | description |
| --- | --- | --- | --- |
"""

STACK_ONLY = """
## Stack-only keys (structured or secret: not declarable in Pulumi.yaml)

| key | type | description |
| --- | --- | --- |
| `servedmodel:models` | list of `{{name, model, compression}}` | Serve several models from one stack. Each entry needs a `name` (a DNS label: resource names, labels, the key of its outputs) and a `model`; `compression` defaults to `servedmodel:compression`. When set, `name`/`model` are ignored. |
| `servedmodel:authToken` | secret string | Bearer token the server requires on model routes (a Kubernetes Secret mounted as a file the server reads through `SERVEDMODEL_AUTH_TOKEN_FILE`; never an environment value). Required with `serviceType` LoadBalancer. Must be set with `pulumi config set --secret`; a plain-text value is rejected. |
| `servedmodel:registryPassword` | secret string | Password for `servedmodel:registry` / `registryUsername`. Secret only. |
| `servedmodel:kubeconfig` | secret string | A kubeconfig for the cluster. Without it the program builds one from `clusterName` that authenticates with `aws eks get-token` (no stored token). Secret only. |

Other namespaces: `aws:region` (kubernetes target) selects the AWS region of the cluster, ECR and
node pool; `aws:profile`, when set, is also passed to the generated kubeconfig's
`aws eks get-token` (`--profile` and `AWS_PROFILE`), so the cluster token comes from the same
profile as the AWS calls.

## Rules checked together with the types

- `target` docker takes no GPUs (`gpu` 0); `target` kubernetes needs `clusterName`.
- `replicas` <= `maxReplicas`; above it an HPA owns the replica count (`replicas` is left unset on
  the Deployment). `replicas` > 1 adds a PodDisruptionBudget (`maxUnavailable: 1`).
- `serviceType` LoadBalancer is public: it needs `allowLoadBalancer: true`, and both the secret
  `authToken` and `tlsCertificateArn` (one error names both keys when either is missing); TLS
  terminates at an NLB of the AWS Load Balancer Controller. `tlsCertificateArn` is for a
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
  DaemonSet headroom (`daemonSetCpu`, `daemonSetMemory`); docs/deploy.md, "Capacity". The managed
  pool must also fit `maxReplicas` + {surge} surge pod (rolling updates use `maxUnavailable: 0`):
  `nodeMax` x (replicas per node) >= `maxReplicas` + {surge}, where replicas per node is what the
  scarcest of GPU, CPU and memory allows on the smallest type. These checks read EC2, so they run
  when the program runs (preview or up), after the checks listed here. GPU instance families the
  image supports: {types}. AMI types: {amis}.
- Elastic capacity (docs/deploy.md, "Elastic GPU capacity"): `nodeProvisioner: karpenter` needs the
  kubernetes target and `gpu` > 0, and admits only the GPU families the image can run (those of the known types above);
  its `gpuLimit` must be 0 or at least (`maxReplicas` + {surge}) x `gpu`, and the managed pool's
  `nodeMax` rule does not apply. `autoscaler: keda` needs the kubernetes target and `autoscaleMetric`
  inflight or queue. `minReplicas: 0` (scale to zero) needs `autoscaler: keda` and `kedaHttp: true`;
  with hpa `minReplicas` stays 1 (the minimum is `replicas`). `kedaHttp` needs `autoscaler: keda` and
  a ClusterIP Service.
- GPU instance families the image cannot run are refused, with the reason:
{refused}
- Without `nodeSubnetIds` the GPU nodes go to the cluster's private subnets only: those tagged
  `kubernetes.io/role/internal-elb=1` (none tagged stops the program with that message).
- Secrets (`authToken`, `registryPassword`, `kubeconfig`) are accepted only as Pulumi secrets.
- `keepVersions` is at least {keep_floor}: the versions one workload may pin at once (the
  Deployment's {history} old ReplicaSets, the current one and a canary).
- `rollout` canary and `monitoring` other than none need the kubernetes target; canary needs
  `prometheusUrl` (an http(s):// URL) and at least one `setWeight:N` step;
  `analysisFailureLimit` < `analysisCount`; the ratios (`analysisMaxFailureRatio`,
  `analysisMaxShedRatio`, `alertFailureRatio`, `alertShedRatio`) are decimal numbers in strings
  (Pulumi.yaml has no number type), e.g. `"0.01"`. See docs/deploy.md ("Canary rollouts") and
  docs/operations.md.
"""


def _cell(value: object) -> str:
    return "`" + json.dumps(value) + "`" if not isinstance(value, str) else f"`{value!r}`".replace("'", '"')


def render(pulumi_yaml: Path = ROOT / "Pulumi.yaml") -> str:
    config = yaml.safe_load(pulumi_yaml.read_text())["config"]
    rows = []
    for key, decl in config.items():
        kind = decl["type"] + (f" of {decl['items']['type']}" if decl["type"] == "array" else "")
        rows.append(f"| `{key}` | {kind} | {_cell(decl.get('default'))} | {decl['description']} |")
    return HEADER + "\n".join(rows) + "\n" + STACK_ONLY.format(
        surge=ROLLOUT_SURGE, types=", ".join(SUPPORTED_GPU_FAMILIES), amis=", ".join(AMI_TYPES),
        nlb_lag=NLB_DEREGISTRATION_LAG_SECONDS, keep_floor=KEEP_VERSIONS_FLOOR, history=REVISION_HISTORY_LIMIT,
        refused="\n".join(f"  - `{family}`: {why}" for family, why in sorted(UNSUPPORTED_GPU_FAMILIES.items())))


if __name__ == "__main__":
    target = ROOT / "docs" / "config.md"
    target.write_text(render())
    sys.stdout.write(f"wrote {target.relative_to(ROOT)}\n")
