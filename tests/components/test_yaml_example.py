"""examples/yaml: a Pulumi YAML program uses ServedModel through the component provider.

The Pulumi CLI cannot run here, so what its YAML runtime would check against the package's schema
is checked against the committed provider/schema.json: the package entry is the plugin folder,
every property the program sets exists with the right type (a value of another resource only
where the schema takes an input, not a plain value), the required inputs are there, and every
output it reads exists. Then the program's ServedModel is constructed through the provider under
the mocks, with the namespace it creates as an Output, as the engine would send it.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable

import kubernetes_validate
import pulumi
import pulumi_kubernetes as k8s
import pytest
import yaml

from pulumi_harness import KUBERNETES_VERSION, ROOT, kubernetes_manifest, run_callable
from servedmodel.components.provider import SCHEMA_FILE, ServedModelProvider

PROGRAM = ROOT / "examples" / "yaml" / "Pulumi.yaml"
TOKEN = "servedmodel:index:ServedModel"
INTERPOLATION = re.compile(r"^\$\{([A-Za-z0-9_-]+)((?:\.[A-Za-z0-9_]+)*)\}$")
KUBECONFIG = "apiVersion: v1\nkind: Config\n"


@pytest.fixture(scope="module")
def program() -> dict[str, Any]:
    return yaml.safe_load(PROGRAM.read_text())


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def _resolve(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in prop:
        return schema["types"][prop["$ref"].removeprefix("#/types/")]
    return prop


def schema_problems(schema: dict[str, Any], program: dict[str, Any], value: Any, prop: dict[str, Any],
                    path: str) -> list[str]:
    """What the YAML runtime would refuse in `value` for the schema property `prop`."""
    ref = INTERPOLATION.match(value) if isinstance(value, str) else None
    if ref:
        source = ref.group(1)
        if source in program.get("config", {}):
            return []  # config is known when the program runs: fine for a plain value too
        if source not in program.get("resources", {}):
            return [f"{path}: ${{{source}}} names neither a config key nor a resource"]
        return [f"{path}: another resource's output where the schema takes a plain value"] if prop.get("plain") else []
    t = _resolve(schema, prop)
    kind = t.get("type")
    if kind == "object" and "properties" in t:
        if not isinstance(value, dict):
            return [f"{path}: must be an object"]
        problems = [f"{path}.{k}: no such property" for k in value if k not in t["properties"]]
        problems += [f"{path}.{k}: required" for k in t.get("required", []) if k not in value]
        for k, v in value.items():
            if k in t["properties"]:
                problems += schema_problems(schema, program, v, t["properties"][k], f"{path}.{k}")
        return problems
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: must be an array"]
        return [p for i, v in enumerate(value) for p in schema_problems(schema, program, v, t["items"], f"{path}[{i}]")]
    expected: dict[str, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    return [] if expected[str(kind)](value) else [f"{path}: {value!r} is not a {kind}"]


def served_models(program: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in program["resources"].items() if r["type"] == TOKEN}


def test_the_package_is_the_plugin_folder(program):
    plugin = (PROGRAM.parent / program["packages"]["servedmodel"]).resolve()
    assert plugin == ROOT / "provider" and (plugin / "PulumiPlugin.yaml").is_file()
    assert program["runtime"] == "yaml"


def test_every_property_exists_with_its_type_and_the_required_inputs_are_there(program, schema):
    component = schema["resources"][TOKEN]
    assert served_models(program), "the example declares a ServedModel"
    for name, resource in served_models(program).items():
        properties = resource["properties"]
        problems = [f"{name}.{k}: no such input" for k in properties if k not in component["inputProperties"]]
        problems += [f"{name}.{k}: required" for k in component["requiredInputs"] if k not in properties]
        for key, value in properties.items():
            if key in component["inputProperties"]:
                problems += schema_problems(schema, program, value, component["inputProperties"][key], f"{name}.{key}")
        assert not problems, problems


def test_every_output_read_from_the_component_exists(program, schema):
    outputs = schema["resources"][TOKEN]["properties"]
    read = [m.groups() for text in program["outputs"].values() if (m := INTERPOLATION.match(text))]
    from_component = [(name, path) for name, path in read if name in served_models(program)]
    assert from_component, "the example reads the component's outputs"
    for name, path in from_component:
        assert path.split(".")[1] in outputs, f"${{{name}{path}}}"


def test_the_checks_refuse_what_the_runtime_would(program, schema):
    """The checks above can fail: a misspelt property, a wrong type, a missing required input and a
    resource's output into a plain value are each found."""
    bad = json.loads(json.dumps(program))
    props = served_models(bad)["digits"]["properties"]
    props["autoscaling"]["maxReplica"] = 3
    props["resources"]["cpu"] = 1
    del props["model"]["model"]
    props["target"] = "${models.metadata.name}"
    component = schema["resources"][TOKEN]
    found = [p for k, v in props.items() for p in schema_problems(schema, bad, v, component["inputProperties"][k],
                                                                   f"digits.{k}")]
    assert sorted(found) == sorted([
        "digits.autoscaling.maxReplica: no such property", "digits.resources.cpu: 1 is not a string",
        "digits.model.model: required",
        "digits.target: another resource's output where the schema takes a plain value"])


