"""The Pulumi program: read the stack's settings, serve each model, export its outputs."""
from __future__ import annotations

import dataclasses

import pulumi
import pulumi_kubernetes as k8s

from servedmodel.components import ServedModel, cluster, load_settings

settings = load_settings()

opts = None
served_args = settings.served
if settings.target == "kubernetes":
    # The one Kubernetes provider; components take it from opts.providers. Secrets mutable: a
    # client token's rotation updates the clients Secret in place (and rolls the pods) instead of
    # replacing it; an `immutable` Secret (the auth token's) still replaces
    # (pulumi/pulumi-kubernetes provider/pkg/provider/diff.go).
    kubeconfig = settings.kubeconfig
    if kubeconfig is None:
        kubeconfig = cluster.eks_kubeconfig(settings.cluster_name, settings.aws_profile)
    opts = pulumi.ResourceOptions(providers={"kubernetes": k8s.Provider("k8s", kubeconfig=kubeconfig,
                                                                        enable_secret_mutable=True)})
    # The same cluster for what reads it itself (a canary's RolloutWait).
    served_args = tuple(dataclasses.replace(args, kubeconfig=kubeconfig) for args in served_args)

served = {args.model.served_name: ServedModel(args.model.served_name, args, opts=opts) for args in served_args}

# Per model, keyed by served name (a stack may serve several models).
pulumi.export("url", {name: m.url for name, m in served.items()})
pulumi.export("inferUrl", {name: m.infer_url for name, m in served.items()})
pulumi.export("modelName", {name: m.model_name for name, m in served.items()})
pulumi.export("image", {name: m.image for name, m in served.items()})
pulumi.export("modelVersion", {name: m.model_version for name, m in served.items()})
pulumi.export("signature", {name: m.signature for name, m in served.items()})
# What the first request after idle waits for: {nodeSeconds, pullSeconds, startSeconds, totalSeconds}.
pulumi.export("coldStart", {name: m.cold_start for name, m in served.items()})
