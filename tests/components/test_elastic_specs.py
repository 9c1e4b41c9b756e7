"""Karpenter, KEDA and the cold-start budget as pure specs: every object strictly valid against
its upstream CRD schema (tests/crds/), the CRDs' CEL rules that concern these objects checked
explicitly, bad args refused with every problem named."""
from __future__ import annotations

import re
from typing import Any

import pytest

from servedmodel.components import coldstart, karpenter, keda, specs
from tests.crds.validate import validate_custom_resource

SUPPORTED = ("g4dn", "g5", "g6", "g6e", "p4d", "p5")


def pool_args(**kw):
    base: dict[str, Any] = dict(cluster_name="demo", pool_label="classifier-gpu", families=("g5", "g6"),
                                supported_families=SUPPORTED,
                node_role="KarpenterNodeRole-demo")
    return karpenter.KarpenterPoolArgs(**(base | kw))


def nodepool(args):
    return {"apiVersion": karpenter.API_NODEPOOL, "kind": "NodePool", "metadata": {"name": "classifier-gpu"},
            "spec": karpenter.node_pool_spec(args, "classifier-gpu")}


def nodeclass(args):
    return {"apiVersion": karpenter.API_NODECLASS, "kind": "EC2NodeClass", "metadata": {"name": "classifier-gpu"},
            "spec": karpenter.node_class_spec(args)}


def check_nodepool_cel(obj):
    """The NodePool CRD's CEL rules that our objects can meet (tests/crds/karpenter.sh/v1/NodePool.json)."""
    for req in obj["spec"]["template"]["spec"]["requirements"]:
        if req["operator"] == "In":
            assert req["values"], req
        if req["operator"] in ("Gt", "Lt", "Gte", "Lte"):
            assert len(req["values"]) == 1 and int(req["values"][0]) >= 0, req
        assert req["key"] not in ("karpenter.sh/nodepool", "kubernetes.io/hostname")
        assert req["key"].startswith(("karpenter.k8s.aws/instance-", "karpenter.sh/capacity-type", "kubernetes.io/"))
    for label in obj["spec"]["template"]["metadata"]["labels"]:
        assert not label.split("/")[0].endswith(("karpenter.sh", "karpenter.k8s.aws")), label
    assert all(("schedule" in b) == ("duration" in b) for b in obj["spec"]["disruption"]["budgets"])


def check_nodeclass_cel(obj):
    spec = obj["spec"]
    assert ("role" in spec) != ("instanceProfile" in spec)
    terms = spec["amiSelectorTerms"]
    assert len(terms) == 1 and set(terms[0]) == {"alias"}  # an alias stands alone
    assert re.match(r"^[a-zA-Z0-9]+@.+$", terms[0]["alias"]) and terms[0]["alias"].split("@")[0] == "bottlerocket"
    for key in ("subnetSelectorTerms", "securityGroupSelectorTerms"):
        assert spec[key] and all(("tags" in t) != ("id" in t) for t in spec[key])
        assert all(k and v for t in spec[key] for k, v in t.get("tags", {}).items())
    assert all(k and not k.startswith("kubernetes.io/cluster")
               and k not in ("karpenter.sh/nodepool", "eks:eks-cluster-name")
               for k in spec["tags"])
    assert all("volumeSize" in b["ebs"] or "snapshotID" in b["ebs"] for b in spec["blockDeviceMappings"])


@pytest.mark.parametrize("kw", [{}, {"capacity_types": ("spot", "on-demand"), "subnet_ids": ("subnet-0a1b",),
                                     "security_group_ids": ("sg-0a1b", "sg-0c2d"), "ami_alias": "bottlerocket@v1.26.2",
                                     "consolidation_policy": "WhenEmptyOrUnderutilized", "consolidate_after": "1h30m",
                                     "disruption_budget_nodes": "20%", "gpu_limit": 16}])
