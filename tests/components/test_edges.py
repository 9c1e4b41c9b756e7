"""What the controllers and services do with the public edge and the nodes (issue 18): the name a
certificate covers and its DNS record, ALPN for gRPC, draining behind the NLB, IMDS on the GPU
nodes. Each test reads what the program declares for the controller that acts on it; the rules
they check are cited in components/specs.py, components/edge.py and docs/deploy.md."""
from __future__ import annotations

from typing import Any

import pytest

from pulumi_harness import NLB_ZONE_ID, TEST_SECRET, run_program
from servedmodel.components import specs
from servedmodel.components.args import ArgsError, NetworkArgs, ServerArgs, draining_problems
from test_settings import problems

LBC = specs.LBC
SECRETS = {"servedmodel:authToken": TEST_SECRET}
PUBLIC: dict[str, Any] = dict(service_type="LoadBalancer", allow_load_balancer=True, auth_token="t",
              tls_certificate_arn="arn:aws:acm:eu-west-1:123456789012:certificate/0a1b2c3d")


# ---- finding 7: a name the certificate covers, and the record that resolves it ----

def test_a_public_endpoint_needs_a_hostname_and_its_zone():
    with pytest.raises(ArgsError) as err:
        NetworkArgs(**PUBLIC)
    text = str(err.value)
    assert "network.service_type = 'LoadBalancer': a public endpoint with TLS needs a name" in text
    assert "missing: network.hostname, network.dns_zone_id" in text
    NetworkArgs(**PUBLIC, hostname="classifier.example.com", dns_zone_id="Z0123456789ABCDEFGHIJ")


@pytest.mark.parametrize("hostname, needle", [
    ("a1b2-123.eu-west-1.elb.amazonaws.com", "ACM issues no certificate for Amazon-owned domains"),
    ("*.example.com", "a DNS name"),
    ("Classifier.Example.com", "a DNS name"),
    ("localhost", "a DNS name"),
])
def test_a_hostname_no_certificate_can_cover_is_refused(hostname, needle):
    with pytest.raises(ArgsError) as err:
        NetworkArgs(**PUBLIC, hostname=hostname, dns_zone_id="Z0123456789ABCDEFGHIJ")
    assert f"network.hostname = {hostname!r}" in str(err.value) and needle in str(err.value)


def test_the_stack_keys_are_named_in_the_config_error():
    found = problems("prod", {"servedmodel:hostname": "", "servedmodel:dnsZoneId": ""}, SECRETS)
    assert any(p.startswith("servedmodel:serviceType = 'LoadBalancer'") and
               "missing: servedmodel:hostname, servedmodel:dnsZoneId" in p for p in found), found
    found = problems("dev", {"servedmodel:dnsZoneId": "Z0123456789ABCDEFGHIJ"})
    assert any(p.startswith("servedmodel:dnsZoneId") and "only with servedmodel:serviceType LoadBalancer" in p
               for p in found), found


def test_a_route53_alias_points_the_hostname_at_the_nlb(stack_runs):
    run = stack_runs["prod"]
    record = run.one("aws:route53/record:Record")
    service = run.one("kubernetes:core/v1:Service")
    nlb = service.state["status"]["loadBalancer"]["ingress"][0]["hostname"]
    assert record.inputs["name"] == "classifier.models.example.com" and record.inputs["type"] == "A"
    assert record.inputs["zoneId"] == "Z0123456789ABCDEFGHIJ"
    # The NLBs' canonical zone of the region (aws.lb.get_hosted_zone_id, type network), not the
    # Classic/ALB one of aws.elb.get_hosted_zone_id.
    assert record.inputs["aliases"] == [{"name": nlb, "zoneId": NLB_ZONE_ID, "evaluateTargetHealth": True}]
    assert ("aws:lb/getHostedZoneId:getHostedZoneId", {"loadBalancerType": "network"}) in \
        [(t, {k: v for k, v in a.items() if k == "loadBalancerType"}) for t, a in run.invokes]
    # The record takes the NLB's name from the Service: created after it, deleted before it.
    assert record.waits_for(service)
    assert run.outputs["url"]["classifier"] == "https://classifier.models.example.com"


def test_the_hostname_is_on_the_network_args_for_every_consumer():
    """The KEDA HTTP interceptor's hosts (another component) read the same field."""
    net = NetworkArgs(hostname="burst.example.com")
    assert net.hostname == "burst.example.com" and net.service_type == "ClusterIP"


# ---- finding 6: ALPN on the TLS listeners ----

def test_the_nlb_negotiates_h2_for_grpc_and_keeps_http1(model_cache):
    run = run_program("prod", {"servedmodel:grpcPort": 9000}, secrets=SECRETS)
    annotations = run.one("kubernetes:core/v1:Service").inputs["metadata"]["annotations"]
    # Every Service port is a TLS listener, and the one ALPN policy applies to all of them.
    assert annotations[LBC + "ssl-ports"] == "https,grpc"
    assert annotations[LBC + "alpn-policy"] == "HTTP2Optional"
    ports = run.one("kubernetes:core/v1:Service").inputs["spec"]["ports"]
    assert {p["name"] for p in ports} == {"https", "grpc"}


def test_alpn_is_one_of_the_controllers_policies():
    # aws-load-balancer-controller docs/guide/service/annotations.md (alpn-policy): any other
    # value is a reconcile error; None (the default) negotiates nothing, which grpcio refuses.
    assert specs.ALPN_POLICY in ("HTTP1Only", "HTTP2Only", "HTTP2Optional", "HTTP2Preferred", "None")
    assert specs.ALPN_POLICY == "HTTP2Optional"
    assert specs.public_load_balancer_annotations("arn", 0)[LBC + "alpn-policy"] == "HTTP2Optional"