def _evaluate(value: Any, config: dict[str, Any], made: dict[str, Any]) -> Any:
    """The YAML program's value with `${config}` and `${resource.path}` resolved (the subset it uses)."""
    if isinstance(value, dict):
        return {k: _evaluate(v, config, made) for k, v in value.items()}
    if isinstance(value, list):
        return [_evaluate(v, config, made) for v in value]
    ref = INTERPOLATION.match(value) if isinstance(value, str) else None
    if not ref:
        return value
    source, path = ref.group(1), [p for p in ref.group(2).split(".") if p]
    if source in config:
        return config[source]
    out = made[source]
    for part in path:
        out = out[part] if isinstance(out, dict) else getattr(out, re.sub(r"(?<!^)([A-Z])", r"_\1", part).lower())
    return out


def test_the_programs_served_model_constructs_through_the_provider(program, model_cache, tmp_path):
    config = {"kubeconfig": pulumi.Output.secret(KUBECONFIG), "clusterName": "servedmodel-dev"}

    def main() -> None:
        made: dict[str, Any] = {}
        for name, r in program["resources"].items():
            props = _evaluate(r.get("properties", {}), config, made)
            options = r.get("options", {})
            if r["type"] == "pulumi:providers:kubernetes":
                made[name] = k8s.Provider(name, **props)
            elif r["type"] == "kubernetes:core/v1:Namespace":
                made[name] = k8s.core.v1.Namespace(name, **props, opts=pulumi.ResourceOptions(
                    provider=_evaluate(options["provider"], config, made)))
            elif r["type"] == TOKEN:
                providers = [_evaluate(p, config, made) for p in options.get("providers", [])]
                result = ServedModelProvider().construct(name, TOKEN, props, pulumi.ResourceOptions(
                    providers={"kubernetes": providers[-1]} if providers else {}))
                made[name] = result.state
            else:
                raise AssertionError(f"the example uses {r['type']}: teach this test to declare it")
        for key, text in program["outputs"].items():
            pulumi.export(key, _evaluate(text, config, made))

    run = run_callable(main, "served-yaml", "dev", cwd=tmp_path)
    namespace = run.one("kubernetes:core/v1:Namespace")
    deployment = run.one("kubernetes:apps/v1:Deployment")
    assert deployment.inputs["metadata"]["namespace"] == run.outputs["namespace"] and deployment.waits_for(namespace)
    provider = run.one("pulumi:providers:kubernetes")
    for r in run.resources:
        if r.type.startswith("kubernetes:"):
            assert r.provider.startswith(provider.urn + "::"), r.type
            kubernetes_validate.validate(kubernetes_manifest(r), KUBERNETES_VERSION, strict=True)
    assert run.outputs["url"].startswith("http://") and run.outputs["inferUrl"].endswith("/v2/models/digits/infer")
    assert len(run.outputs["modelVersion"]) == 16 and run.outputs["signature"]["inputs"]