def test_karpenter_objects_are_strictly_valid(kw):
    args = pool_args(**kw)
    for obj, cel in ((nodepool(args), check_nodepool_cel), (nodeclass(args), check_nodeclass_cel)):
        validate_custom_resource(obj)
        cel(obj)


def test_nodepool_admits_only_the_given_gpu_families_and_taints_like_the_managed_pool():
    spec = nodepool(pool_args(families=("g6", "g5"), capacity_types=("spot",)))["spec"]
    reqs = {r["key"]: r for r in spec["template"]["spec"]["requirements"]}
    assert reqs["karpenter.k8s.aws/instance-family"]["values"] == ["g5", "g6"]
    assert reqs["karpenter.sh/capacity-type"]["values"] == ["spot"]
    assert reqs["karpenter.k8s.aws/instance-gpu-manufacturer"]["values"] == ["nvidia"]
    assert spec["template"]["spec"]["taints"] == [specs.GPU_TAINT]
    assert spec["template"]["metadata"]["labels"][specs.POOL_LABEL] == "classifier-gpu"
    assert spec["limits"] == {"nvidia.com/gpu": 4}
    assert spec["disruption"] == {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "5m",
                                  "budgets": [{"nodes": "1"}]}
    # Pods tolerate exactly this taint (specs.gpu_tolerations is what ModelService uses).
    tol = specs.gpu_tolerations(1)[0]
    taint = specs.GPU_TAINT
    assert (tol["key"], tol["value"], tol["effect"]) == (taint["key"], taint["value"], taint["effect"])


def test_nodeclass_defaults_to_discovery_tags_and_takes_ids_when_given():
    spec = nodeclass(pool_args())["spec"]
    assert spec["subnetSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": "demo"}}]
    assert spec["securityGroupSelectorTerms"] == [{"tags": {"karpenter.sh/discovery": "demo"}}]
    assert spec["amiSelectorTerms"] == [{"alias": "bottlerocket@latest"}] and spec["role"] == "KarpenterNodeRole-demo"
    spec = nodeclass(pool_args(subnet_ids=("subnet-1", "subnet-2"), security_group_ids=("sg-9",)))["spec"]
    assert spec["subnetSelectorTerms"] == [{"id": "subnet-1"}, {"id": "subnet-2"}]
    assert spec["securityGroupSelectorTerms"] == [{"id": "sg-9"}]


def test_bad_karpenter_args_name_every_problem():
    with pytest.raises(ValueError) as raised:
        pool_args(families=("p3", "g5"), capacity_types=("reserved",), gpu_limit=0, consolidation_policy="Always",
                  consolidate_after="5 minutes", disruption_budget_nodes="lots", ami_alias="al2023@latest",
                  subnet_ids=("my-subnet",), node_role="")
    text = str(raised.value)
    for needle in ("['p3'] cannot run the serving image", "capacity_types", "gpu_limit 0",
                   "consolidation_policy 'Always'",
                   "consolidate_after '5 minutes'", "disruption_budget_nodes 'lots'", "ami_alias 'al2023@latest'",
                   "subnet ids ['my-subnet']", "node_role is required"):
        assert needle in text, needle


def keda_args(**kw):
    base: dict[str, Any] = dict(namespace="servedmodel", prometheus_url="http://prometheus-operated.monitoring.svc:9090",
                min_replicas=0, max_replicas=4, http=True, wait_seconds=420)
    return keda.KedaArgs(**(base | kw))


def scaled_object(args, http_name="classifier"):
    return {"apiVersion": keda.API_SCALEDOBJECT, "kind": "ScaledObject",
            "metadata": {"name": "classifier", "namespace": "servedmodel"},
            "spec": keda.scaled_object_spec(args, "classifier-deploy-1a2b3c4", http_name if args.http else None)}


@pytest.mark.parametrize("kw", [{}, {"metric": "queue", "target_queue_ms": 250},
                                {"min_replicas": 1, "http": False, "wait_seconds": 0}])
