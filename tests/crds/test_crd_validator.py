"""The strict custom-resource validator: known-good objects pass, each kind of mistake is caught
and every problem of an object is listed, with its path."""
from __future__ import annotations

import copy
import json
import re

import pytest

from tests.crds import extract
from tests.crds.validate import HERE, known_kinds, problems, validate_custom_resource

NODEPOOL = {
    "apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "gpu"},
    "spec": {
        "template": {
            "metadata": {"labels": {"servedmodel.io/pool": "gpu"}},
            "spec": {
                "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "gpu"},
                "requirements": [
                    {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": ["g5", "g6"]},
                    {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand", "spot"]},
                ],
                "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}],
                "expireAfter": "720h",
            },
        },
        "limits": {"nvidia.com/gpu": 4, "cpu": "64"},
        "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "5m",
                       "budgets": [{"nodes": "1"}]},
    },
}
EC2NODECLASS = {
    "apiVersion": "karpenter.k8s.aws/v1", "kind": "EC2NodeClass", "metadata": {"name": "gpu"},
    "spec": {"amiSelectorTerms": [{"alias": "bottlerocket@latest"}], "role": "KarpenterNodeRole-demo",
             "subnetSelectorTerms": [{"tags": {"karpenter.sh/discovery": "demo"}}],
             "securityGroupSelectorTerms": [{"id": "sg-0123abcd"}]},
}
SCALEDOBJECT = {
    "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "m", "namespace": "ns"},
    "spec": {"scaleTargetRef": {"name": "m"}, "minReplicaCount": 0, "maxReplicaCount": 3,
             "pollingInterval": 15, "cooldownPeriod": 300,
             "triggers": [{"type": "prometheus", "metadata": {"serverAddress": "http://p:9090", "query": "sum(x)",
                                                              "threshold": "8"}}]},
}
HTTPSCALEDOBJECT = {
    "apiVersion": "http.keda.sh/v1alpha1", "kind": "HTTPScaledObject", "metadata": {"name": "m", "namespace": "ns"},
    "spec": {"hosts": ["m.ns"], "scaleTargetRef": {"name": "m", "kind": "Deployment", "apiVersion": "apps/v1",
                                                   "service": "m", "port": 80},
             "replicas": {"min": 0, "max": 3}, "timeouts": {"conditionWait": "120s"}},
}
PODMONITOR = {
    "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "m", "namespace": "ns"},
    "spec": {"selector": {"matchLabels": {"app": "m"}}, "podMetricsEndpoints": [{"port": "http", "path": "/metrics"}]},
}
GOOD = [NODEPOOL, EC2NODECLASS, SCALEDOBJECT, HTTPSCALEDOBJECT, PODMONITOR]


@pytest.mark.parametrize("obj", GOOD, ids=lambda o: o["kind"])
def test_known_good_objects_pass(obj):
    validate_custom_resource(obj)
    assert problems(obj) == []


def test_every_contracted_kind_has_a_schema():
    assert set(known_kinds()) >= {
        "karpenter.sh/v1/NodePool", "karpenter.k8s.aws/v1/EC2NodeClass", "keda.sh/v1alpha1/ScaledObject",
        "http.keda.sh/v1alpha1/HTTPScaledObject", "argoproj.io/v1alpha1/Rollout",
        "argoproj.io/v1alpha1/AnalysisTemplate", "monitoring.coreos.com/v1/PodMonitor",
        "monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"}


def _bad(base, mutate):
    obj = copy.deepcopy(base)
    mutate(obj)
    return obj


# (object, the one problem expected, as a regex over the listed problems)
CASES = {
    "unknown nested field": (_bad(NODEPOOL, lambda o: o["spec"]["disruption"].update(consolidationAfter="5m")),
                             r"\$\.spec\.disruption\.consolidationAfter: unknown field"),
    "unknown top-level spec field": (_bad(SCALEDOBJECT, lambda o: o["spec"].update(minReplicas=0)),
                                     r"\$\.spec\.minReplicas: unknown field"),
    "field in the wrong place": (_bad(HTTPSCALEDOBJECT, lambda o: o["spec"].update(port=80)),
                                 r"\$\.spec\.port: unknown field"),
    "wrong type": (_bad(SCALEDOBJECT, lambda o: o["spec"].update(pollingInterval="15")),
                   r"\$\.spec\.pollingInterval: expected integer, got string"),
    "below minimum": (_bad(SCALEDOBJECT, lambda o: o["spec"].update(maxReplicaCount=0)),
                      r"\$\.spec\.maxReplicaCount: 0 is below the minimum 1"),
    "enum": (_bad(NODEPOOL, lambda o: o["spec"]["disruption"].update(consolidationPolicy="Always")),
             r"consolidationPolicy: \"Always\" is not one of"),
    "pattern": (_bad(NODEPOOL, lambda o: o["spec"]["disruption"].update(consolidateAfter="5 minutes")),
                r"consolidateAfter: '5 minutes' does not match pattern"),
    "required": (_bad(EC2NODECLASS, lambda o: o["spec"].pop("subnetSelectorTerms")),
                 r"\$\.spec: missing required field 'subnetSelectorTerms'"),
    "int-or-string": (_bad(NODEPOOL, lambda o: o["spec"]["limits"].update({"nvidia.com/gpu": [4]})),
                      r"limits\.nvidia\.com/gpu: .*(integer or a string|none of anyOf)"),
    "int32 overflow": (_bad(HTTPSCALEDOBJECT, lambda o: o["spec"]["replicas"].update(max=2**31)),
                       r"replicas\.max: 2147483648 does not fit int32"),
    "null": (_bad(SCALEDOBJECT, lambda o: o["spec"].update(cooldownPeriod=None)), r"cooldownPeriod: null"),
    "no name": (_bad(SCALEDOBJECT, lambda o: o["metadata"].pop("name")), r"\$\.metadata\.name: missing"),
    "bad name": (_bad(SCALEDOBJECT, lambda o: o["metadata"].update(name="My_Model")), r"not a DNS-1123 subdomain"),
    "namespace on a cluster-scoped kind": (_bad(NODEPOOL, lambda o: o["metadata"].update(namespace="ns")),
                                           r"NodePool is cluster-scoped"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_kind_of_mistake_is_an_error(case):
    obj, expected = CASES[case]
    found = problems(obj)
    assert len(found) == 1 and re.search(expected, found[0]), found
    with pytest.raises(AssertionError, match=re.escape(found[0])):
        validate_custom_resource(obj)


def test_every_problem_is_listed_not_just_the_first():
    obj = copy.deepcopy(NODEPOOL)
    obj["spec"]["disruption"]["consolidationPolicy"] = "Always"
    obj["spec"]["template"]["spec"]["taints"][0]["colour"] = "red"
    obj["spec"]["weight"] = 0
    obj["status"] = {"nodes": "many"}
    with pytest.raises(AssertionError) as raised:
        validate_custom_resource(obj)
    text = str(raised.value)
    assert "(4 problem(s))" in text
    for needle in ("consolidationPolicy", "taints[0].colour: unknown field", "weight: 0 is below", "status.nodes"):
        assert needle in text


def test_preserve_unknown_fields_and_additional_properties_allow_free_maps():
    # ScaledObject trigger metadata is a free string map (additionalProperties); EC2NodeClass tags too.
    obj = copy.deepcopy(SCALEDOBJECT)
    obj["spec"]["triggers"][0]["metadata"]["anyKeyAtAll"] = "x"
    assert problems(obj) == []
    obj["spec"]["triggers"][0]["metadata"]["anyKeyAtAll"] = 3
    assert [p for p in problems(obj) if "anyKeyAtAll: expected string" in p]


def test_unknown_kind_is_an_error_naming_the_known_ones():
    with pytest.raises(AssertionError,
                       match=r"no CRD schema for apiVersion='keda.sh/v1' kind='ScaledObject'"
                             r".*keda.sh/v1alpha1/ScaledObject"):
        validate_custom_resource({"apiVersion": "keda.sh/v1", "kind": "ScaledObject", "metadata": {"name": "x"}})


def test_extract_strips_prose_but_keeps_a_field_named_description():
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "spec": {"group": "example.com", "names": {"kind": "Thing"}, "versions": [
               {"name": "v1", "served": True, "schema": {"openAPIV3Schema": {
                   "type": "object", "description": "prose",
                   "properties": {"description": {"type": "string", "description": "prose", "maxLength": 3},
                                  "items": {"type": "array", "items": {"type": "integer", "example": 1}}}}}},
               {"name": "v0", "served": False, "schema": {"openAPIV3Schema": {"type": "object"}}}]}}
    files = extract.schema_files(crd)
    assert list(files) == [extract.Path("example.com/v1/Thing.json")]
    assert files[extract.Path("example.com/v1/Thing.json")] == {
        "type": "object", "properties": {"description": {"type": "string", "maxLength": 3},
                                         "items": {"type": "array", "items": {"type": "integer"}}}}


def test_schema_files_have_no_prose_and_sources_record_each_commit():
    sources = json.loads((HERE / "sources.json").read_text())["crds"]
    table = (HERE / "SOURCES.md").read_text()
    for kind in known_kinds():
        assert f"`{kind}.json`" in table, f"{kind} is not recorded in SOURCES.md"
        text = (HERE / f"{kind}.json").read_text()
        assert json.loads(text) == extract.strip(json.loads(text)), f"{kind}.json still holds prose"
    for entry in sources:
        assert re.fullmatch(r"[0-9a-f]{40}", entry["commit"])
        assert f"`{entry['commit']}`" in table and entry["tag"] in table


def test_list_map_keys_are_unique_where_the_schema_says_so():
    # The Rollout's pod template containers are a list-map keyed by name (as in a Deployment).
    rollout = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "m"},
               "spec": {"selector": {"matchLabels": {"app": "m"}},
                        "template": {"metadata": {"labels": {"app": "m"}},
                                     "spec": {"containers": [{"name": "a", "image": "x"},
                                                            {"name": "b", "image": "y"}]}},
                        "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}}]}}}}
    assert problems(rollout) == []
    rollout["spec"]["template"]["spec"]["containers"][1]["name"] = "a"
    assert problems(rollout) == ["$.spec.template.spec.containers: list-type map holds two items with the same name"]


def test_root_metadata_is_checked_as_object_meta():
    obj = copy.deepcopy(SCALEDOBJECT)
    obj["metadata"]["labels"] = {"app": 1}
    obj["metadata"]["nmae"] = "typo"
    assert sorted(problems(obj)) == ["$.metadata.labels: must map strings to strings",
                                     "$.metadata.nmae: unknown field of ObjectMeta"]
