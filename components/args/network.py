"""NetworkArgs: where the model is reachable and who may reach it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import pulumi

from servedmodel.models.contract import CLIENT_NAME_PATTERN, DEFAULT_CLIENT, TOKENS_PER_CLIENT
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


_CLIENT_NAME = re.compile(CLIENT_NAME_PATTERN)
# A bearer token as the server reads it from `Authorization: Bearer <token>` (RFC 6750 b64token
# characters); long enough that its unsalted SHA-256 in the cluster cannot be searched back.
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
MIN_TOKEN_LENGTH = 16
# An OIDC scope, group or role name: one word without spaces or quotes (the server's own rule).
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


def client_tokens(clients: Mapping[str, Any]) -> dict[str, list[str]]:
    """`servedmodel:clients` as client name -> its tokens (one, or the current and the next)."""
    return {name: [tokens] if isinstance(tokens, str) else list(tokens) for name, tokens in clients.items()}


def _clients(value: Any) -> list[tuple[Any, str]]:
    """Problems of the clients map, each naming the client, never a token (the map is a secret)."""
    if not isinstance(value, Mapping) or not value:
        return [("[secret]", f"a map of client name -> token (or a list of {TOKENS_PER_CLIENT}: the current and "
                             "the next), e.g. {\"billing\": \"<token>\"}; set it with `pulumi config set --secret "
                             "--path 'servedmodel:clients.billing' <token>`")]
    out: list[tuple[Any, str]] = []
    seen: dict[str, str] = {}
    for name, tokens in value.items():
        if not isinstance(name, str) or not _CLIENT_NAME.match(name):
            out.append((name, "a client name is letters, digits, '_.@-' (at most 64, starting with a letter or "
                              "digit)"))
            continue
        listed = [tokens] if isinstance(tokens, str) else tokens
        if not isinstance(listed, (list, tuple)) or not 1 <= len(listed) <= TOKENS_PER_CLIENT:
            out.append((name, f"each client has one token, or a list of {TOKENS_PER_CLIENT} (the current and the "
                              "next, during a rotation)"))
            continue
        for token in listed:
            if not (isinstance(token, str) and len(token) >= MIN_TOKEN_LENGTH and _TOKEN.match(token)):
                out.append((name, f"a token is at least {MIN_TOKEN_LENGTH} characters of A-Z a-z 0-9 -._~+/ (e.g. "
                                  "`openssl rand -hex 32`); the server keeps only its SHA-256"))
            elif token in seen:
                out.append((name, f"a token of client {seen[token]!r} too: a token names one client"))
            else:
                seen[token] = name
    return out


def _https_url(value: Any) -> Optional[str]:
    if value and not (isinstance(value, str) and re.match(r"^https://[^\s/?#]+(/[^\s?#]*)?$", value)):
        return "the issuer's https URL exactly as the tokens' `iss` says it (e.g. https://login.example.com/realms/api)"
    return None


def _scope(value: Any) -> Optional[str]:
    if value and not (isinstance(value, str) and _SCOPE.match(value)):
        return "one scope, group or role name (no spaces or quotes), or empty for none"
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
                     "@{network.dns_zone_id}, a client identity (the secret @{network.auth_token}, the secret "
                     "@{network.clients} or @{network.oidc_issuer}) and @{server.pre_stop_seconds} of "
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
        None, f"Bearer token the server requires on model routes, the client \"{DEFAULT_CLIENT}\" (a Kubernetes Secret "
              "mounted as a file the server reads through `SERVEDMODEL_AUTH_TOKEN_FILE`; never an environment value). "
              "@{network.service_type} LoadBalancer needs a client identity - this, @{network.clients} or "
              "@{network.oidc_issuer}. Must be set with `pulumi config set --secret`; a plain-text value is rejected.",
        key="authToken", secret=True, repr=False, compare=False)
    clients: Optional[pulumi.Input[dict[str, list[str]]]] = setting(
        None, "Named callers - client name -> bearer token, or a list of two tokens (the current and the next) "
              "during a rotation, e.g. `pulumi config set --secret --path 'servedmodel:clients.billing' <token>`. "
              "The cluster gets only a Secret of their SHA-256 digests (`SERVEDMODEL_CLIENTS_FILE`, mounted "
              "read-only); a change updates that Secret and rolls the pods. Each token at least 16 characters, one "
              f"client per token; with @{{network.auth_token}} no client may be named \"{DEFAULT_CLIENT}\". Secret "
              "only (docs/operations.md, \"Identity and audit\").",
        secret=True, repr=False, compare=False, check=_clients)
    oidc_issuer: str = setting(
        "", "OIDC/JWT callers - the identity provider's issuer URL (https, as in the tokens' `iss`; the key set "
            "comes from its discovery document), `SERVEDMODEL_OIDC_ISSUER`. Needs @{network.oidc_audience}. The pods "
            "fetch the issuer's keys: the NetworkPolicy restricts ingress only. Empty - no OIDC.",
        check=_https_url)
    oidc_audience: str = setting(
        "", "The audience (`aud`) the tokens for this API carry, `SERVEDMODEL_OIDC_AUDIENCE`. Needs "
            "@{network.oidc_issuer}.")
    oidc_scope: str = setting(
        "", "A scope, group or role every OIDC caller must carry (403 without it), `SERVEDMODEL_OIDC_SCOPE`. Empty - "
            "any token of the issuer for the audience.", check=_scope)
    tls_certificate_arn: pulumi.Input[str] = setting(
        "", "ACM certificate ARN the public load balancer terminates TLS with (an NLB through the AWS Load Balancer "
            "Controller). Required with serviceType LoadBalancer, together with a client identity.",
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
            # Issue 21: who may call a public endpoint is named - a token (the client "default"),
            # named clients, or OIDC callers; and every call travels in TLS.
            identity = self.auth_token is not None or self.clients is not None or bool(self.oidc_issuer)
            missing = [ref for ref, ok in (("@{network.auth_token}, @{network.clients} or @{network.oidc_issuer}",
                                            identity),
                                           ("@{network.tls_certificate_arn}", given(self.tls_certificate_arn)))
                       if not ok]
            if missing:
                c.bad("service_type", "a public endpoint needs a client identity (the secret @{network.auth_token}, "
                                      "the secret @{network.clients} or @{network.oidc_issuer}) and "
                                      "@{network.tls_certificate_arn} (an ACM certificate the NLB terminates TLS "
                                      "with); "
                                      f"missing: {'; '.join(missing)}")
        if c.ok("oidc_issuer", "oidc_audience") and bool(self.oidc_issuer) != bool(self.oidc_audience):
            c.bad("oidc_issuer" if not self.oidc_issuer else "oidc_audience",
                  "OIDC needs both @{network.oidc_issuer} (the tokens' iss) and @{network.oidc_audience} (their aud)")
        if (self.auth_token is not None and isinstance(self.clients, Mapping) and c.ok("clients")
                and DEFAULT_CLIENT in self.clients):
            c.bad("clients", f"the client {DEFAULT_CLIENT!r} is the one @{{network.auth_token}} names: rename it, or "
                             "move that token into @{network.clients}", value=DEFAULT_CLIENT)
        if self.oidc_scope and c.ok("oidc_scope") and not self.oidc_issuer:
            c.bad("oidc_scope", "a required scope is for OIDC callers: set @{network.oidc_issuer} and "
                                "@{network.oidc_audience}, or leave it empty")
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