def test_scaled_object_is_strictly_valid(kw):
    obj = scaled_object(keda_args(**kw))
    validate_custom_resource(obj)
    spec = obj["spec"]
    # The ScaledObject CRD's CEL rule.
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]


def test_inflight_trigger_queries_the_servers_own_metric_per_pod():
    trig = keda.prometheus_trigger(keda_args(target_inflight=8), "classifier-deploy-1a2b3c4")
    assert trig["metricType"] == "AverageValue" and trig["metadata"]["threshold"] == "8"
    assert trig["metadata"]["query"] == ('sum(servedmodel_inflight_requests{namespace="servedmodel",'
                                         'pod=~"classifier-deploy-1a2b3c4-[a-z0-9]+-[a-z0-9]+"})')
    q = keda.prometheus_trigger(keda_args(metric="queue", target_queue_ms=250), "d")
    assert q["metricType"] == "Value" and q["metadata"]["threshold"] == "0.25"
    assert "servedmodel_queue_duration_seconds_sum" in q["metadata"]["query"]
    assert "servedmodel_queue_duration_seconds_count" in q["metadata"]["query"]


def test_metric_names_in_the_queries_are_the_ones_the_server_exports():
    from servedmodel.serving.metrics import Metrics

    exported = Metrics("m", "v1").render(inflight=0, queue_depth=0, ready=True).decode()
    for args in (keda_args(), keda_args(metric="queue")):
        query = keda.prometheus_trigger(args, "d")["metadata"]["query"]
        for name in re.findall(r"(servedmodel_[a-z_]+)\{", query):
            assert re.search(rf"^{name}[{{ ]", exported, re.M), name


def test_scale_to_zero_wakes_on_the_interceptor_and_the_add_on_creates_no_second_scaledobject():
    args = keda_args()
    spec = scaled_object(args)["spec"]
    assert spec["minReplicaCount"] == 0 and spec["cooldownPeriod"] == 300 and spec["pollingInterval"] == 15
    push = spec["triggers"][0]
    assert push == {"type": "external-push", "name": "servedmodel-http", "metadata": {
        "scalerAddress": "keda-add-ons-http-external-scaler.keda:9090", "httpScaledObject": "classifier"}}
    hso = {"apiVersion": keda.API_HTTPSCALEDOBJECT, "kind": "HTTPScaledObject",
           "metadata": {"name": "classifier", "namespace": "servedmodel",
                        "annotations": {keda.SKIP_SCALEDOBJECT_ANNOTATION: "true"}},
           "spec": keda.http_scaled_object_spec(args, "classifier-deploy-1a2b3c4", "classifier-svc-1a2b3c4",
                                                ["classifier-hold.servedmodel.svc.cluster.local"])}
    validate_custom_resource(hso)
    # The HTTPScaledObject CRD's CEL rule on scaleTargetRef: exactly one of port / portName.
    ref = hso["spec"]["scaleTargetRef"]
    assert ("port" in ref) != ("portName" in ref)
    assert hso["spec"]["timeouts"] == {"conditionWait": "420s"}
    assert hso["spec"]["scalingMetric"]["concurrency"]["targetValue"] == args.target_inflight


def test_bad_keda_args_name_every_problem():
    with pytest.raises(ValueError) as raised:
        keda.KedaArgs(namespace="Servedmodel", prometheus_url="prometheus:9090", min_replicas=0, max_replicas=0,
                      metric="cpu", http=False, polling_seconds=0)
    text = str(raised.value)
    for needle in ("metric 'cpu'", "max_replicas 0", "min_replicas 0 needs http", "polling_seconds 0",
                   "prometheus_url 'prometheus:9090'", "namespace 'Servedmodel'"):
        assert needle in text, needle
    with pytest.raises(ValueError, match="wait_seconds 0"):
        keda_args(wait_seconds=0)


