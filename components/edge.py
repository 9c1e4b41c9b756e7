"""The public edge of a model: the NLB's subnets (what the NetworkPolicy admits) and its DNS name.

Both are read or declared here so that one source of truth feeds the Service, the NetworkPolicy
and the DNS record:

- The NLB's subnets. The AWS Load Balancer Controller would discover them itself (subnets tagged
  kubernetes.io/role/elb=1, one per zone, the lowest id winning: aws-load-balancer-controller
  docs/deploy/subnet_discovery.md); the program resolves them the same way (or takes
  `load_balancer_subnet_ids`) and pins them on the Service (`aws-load-balancer-subnets`), so the
  NetworkPolicy can admit exactly their CIDRs. With client IP preservation off (the default for
  IP targets, stated on the target group) the NLB's forwarded connections and health checks
  come from its private addresses in those subnets (ELB user guide, "Client IP preservation";
  the controller admits the same ranges in its own security group rules,
  docs/guide/service/nlb.md). The VPC range would admit every pod of every namespace: with the VPC
  CNI they all have addresses in it.
- The name. ACM issues no certificate for the NLB's own *.elb.amazonaws.com name, so a client
  that verifies the hostname can only reach the endpoint by a name in a zone we own: a Route53
  alias A record, declared here, points `hostname` at the NLB (the zone id of NLBs in the region
  from aws.lb.get_hosted_zone_id(load_balancer_type="network"); the Classic/ALB zone of
  aws.elb.get_hosted_zone_id would be wrong for an NLB).
"""
from __future__ import annotations

from typing import Any, Sequence

import pulumi
import pulumi_aws as aws

# The tag that marks a VPC's public subnets for internet-facing load balancers (EKS, LBC).
PUBLIC_SUBNET_TAG = "kubernetes.io/role/elb"


def one_per_zone(subnets: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The subnet with the lowest id in each zone, sorted by id (the controller's own choice)."""
    chosen: dict[str, dict[str, str]] = {}
    for s in sorted(subnets, key=lambda s: s["id"]):
        chosen.setdefault(s["zone"], s)
    return sorted(chosen.values(), key=lambda s: s["id"])


def _describe(ids: Sequence[str], parent: pulumi.Resource) -> pulumi.Output[list[dict[str, str]]]:
    invoke = pulumi.InvokeOutputOptions(parent=parent)
    found = [aws.ec2.get_subnet_output(id=i, opts=invoke) for i in ids]
    return pulumi.Output.all(*[pulumi.Output.all(s.id, s.availability_zone, s.cidr_block) for s in found]).apply(
        lambda rows: [{"id": i, "zone": z, "cidr": c} for i, z, c in rows])


def load_balancer_subnets(cluster_name: pulumi.Input[str], given: Sequence[str],
                          parent: pulumi.Resource) -> pulumi.Output[list[dict[str, str]]]:
    """The NLB's subnets ({id, zone, cidr}): `given`, or the cluster VPC's subnets tagged
    kubernetes.io/role/elb=1, one per zone. None tagged stops the program with what to do.
    `cluster_name` may be another resource's output."""
    if given:
        return _describe(list(given), parent)
    invoke = pulumi.InvokeOutputOptions(parent=parent)
    cluster = aws.eks.get_cluster_output(name=cluster_name, opts=invoke)
    # The output form resolves the Outputs inside its filters; pulumi-aws annotates them plain.
    tagged = aws.ec2.get_subnets_output(filters=[
        {"name": "vpc-id", "values": [cluster.vpc_config.vpc_id]},  # pyright: ignore[reportArgumentType]
        {"name": f"tag:{PUBLIC_SUBNET_TAG}", "values": ["1"]},
    ], opts=invoke)

    def describe(known_name: str, ids: list[str]) -> Any:
        if not ids:
            raise pulumi.RunError(
                f"cluster {known_name!r}: no subnet of its VPC is tagged {PUBLIC_SUBNET_TAG}=1 for the public load "
                "balancer: tag the public subnets, or list them in servedmodel:loadBalancerSubnetIds "
                "(NetworkArgs.load_balancer_subnet_ids)")
        return _describe(sorted(ids), parent).apply(one_per_zone)

    # The message names the cluster: resolved with the ids (it may be another resource's output).
    return pulumi.Output.all(cluster_name, tagged.ids).apply(lambda v: describe(v[0], v[1]))


def dns_record(name: str, hostname: pulumi.Input[str], zone_id: pulumi.Input[str],
               load_balancer_hostname: pulumi.Input[str], parent: pulumi.Resource) -> aws.route53.Record:
    """A Route53 alias A record: `hostname` -> the NLB (health of its targets evaluated). It takes
    the load balancer's hostname from the Service's status, so the engine creates it after the
    Service (whose await lasts until the NLB has a name) and deletes it before."""
    zone = aws.lb.get_hosted_zone_id_output(load_balancer_type="network",
                                            opts=pulumi.InvokeOutputOptions(parent=parent))
    return aws.route53.Record(
        f"{name}-dns", zone_id=zone_id, name=hostname, type="A",
        aliases=[{"name": load_balancer_hostname, "zone_id": zone.id, "evaluate_target_health": True}],
        opts=pulumi.ResourceOptions(parent=parent))

