"""A program of its own that serves one model with `ServedModel`: no servedmodel stack config.

It builds the grouped args itself (each group checks its own values when it is created) and,
for a cluster, brings its own Kubernetes provider, as any consumer of the components would.

    cd examples/standalone && pulumi up                      # a local container on 127.0.0.1:8091
    pulumi config set target kubernetes
    pulumi config set --secret kubeconfig "$(cat ~/.kube/config)" && pulumi up   # on that cluster

The model is encrypted in the image: with a key file of this machine in the local container,
with a KMS key that only the pods' own identity may use on an EKS cluster
(`pulumi config set clusterName <name>`: EKS Pod Identity associates it); on a cluster the program
cannot name it is served in clear.
"""
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from servedmodel.components import (
    AutoscalingArgs,
    EncryptionArgs,
    ModelArgs,
    NetworkArgs,
    ResourcesArgs,
    ServedModel,
    ServedModelArgs,
)

config = pulumi.Config()
on_cluster = config.require("target") == "kubernetes"
eks_cluster = config.get("clusterName") or ""

args = ServedModelArgs(
    model=ModelArgs(served_name="digits", model="lenet", compression="int8"),
    out_dir=Path("build") / "digits",
    target="kubernetes" if on_cluster else "docker",
    resources=ResourcesArgs(cpu="500m", memory="512Mi"),
    autoscaling=AutoscalingArgs(replicas=1, max_replicas=3, metric="cpu", target_cpu_percent=60),
    network=NetworkArgs(namespace="default", local_port=8091),
    cluster_name=eks_cluster if on_cluster else "",
    # The target's default (kms on an EKS cluster, a local key on docker), or none on a cluster
    # without the name EKS Pod Identity needs.
    encryption=EncryptionArgs(mode="none" if on_cluster and not eks_cluster else None),
)
opts = None
if on_cluster:
    kubeconfig = config.require_secret("kubeconfig")
    opts = pulumi.ResourceOptions(providers={"kubernetes": k8s.Provider("cluster", kubeconfig=kubeconfig)})

digits = ServedModel("digits", args, opts=opts)
pulumi.export("url", digits.url)
pulumi.export("modelVersion", digits.model_version)
pulumi.export("signature", digits.signature)