STARTUP = {"load_seconds": 0.4, "warmup_seconds": 0.6}


def test_cold_start_budget_adds_node_pull_and_start():
    layers = {"devices": {"cuda": {"runtime_compressed_bytes": 1_000_000_000}}}
    cold = coldstart.budget(device="cuda", startup=STARTUP, model_layer_bytes=200_000_000, bandwidth_mb_per_s=100,
                            needs_node=True, families=("g5", "p4d"), provisioner="karpenter", layers_table=layers)
    assert cold.node_seconds == coldstart.NODE_SECONDS["p4d"]  # the slowest admitted family
    assert cold.pull_seconds == pytest.approx(12.0)  # 1.2 GB at 100 MB/s
    assert cold.start_seconds == pytest.approx(coldstart.PROCESS_SECONDS["cuda"] + 1.0)
    assert cold.as_output() == {"nodeSeconds": 240.0, "pullSeconds": 12.0, "startSeconds": 16.0, "decryptSeconds": 0.0,
                                "totalSeconds": 268.0}
    managed = coldstart.budget(device="cuda", startup=STARTUP, model_layer_bytes=0, bandwidth_mb_per_s=100,
                               needs_node=True, families=("g5",), provisioner="managed", layers_table=layers)
    assert managed.node_seconds == coldstart.NODE_SECONDS["g5"] + coldstart.MANAGED_EXTRA_SECONDS
    cpu = coldstart.budget(device="cpu", startup=STARTUP, model_layer_bytes=0, bandwidth_mb_per_s=50, needs_node=False)
    assert cpu.node_seconds == 0
    assert cpu.pull_seconds == pytest.approx(coldstart.runtime_layer_bytes("cpu") / 50e6)
    override = coldstart.budget(device="cuda", startup=STARTUP, model_layer_bytes=0, bandwidth_mb_per_s=100,
                                needs_node=True, families=("g5",), node_override=45, layers_table=layers)
    assert override.node_seconds == 45


def test_an_encrypted_model_adds_its_decryption_and_with_kms_one_unwrap_to_the_start():
    """Issue 21: the build measures the model's AES-256-GCM decryption (startup["decrypt_seconds"]);
    a kms model also unwraps its data key through the pod's identity once (KMS_UNWRAP_SECONDS)."""
    sealed = STARTUP | {"decrypt_seconds": 0.25}
    plain = coldstart.budget(device="cpu", startup=sealed, model_layer_bytes=0, bandwidth_mb_per_s=50, needs_node=False)
    local = coldstart.budget(device="cpu", startup=sealed, model_layer_bytes=0, bandwidth_mb_per_s=50,
                             needs_node=False, encryption="local")
    kms = coldstart.budget(device="cpu", startup=sealed, model_layer_bytes=0, bandwidth_mb_per_s=50,
                           needs_node=False, encryption="kms")
    assert plain.decrypt_seconds == 0 and local.decrypt_seconds == pytest.approx(0.25)
    assert kms.decrypt_seconds == pytest.approx(0.25 + coldstart.KMS_UNWRAP_SECONDS)
    assert kms.start_seconds == pytest.approx(plain.start_seconds + 0.25 + coldstart.KMS_UNWRAP_SECONDS)
    assert kms.as_output()["decryptSeconds"] == pytest.approx(1.25)
    assert kms.total_seconds == pytest.approx(plain.total_seconds + 1.25)
    with pytest.raises(ValueError, match="decrypt_seconds"):
        coldstart.budget(device="cpu", startup=STARTUP, model_layer_bytes=0, bandwidth_mb_per_s=50,
                         needs_node=False, encryption="kms")


