"""ServedModel composed with resources of the same program.

The namespace the model runs in, the certificate its public endpoint terminates TLS with and the
Route53 zone its name lives in come from this program, and their outputs go straight into the
args: the engine creates (or reads) them first, and the args' checks of those values run when they
are known (a preview, where they are not yet, skips nothing that the update will not check).

    cd examples/composed
    pulumi config set --secret kubeconfig "$(cat ~/.kube/config)"
    pulumi config set --secret authToken "$(openssl rand -hex 24)"
    pulumi config set domain example.com            # a Route53 zone you control
    pulumi config set clusterName my-eks-cluster    # its VPC holds the load balancer's subnets
    pulumi up

ACM issues the certificate once its DNS validation record exists in that zone (the record is
listed in the certificate's `domainValidationOptions`); the load balancer is created with the
issued certificate (`CertificateValidation` waits for it), and ServedModel points digits.<domain>
at it with a Route53 alias record in the zone.
"""
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from servedmodel.components import (
                                    AutoscalingArgs,
                                    ModelArgs,
                                    NetworkArgs,
                                    ResourcesArgs,
                                    ServedModel,
                                    ServedModelArgs,
                                    ServerArgs,
)

config = pulumi.Config()
hostname = f"digits.{config.require('domain')}"

cluster = k8s.Provider("cluster", kubeconfig=config.require_secret("kubeconfig"))
namespace = k8s.core.v1.Namespace("models", metadata={"labels": {"team": "ml"}},
                                  opts=pulumi.ResourceOptions(provider=cluster))
certificate = aws.acm.Certificate("digits", domain_name=hostname, validation_method="DNS")
issued = aws.acm.CertificateValidation("digits", certificate_arn=certificate.arn)
zone = aws.route53.get_zone_output(name=config.require("domain"), private_zone=False)

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
        hostname=hostname, dns_zone_id=zone.zone_id,   # the alias record goes into this zone
        auth_token=config.require_secret("authToken"),
    ),
    # Behind the NLB a deleted pod keeps serving while its target deregisters (docs/deploy.md).
    server=ServerArgs(pre_stop_seconds=120),
    cluster_name=config.require("clusterName"),
), opts=pulumi.ResourceOptions(providers={"kubernetes": cluster}))

pulumi.export("url", digits.url)
pulumi.export("inferUrl", digits.infer_url)
pulumi.export("namespace", namespace.metadata.name)
