"""ServedModel composed with resources of the same program.

The namespace the model runs in and the certificate its public endpoint terminates TLS with are
created here, and their outputs go straight into the args: the engine creates them first, and the
args' checks of those values run when they are known (a preview, where they are not yet, skips
nothing that the update will not check).

    cd examples/composed
    pulumi config set --secret kubeconfig "$(cat ~/.kube/config)"
    pulumi config set --secret authToken "$(openssl rand -hex 24)"
    pulumi config set domain example.com            # a zone you control
    pulumi up

ACM issues the certificate once its DNS validation record exists in that zone (the record is
listed in the certificate's `domainValidationOptions`); the load balancer is created with the
issued certificate (`CertificateValidation` waits for it). A record that points
digits.<domain> at the load balancer is not created here.
"""
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from servedmodel.components import (AutoscalingArgs, ModelArgs, NetworkArgs, ResourcesArgs, ServedModel,
                                    ServedModelArgs)

config = pulumi.Config()
hostname = f"digits.{config.require('domain')}"

cluster = k8s.Provider("cluster", kubeconfig=config.require_secret("kubeconfig"))
namespace = k8s.core.v1.Namespace("models", metadata={"labels": {"team": "ml"}},
                                  opts=pulumi.ResourceOptions(provider=cluster))
certificate = aws.acm.Certificate("digits", domain_name=hostname, validation_method="DNS")
issued = aws.acm.CertificateValidation("digits", certificate_arn=certificate.arn)

digits = ServedModel("digits", ServedModelArgs(
    model=ModelArgs(served_name="digits", model="lenet", compression="int8"),
    out_dir=Path("build") / "digits",
    target="kubernetes",
    resources=ResourcesArgs(cpu="500m", memory="512Mi"),
    autoscaling=AutoscalingArgs(replicas=2, max_replicas=4, metric="cpu"),
    network=NetworkArgs(
        namespace=namespace.metadata.name,             # an Output: the model waits for its namespace
        service_type="LoadBalancer", allow_load_balancer=True,
        tls_certificate_arn=issued.certificate_arn,    # an Output: checked once known
        hostname=hostname,
        auth_token=config.require_secret("authToken"),
        ingress_cidrs=("10.0.0.0/16",),
    ),
), opts=pulumi.ResourceOptions(providers={"kubernetes": cluster}))

pulumi.export("url", digits.url)
pulumi.export("inferUrl", digits.infer_url)
pulumi.export("namespace", namespace.metadata.name)