def test_readiness_timeouts_take_the_budgets_pull_and_node_parts():
    from servedmodel.components.timeouts import STARTUP_PROBE_PERIOD, readiness_timeouts

    big = coldstart.ColdStart(node_seconds=240, pull_seconds=30, start_seconds=100)
    t = readiness_timeouts(big.start_seconds, "cuda", 4, pull_seconds=big.pull_seconds, node_seconds=big.node_seconds)
    assert t.pod_seconds == 240 + 30 + t.startup_budget_seconds
    assert t.startup_budget_seconds == t.startup_failure_threshold * STARTUP_PROBE_PERIOD >= 100
    assert t.progress_deadline_seconds >= t.pod_seconds
    cpu = readiness_timeouts(3.0, "cpu", 1, pull_seconds=1.7, node_seconds=0)
    assert cpu.pod_seconds == 2 + cpu.startup_budget_seconds  # the pull rounded up, no node
    # Without the budget's parts, the per-device allowances (components/timeouts.py) apply.
    assert readiness_timeouts(3.0, "cpu", 1).pod_seconds > cpu.pod_seconds


def test_cold_start_refuses_what_it_does_not_know():
    with pytest.raises(ValueError, match=r"no node provisioning time for instance families \['x9'\]"):
        coldstart.node_seconds(("x9",), "karpenter")
    with pytest.raises(ValueError, match="no runtime layer size for device 'tpu'"):
        coldstart.runtime_layer_bytes("tpu")
    with pytest.raises(ValueError, match="lacks 'warmup_seconds'"):
        coldstart.start_seconds("cpu", {"load_seconds": 1})
    with pytest.raises(ValueError, match="must be positive"):
        coldstart.pull_seconds(1, 0)


def test_the_image_layer_table_says_how_each_figure_was_obtained():
    import json

    data = json.loads(coldstart.IMAGE_LAYERS_FILE.read_text())
    for device in ("cpu", "cuda"):
        entry = data["devices"][device]
        assert entry["runtime_compressed_bytes"] > 10_000_000
        assert entry["how"] in ("measured", "derived")
        assert ("command" in entry) if entry["how"] == "measured" else ("derivation" in entry)


# --- issue 18: what KEDA and its HTTP add-on do with these objects ---------------------------------

def test_a_missing_series_is_an_error_while_a_replica_runs_and_idle_at_zero():
    """KEDA reads an empty result as 0 with ignoreNullValues true (its default), as an error with
    false (kedacore/keda v2.20.2 pkg/scalers/prometheus_scaler.go). With a replica always running
    an empty result means the scrape is lost: an error on the ScaledObject, not a silent "no load".
    At zero replicas there are no series at all, which must read as idle."""
    assert keda.prometheus_trigger(keda_args(min_replicas=1, http=False, wait_seconds=0), "d")["metadata"][
        "ignoreNullValues"] == "false"
    assert keda.prometheus_trigger(keda_args(), "d")["metadata"]["ignoreNullValues"] == "true"


@pytest.mark.parametrize("kw", [{}, {"min_replicas": 1, "http": False, "wait_seconds": 0}])
def test_deleting_the_scaled_object_restores_the_workloads_replicas(kw):
    """keda -> hpa: KEDA's finalizer scales the workload back to its count before KEDA only with
    restoreToOriginalReplicaCount (controllers/keda/scaledobject_finalizer.go); an idle model
    would otherwise stay at 0, where an HPA never acts."""
    obj = scaled_object(keda_args(**kw))
    validate_custom_resource(obj)
    assert obj["spec"]["advanced"]["restoreToOriginalReplicaCount"] is True


def test_the_interceptor_routes_the_public_name_too():
    """The interceptor answers 404 to a Host it has no route for (kedacore/http-add-on v0.15.0
    pkg/routing/table.go, interceptor/middleware/routing.go): the public name is listed."""
    from servedmodel.components.args import ArgsError, NetworkArgs

    with pytest.raises(ArgsError, match=r"network\.hostname"):  # the name is checked where it is set
        NetworkArgs(hostname="Models_example")
    assert keda_args(hostname="classifier.models.example.com").hostname == "classifier.models.example.com"