# ---- finding 8: zero dropped requests on rollout and scale-down ----

def test_draining_is_one_consistent_timeline(stack_runs):
    run = stack_runs["prod"]
    pod = run.one("kubernetes:argoproj.io/v1alpha1:Rollout").inputs["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int({e["name"]: e.get("value") for e in pod["containers"][0]["env"]}["SERVEDMODEL_DRAIN_SECONDS"])
    annotations = run.one("kubernetes:core/v1:Service").inputs["metadata"]["annotations"]
    attributes = dict(kv.split("=") for kv in annotations[LBC + "target-group-attributes"].split(","))
    # The pod serves for the NLB's ~2 minutes of late connections, then drains; the NLB keeps the
    # target's connections as long, then closes them; the kubelet waits for all of it.
    assert pre_stop >= specs.NLB_DEREGISTRATION_LAG_SECONDS
    assert int(attributes["deregistration_delay.timeout_seconds"]) == pre_stop + drain
    assert attributes["deregistration_delay.connection_termination.enabled"] == "true"
    assert pod["terminationGracePeriodSeconds"] == pre_stop + drain + specs.TERMINATION_SLACK_SECONDS
    # The pods' readiness follows the NLB's target health (the gate the label makes the LBC inject).
    patch = run.one("kubernetes:core/v1:NamespacePatch")
    assert patch.inputs["metadata"]["labels"] == {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}
    assert patch.inputs["metadata"]["name"] == "servedmodel"
    rollout = run.one("kubernetes:argoproj.io/v1alpha1:Rollout")
    assert rollout.waits_for(patch) and rollout.waits_for(run.one("kubernetes:core/v1:Service"))


def test_a_short_pre_stop_behind_the_nlb_is_refused():
    assert draining_problems(NetworkArgs(**PUBLIC, hostname="a.example.com", dns_zone_id="Z1"),
                             ServerArgs(pre_stop_seconds=120)) == []
    [p] = draining_problems(NetworkArgs(**PUBLIC, hostname="a.example.com", dns_zone_id="Z1"),
                            ServerArgs(pre_stop_seconds=5))
    assert p.field == "server.pre_stop_seconds" and "must be 120 or more" in p.accepted
    found = problems("prod", {"servedmodel:preStopSeconds": 5}, SECRETS)
    assert any(p.startswith("servedmodel:preStopSeconds = 5:") and "servedmodel:serviceType" in p for p in found)
    # In-cluster Services need no such wait (kube-proxy follows the endpoints within seconds).
    assert draining_problems(NetworkArgs(), ServerArgs(pre_stop_seconds=5)) == []


def test_cluster_ip_models_get_no_load_balancer_pieces(stack_runs):
    run = stack_runs["dev"]
    assert not run.of_type("kubernetes:core/v1:NamespacePatch") and not run.of_type("aws:route53/record:Record")
    for svc in run.of_type("kubernetes:core/v1:Service"):
        assert not svc.inputs["metadata"].get("annotations")


# ---- finding 13: IMDSv2, hop limit 1, on the managed GPU nodes ----

def test_managed_gpu_nodes_launch_with_imdsv2_and_hop_limit_1(stack_runs):
    run = stack_runs["prod"]
    template = run.one("aws:ec2/launchTemplate:LaunchTemplate")
    assert template.inputs["metadataOptions"] == {"httpEndpoint": "enabled", "httpTokens": "required",
                                                  "httpPutResponseHopLimit": 1}
    # Only the metadata: EKS refuses a template's instance profile or subnets, and one without a
    # custom AMI keeps the node group's amiType.
    assert not {"iamInstanceProfile", "imageId", "instanceType", "networkInterfaces", "vpcSecurityGroupIds"} \
        & set(template.inputs)
    group = run.one("aws:eks/nodeGroup:NodeGroup")
    # The template's id and its version number (never "$Latest", which EKS rewrites to a number).
    assert group.inputs["launchTemplate"] == {"id": run_id(template), "version": "1"}
    assert group.inputs["amiType"] == "BOTTLEROCKET_x86_64_NVIDIA" and group.waits_for(template)


def run_id(res) -> str:
    """The mock's id of a launch template (what `template.id` resolves to)."""
    return "lt-0" + res.state["arn"].rsplit("/lt-", 1)[1]


def test_karpenter_nodes_state_the_same_metadata_options(stack_runs):
    node_class = stack_runs["burst"].one("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass")
    assert node_class.inputs["spec"]["metadataOptions"] == {"httpEndpoint": "enabled", "httpTokens": "required",
                                                           "httpPutResponseHopLimit": 1}


def test_a_component_user_names_where_the_nlb_lives():
    """ServedModelArgs (programs other than ours): the NLB's subnets come from the cluster's VPC."""
    from pathlib import Path

    from servedmodel.components.args import ModelArgs, ServedModelArgs, ServerArgs

    network = NetworkArgs(**PUBLIC, hostname="a.example.com", dns_zone_id="Z1")
    common: dict[str, Any] = dict(model=ModelArgs(served_name="m", model="mnist-mlp"), out_dir=Path("build/m"),
                                  target="kubernetes",
                  network=network, server=ServerArgs(pre_stop_seconds=120))
    with pytest.raises(ArgsError) as err:
        ServedModelArgs(**common)
    assert "cluster_name = '': a public load balancer's subnets are found in the cluster's VPC" in str(err.value)
    ServedModelArgs(**common, cluster_name="c")
