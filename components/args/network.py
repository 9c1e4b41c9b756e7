"""NetworkArgs: where the model is reachable and who may reach it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import pulumi

from servedmodel.models.contract import PORT as SERVER_PORT

from ..inputs import given
from ..karpenter import wrong_ids
from ..specs import NLB_DEREGISTRATION_LAG_SECONDS
from .checking import ArgsGroup, Checker, cidr, dns_label, each, integer, one_of
from .setting import setting

SERVICE_TYPES = ("ClusterIP", "LoadBalancer")
# An ACM certificate (TLS at the load balancer): arn:<partition>:acm:<region>:<account>:certificate/<id>
_ACM_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]+$")
# A DNS name of two or more labels (RFC 1123, lowercase), at most 253 characters.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# ACM refuses certificates for Amazon-owned domains (ACM user guide, troubleshooting-requests.html),
# so a hostname under them can never be covered by the endpoint's certificate.
AMAZON_OWNED_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".cloudfront.net", ".elasticbeanstalk.com")
_ZONE_ID = re.compile(r"^Z[A-Z0-9]{1,32}$")


def _certificate_arn(value: Any) -> Optional[str]:
    if value and not (isinstance(value, str) and _ACM_ARN.match(value)):
        return "must be an ACM certificate ARN such as arn:aws:acm:eu-west-1:123456789012:certificate/<id>"
    return None


def _hostname(value: Any) -> Optional[str]:
    if value and not (isinstance(value, str) and _HOSTNAME.match(value)):
        return "must be a DNS name such as model.example.com (lowercase labels), or empty for none"
    if value and value.endswith(AMAZON_OWNED_SUFFIXES):
        return ("a name in a zone you own: ACM issues no certificate for Amazon-owned domains such as "
                "*.amazonaws.com")
    return None


def _zone_id(value: Any) -> Optional[str]:
    if value and not (isinstance(value, str) and _ZONE_ID.match(value)):
        return "a Route53 hosted zone id such as Z0123456789ABCDEFGHIJ"
    return None


def _subnet_ids(value: Any) -> list[tuple[Any, str]]:
    wrong = wrong_ids("subnet", value)
    return [(wrong, "subnet ids such as subnet-0123abcd, one per availability zone; empty = the cluster VPC's "
                    "subnets tagged kubernetes.io/role/elb=1")] if wrong else []


@dataclass(frozen=True)
class NetworkArgs(ArgsGroup):
    """Where the model is reachable and who may reach it.

    `namespace`, `tls_certificate_arn`, `hostname` and `dns_zone_id` accept another resource's
    outputs (a Namespace's name, an ACM certificate's ARN, a Route53 zone's id): their checks then
    run when the value is known.
    """

    GROUP = "network"
    STACK_GROUP = "network"

    namespace: pulumi.Input[str] = setting("default", "Existing Kubernetes namespace the model is deployed into.",
                                           check=dns_label("must be a DNS label (lowercase letters, digits, '-')"))
    service_type: str = setting(
        "ClusterIP", "Kubernetes Service type - ClusterIP or LoadBalancer. A LoadBalancer is public - it needs "
                     "@{network.allow_load_balancer}, @{network.tls_certificate_arn}, @{network.hostname} and "
                     "@{network.dns_zone_id}, the secret @{network.auth_token} and @{server.pre_stop_seconds} of "
                     f"{NLB_DEREGISTRATION_LAG_SECONDS} or more, and the AWS Load Balancer Controller in the cluster "
                     "(docs/deploy.md).",
        check=one_of(SERVICE_TYPES))
    allow_load_balancer: bool = setting(False, "Explicit opt-in to a public LoadBalancer Service; the policy pack "
                                               "rejects a LoadBalancer without it.")
    ingress_namespaces: tuple[str, ...] = setting(
        (), "Namespaces whose pods may reach the model (NetworkPolicy). Pods of the model's own namespace are always "
            "admitted; add the Prometheus namespace so /metrics can be scraped.",
        check=each(dns_label("each entry must be a namespace name (DNS label)")))
    ingress_cidrs: tuple[str, ...] = setting(
        (), "Further CIDR blocks admitted by the NetworkPolicy. A LoadBalancer's own subnets are admitted without "
            "listing them; never list the VPC range - with the VPC CNI every pod in every namespace has an address "
            "in it.", check=each(cidr))
    local_port: int = setting(8080, "Host port of the first model on the docker target (127.0.0.1); further models "
                                    "use the next ports.", check=integer(1024, 65535))
    auth_token: Optional[pulumi.Input[str]] = setting(
        None, "Bearer token the server requires on model routes (a Kubernetes Secret mounted as a file the server "
              "reads through `SERVEDMODEL_AUTH_TOKEN_FILE`; never an environment value). Required with "
              "@{network.service_type} LoadBalancer. Must be set with `pulumi config set --secret`; a plain-text "
              "value is rejected.",
        key="authToken", secret=True, repr=False, compare=False)
    tls_certificate_arn: pulumi.Input[str] = setting(
        "", "ACM certificate ARN the public load balancer terminates TLS with (an NLB through the AWS Load Balancer "
            "Controller). Required with serviceType LoadBalancer, together with the secret @{network.auth_token}.",
        check=_certificate_arn)
    grpc_port: int = setting(
        0, "The server's gRPC port (KServe V2 gRPC and grpc.health.v1). 0 keeps gRPC off. When set - a container "
           "port, a Service port named grpc (appProtocol grpc) on the same number, gRPC readiness/liveness probes "
           "and the NetworkPolicy rule; on the docker target it is published on 127.0.0.1 (further models use the "
           "next ports).", check=integer(0, 65535))
    hostname: pulumi.Input[str] = setting(
        "", "The endpoint's public DNS name (e.g. classifier.example.com), covered by @{network.tls_certificate_arn}. "
            "Required with @{network.service_type} LoadBalancer - the url and inferUrl outputs become "
            "https://<hostname> and a Route53 alias record in @{network.dns_zone_id} points it at the NLB. With "
            "ClusterIP and @{elastic.keda_http} it is the public name the interceptor routes, behind your "
            "ingress.", check=_hostname)
    dns_zone_id: pulumi.Input[str] = setting(
        "", "Route53 hosted zone id (Z...) holding @{network.hostname}; the program declares the alias record "
            "there. Required with @{network.service_type} LoadBalancer.", check=_zone_id)
    load_balancer_subnet_ids: tuple[str, ...] = setting(
        (), "Subnets of the public NLB, one per availability zone (@{network.service_type} LoadBalancer). Empty - "
            "the cluster VPC's subnets tagged kubernetes.io/role/elb=1, one per zone. Pinned on the Service; the "
            "NetworkPolicy admits their CIDRs (the NLB's forwarded connections and health checks), never the VPC "
            "range.", check=_subnet_ids)

    def rules(self, c: Checker) -> None:
        public = self.service_type == "LoadBalancer"
        if public and c.ok("allow_load_balancer") and not self.allow_load_balancer:
            c.bad("service_type", "a LoadBalancer is public: set @{network.allow_load_balancer} to true to opt in, "
                                  "or use ClusterIP")
        if public:
            missing = [ref for ref, ok in (("@{network.auth_token}", self.auth_token is not None),
                                           ("@{network.tls_certificate_arn}", given(self.tls_certificate_arn)))
                       if not ok]
            if missing:
                c.bad("service_type", "a public endpoint needs both @{network.auth_token} (a secret) and "
                                      "@{network.tls_certificate_arn} (an ACM certificate the NLB terminates TLS "
                                      "with); "
                                      f"missing: {', '.join(missing)}")
        if given(self.tls_certificate_arn) and c.ok("tls_certificate_arn") and not public:
            c.bad("tls_certificate_arn", "TLS terminates at the load balancer: only with @{network.service_type} "
                                         "LoadBalancer (leave it empty for ClusterIP)")
        # Issue 18, finding 7: an endpoint with TLS needs a name its certificate can cover, and a
        # record that resolves it (components/edge.py). A hostname without a LoadBalancer: only as the
        # scale-to-zero interceptor's public name (components/args/rules.py, _hostname_names_a_public_entry).
        if public:
            missing = [ref for ref, ok in (("@{network.hostname}", given(self.hostname)),
                                           ("@{network.dns_zone_id}", given(self.dns_zone_id))) if not ok]
            if missing:
                c.bad("service_type", "a public endpoint with TLS needs a name its certificate covers: "
                                      "@{network.hostname} (the url becomes https://<hostname>) and "
                                      "@{network.dns_zone_id} (the Route53 zone whose alias record points it at "
                                      f"the NLB); missing: {', '.join(missing)}")
        elif given(self.dns_zone_id) and c.ok("dns_zone_id"):
            c.bad("dns_zone_id", "the alias record points at the load balancer: only with @{network.service_type} "
                                 "LoadBalancer (leave it empty for ClusterIP)")
        if self.load_balancer_subnet_ids and c.ok("load_balancer_subnet_ids") and not public:
            c.bad("load_balancer_subnet_ids", "the NLB's subnets: only with @{network.service_type} LoadBalancer")
        if c.ok("grpc_port") and self.grpc_port:
            if self.grpc_port < 1024:
                c.bad("grpc_port", "must be 0 (gRPC off) or a port between 1024 and 65535")
            elif self.grpc_port in (SERVER_PORT, self.local_port):
                c.bad("grpc_port", f"must differ from the server's HTTP port ({SERVER_PORT}) and from "
                                   "@{network.local_port}")
