"""The component provider (components/provider.py, provider/): ServedModel for any Pulumi language.

The committed provider/schema.json is the inference from the Python types; every input, output and
type is described (from the one description each field already has); a setting's schema type is
the type its declaration gives the stack; and a construct call through the provider - with inputs
shaped as the engine sends them (schema names, numbers as floats, values of other resources as
Outputs) - declares what the Python API declares for the same args and returns the component's
outputs. A bad input is an input error that names the property as the program wrote it, with the
args' own words.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pulumi
import pulumi_kubernetes as k8s
import pytest
import yaml
from pulumi.errors import InputPropertiesError, InputPropertyError

from pulumi_harness import KUBERNETES_VERSION, ROOT, TEST_SECRET, kubernetes_manifest, run_callable
from servedmodel import __version__
from servedmodel.components import ArgsError, ServedModel
from servedmodel.components.args import (
    GROUP_TYPES,
    AutoscalingArgs,
    ModelArgs,
    NetworkArgs,
    ResourcesArgs,
    ServedModelArgs,
    settings_of,
)
from servedmodel.components.args.setting import camel
from servedmodel.components.provider import (
    PACKAGE,
    SCHEMA_FILE,
    UP_NEEDS,
    ServedModelProvider,
    input_error,
    package_schema,
    schema_text,
)

TOKEN = "servedmodel:index:ServedModel"
REGENERATE = "python -m servedmodel.components.config_doc"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return package_schema()


def test_the_committed_schema_is_the_inference_from_the_types(schema):
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == schema, f"provider/schema.json is stale: run `{REGENERATE}`"
    assert SCHEMA_FILE.read_text() == schema_text(), REGENERATE


def test_the_schema_has_the_component_under_its_fixed_token(schema):
    assert schema["name"] == PACKAGE and schema["version"] == __version__
    assert list(schema["resources"]) == [TOKEN]
    component = schema["resources"][TOKEN]
    assert component["isComponent"] is True
    assert set(component["requiredInputs"]) == {"model", "outDir"}
    assert set(component["properties"]) == {"url", "inferUrl", "modelName", "image", "modelVersion", "signature",
                                             "coldStart"}
    assert UP_NEEDS in schema["description"]


def _undescribed(where: str, prop: dict[str, Any]) -> list[str]:
    missing = [] if (prop.get("description") or "").strip() else [where]
    if "items" in prop:
        missing += [f"{where}[] {m}" for m in _undescribed("items", prop["items"]) if "$ref" not in prop["items"]]
    return missing


def test_every_input_output_and_type_has_a_description(schema):
    component = schema["resources"][TOKEN]
    missing = [] if component.get("description") else [TOKEN]
    for kind in ("inputProperties", "properties"):
        for name, prop in component[kind].items():
            missing += _undescribed(f"{TOKEN}.{kind}.{name}", prop)
    referenced = {ref.split("/")[-1] for ref in _refs(schema["resources"])}
    assert referenced <= set(schema["types"]), "a reference to a type the schema lacks"
    for token, t in schema["types"].items():
        missing += [] if (t.get("description") or "").strip() else [token]
        for name, prop in t["properties"].items():
            missing += _undescribed(f"{token}.{name}", prop)
        referenced |= {ref.split("/")[-1] for ref in _refs(t)}
    assert not missing, f"without a description: {missing}"
    assert referenced == set(schema["types"]), "every type is reachable from the component"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


SCHEMA_TYPES = {"string": "string", "integer": "integer", "boolean": "boolean", "number": "number", "array": "array",
                "map": "object"}


def test_each_setting_has_the_type_and_description_its_declaration_gives(schema):
    """The schema and the stack config derive a setting's type from the same annotation, and its
    description from the same text (the stack's key names aside)."""
    checked = 0
    owners = {cls: schema["types"][f"{PACKAGE}:index:{cls.__name__.removesuffix('Args')}"]["properties"]
              for cls in GROUP_TYPES.values()} | {ServedModelArgs: schema["resources"][TOKEN]["inputProperties"]}
    for cls, properties in owners.items():
        for d in settings_of(cls):
            prop = properties[camel(d.field)]
            assert prop.get("type") == SCHEMA_TYPES[d.kind], d.path
            if d.kind == "array":
                assert prop["items"]["type"] == "string", d.path
            if d.kind == "map":  # client name -> list of strings (servedmodel:clients)
                assert prop["additionalProperties"]["items"]["type"] == "string", d.path
            assert ("plain" in prop) != d.is_input, d.path  # a pulumi.Input is an input, anything else plain
            assert prop.get("secret", False) == d.secret, d.path
            words = [w for w in d.description.split() if "@{" not in w]
            assert all(w in prop["description"] for w in words), d.path
            checked += 1
    assert checked >= 70  # every group's settings and ServedModelArgs' own, not a few


# ---- construct through the provider, under the mocks --------------------------------------------

# The standalone example's args (examples/standalone/__main__.py), as the engine sends them.
INPUTS: dict[str, Any] = {
    "model": {"servedName": "digits", "model": "lenet", "compression": "int8"}, "outDir": "build/digits",
    "target": "docker", "resources": {"cpu": "500m", "memory": "512Mi"},
    "autoscaling": {"replicas": 1.0, "maxReplicas": 3.0, "metric": "cpu", "targetCpuPercent": 60.0},
    "network": {"namespace": "default", "localPort": 8091.0},
}
ARGS = ServedModelArgs(
    model=ModelArgs(served_name="digits", model="lenet", compression="int8"), out_dir=Path("build") / "digits",
    target="docker", resources=ResourcesArgs(cpu="500m", memory="512Mi"),
    autoscaling=AutoscalingArgs(replicas=1, max_replicas=3, metric="cpu", target_cpu_percent=60),
    network=NetworkArgs(namespace="default", local_port=8091))


def _through_provider(inputs: dict[str, Any]):
    def main() -> None:
        result = ServedModelProvider().construct("digits", TOKEN, inputs, None)
        for key, value in result.state.items():
            pulumi.export(key, value)
    return main


def _declared(run) -> list[tuple[str, str, str]]:
    return sorted((r.type, r.name, json.dumps(r.inputs, sort_keys=True)) for r in run.resources)


def test_a_construct_through_the_provider_returns_the_components_outputs(model_cache, tmp_path):
    run = run_callable(_through_provider(INPUTS), "yaml-program", "dev", cwd=tmp_path)
    out = run.outputs
    assert out["url"] == "http://127.0.0.1:8091"
    assert out["inferUrl"] == "http://127.0.0.1:8091/v2/models/digits/infer"
    assert out["modelName"] == "digits" and len(out["modelVersion"]) == 16
    assert out["image"].endswith(out["modelVersion"])
    assert out["signature"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert set(out["coldStart"]) == {"nodeSeconds", "pullSeconds", "startSeconds", "decryptSeconds", "totalSeconds"}
    assert set(out) == set(package_schema()["resources"][TOKEN]["properties"])
    [component] = run.of_type(TOKEN)
    assert component.name == "digits" and not component.custom

    # The same args through the Python API, and as a mapping a Python program may write: the same
    # resources with the same inputs, and the same outputs.
    def python_api() -> None:
        model = ServedModel("digits", ARGS)
        pulumi.export("modelVersion", model.model_version)
        pulumi.export("signature", model.signature)

    def python_mapping() -> None:
        model = ServedModel("digits", {"model": {"served_name": "digits", "model": "lenet", "compression": "int8"},
                                       "out_dir": "build/digits", "resources": {"cpu": "500m", "memory": "512Mi"},
                                       "autoscaling": {"replicas": 1, "max_replicas": 3, "metric": "cpu",
                                                       "target_cpu_percent": 60},
                                       "network": {"local_port": 8091}})
        pulumi.export("modelVersion", model.model_version)

    for program in (python_api, python_mapping):
        other = run_callable(program, "yaml-program", "dev", cwd=tmp_path)
        assert _declared(other) == _declared(run), program.__name__
        assert other.outputs["modelVersion"] == out["modelVersion"]


CLIENT_TOKEN = "billing-token-from-another-resource-0123"


def test_values_of_other_resources_reach_the_args_as_inputs(model_cache, tmp_path):
    """A program in another language composes: a namespace it creates, a secret token. The engine
    sends them as output values inside the objects; they arrive as Outputs and the args take them."""
    def main() -> None:
        namespace = k8s.core.v1.Namespace("models")
        inputs = json.loads(json.dumps(INPUTS)) | {"target": "kubernetes", "clusterName": "servedmodel-dev"}
        inputs["network"] = {"namespace": namespace.metadata.name, "authToken": pulumi.Output.secret(TEST_SECRET),
                             "ingressCidrs": ["10.0.0.0/16"],
                             # Named clients from another resource's output (a secret map): digests only.
                             "clients": pulumi.Output.secret({"billing": [CLIENT_TOKEN]})}
        result = ServedModelProvider().construct("digits", TOKEN, inputs, None)
        pulumi.export("url", result.state["url"])
        pulumi.export("namespace", namespace.metadata.name)

    run = run_callable(main, "yaml-program", "dev", cwd=tmp_path)
    ns = run.one("kubernetes:core/v1:Namespace")
    deployment = run.one("kubernetes:apps/v1:Deployment")
    assert deployment.inputs["metadata"]["namespace"] == run.outputs["namespace"]
    assert deployment.waits_for(ns)
    secrets = run.of_type("kubernetes:core/v1:Secret")
    assert len(secrets) == 2 and all(s.secret_paths for s in secrets) and TEST_SECRET not in repr(run.outputs)
    [clients] = [s for s in secrets if "clients.json" in s.inputs["stringData"]]
    assert json.loads(clients.inputs["stringData"]["clients.json"]) == {
        "billing": [hashlib.sha256(CLIENT_TOKEN.encode()).hexdigest()]}
    assert CLIENT_TOKEN not in repr([(r.inputs, r.state) for r in run.resources]) + repr(run.outputs)
    for r in run.resources:
        if r.type.startswith("kubernetes:"):
            kubernetes_validate.validate(kubernetes_manifest(r), KUBERNETES_VERSION, strict=True)


def _input_errors(inputs: dict[str, Any]) -> InputPropertiesError:
    with pytest.raises(InputPropertiesError) as err:
        ServedModelProvider().construct("digits", TOKEN, inputs, None)
    return err.value


def test_a_bad_input_is_an_input_error_naming_the_property_with_the_args_own_words():
    bad = json.loads(json.dumps(INPUTS))
    bad["autoscaling"] |= {"replicas": 5.0, "maxReplicas": 2.0, "metric": "gpu", "targetCpuPercent": 150.0}
    bad["target"] = "k8s"
    error = _input_errors(bad)
    paths = {e["property_path"]: e["reason"] for e in error.errors or []}
    assert paths == {
        "autoscaling.replicas": "must not exceed autoscaling.maxReplicas (2); min > max replicas",
        "autoscaling.metric": "accepted: one of inflight, queue, cpu",
        "autoscaling.targetCpuPercent": "must be between 1 and 100",
        "target": "accepted: one of docker, kubernetes",
    }
    # The Python API says the same of the same values.
    with pytest.raises(ArgsError) as python:
        AutoscalingArgs(replicas=5, max_replicas=2, metric="gpu", target_cpu_percent=150)
    for problem in python.value.problems:
        assert problem.accepted.replace("@{autoscaling.max_replicas}", "autoscaling.maxReplicas") in paths.values()
    assert error.message.startswith("invalid ServedModel inputs (4 problems):")


def test_an_integer_given_as_a_fraction_is_refused_not_rounded():
    bad = json.loads(json.dumps(INPUTS))
    bad["autoscaling"]["maxReplicas"] = 2.5
    assert [(e["property_path"], e["reason"]) for e in _input_errors(bad).errors or []] == [
        ("autoscaling.maxReplicas", "must be an integer")]


def test_a_missing_required_input_is_named():
    bad = json.loads(json.dumps(INPUTS))
    del bad["model"]["model"]
    with pytest.raises(InputPropertyError) as err:
        ServedModelProvider().construct("digits", TOKEN, bad, None)
    assert err.value.property_path == "model.model" and "Missing required input" in err.value.reason


def test_a_group_given_as_another_resources_output_as_a_whole_is_refused_by_name(tmp_path):
    def main() -> None:
        namespace = k8s.core.v1.Namespace("models")
        inputs = INPUTS | {"network": namespace.metadata.apply(lambda m: {"namespace": m["name"]})}
        ServedModelProvider().construct("digits", TOKEN, inputs, None)

    with pytest.raises(InputPropertiesError) as err:
        run_callable(main, "yaml-program", "dev", cwd=tmp_path)
    [(path, reason)] = [(e["property_path"], e["reason"]) for e in err.value.errors or []]
    assert path == "network" and "not another resource's output as a whole" in reason


def test_input_errors_render_python_paths_in_schema_names():
    with pytest.raises(ArgsError) as err:
        NetworkArgs(service_type="LoadBalancer", allow_load_balancer=False)
    error = input_error(err.value)
    assert [e["property_path"] for e in error.errors or []] == ["network.serviceType"] * 3
    assert "network.allowLoadBalancer" in error.message and "allow_load_balancer" not in error.message


# ---- the plugin folder ----------------------------------------------------------------------------

def test_the_plugin_runs_the_installed_package_with_python():
    plugin = ROOT / "provider"
    manifest = yaml.safe_load((plugin / "PulumiPlugin.yaml").read_text())
    assert manifest["runtime"]["name"] == "python"
    assert (plugin / "__main__.py").read_text().count("from servedmodel.components.provider import main") == 1
    lines = [ln.split("#")[0].strip() for ln in (plugin / "requirements.txt").read_text().splitlines()]
    # The language host runs pip in the plugin folder: `..` is this repository's package.
    assert ".." in lines and (plugin / ".." / "pyproject.toml").resolve() == ROOT / "pyproject.toml"
    assert "-c ../requirements.txt" in lines


def test_the_docs_say_what_up_needs_as_the_schema_does(schema):
    packages = (ROOT / "docs" / "packages.md").read_text()
    assert UP_NEEDS in packages and UP_NEEDS in schema["description"]
    readme = (ROOT / "README.md").read_text()
    assert "pip install" in readme and "pulumi package add" in readme and "docs/packages.md" in readme
