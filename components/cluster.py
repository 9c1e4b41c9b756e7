"""The platform's EKS cluster as the program sees it: read by name, never managed here."""
from __future__ import annotations

import pulumi
import pulumi_aws as aws

from . import specs


def eks_kubeconfig(cluster_name: pulumi.Input[str], aws_profile: str = "") -> pulumi.Output[str]:
    """A secret kubeconfig for the existing cluster that authenticates with `aws eks get-token`
    (no stored token), with the stack's `aws:profile` when one is configured. `cluster_name` may
    be another resource's output."""
    cluster = aws.eks.get_cluster_output(name=cluster_name)
    return pulumi.Output.secret(pulumi.Output.all(
        cluster_name, cluster.endpoint, cluster.certificate_authorities[0].data, aws.get_region_output().region,
    ).apply(lambda v: specs.eks_kubeconfig(v[0], v[1], v[2], v[3], aws_profile)))
