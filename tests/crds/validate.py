"""Strict validation of custom resources against their upstream CRD schemas (tests/crds/).

    from tests.crds.validate import validate_custom_resource
    validate_custom_resource({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", ...})

The API server prunes fields a structural schema does not declare and stores the object without
them, so a misspelt or misplaced field is silently lost there; here it is an error. The schema is
picked by apiVersion + kind (tests/crds/<group>/<version>/<kind>.json, see SOURCES.md) and every
problem found is listed in one AssertionError, each with its JSON path.

What is checked, as the API server's structural-schema validation does: type (with
x-kubernetes-int-or-string), properties (unknown fields are errors unless the schema says
x-kubernetes-preserve-unknown-fields: true or gives an additionalProperties schema), required,
items, additionalProperties, enum, pattern, minimum/maximum, minLength/maxLength,
minItems/maxItems, maxProperties, format int32/int64/date-time, anyOf, list-type set/map
uniqueness; metadata.name present and a DNS-1123 subdomain; no namespace on a cluster-scoped kind.
Not checked: the CRDs' CEL rules (x-kubernetes-validations) — the tests of each component assert
the rules that matter to it explicitly.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# Kinds whose CRD has `scope: Cluster` (the others here are namespaced).
CLUSTER_SCOPED = frozenset({("karpenter.sh", "NodePool"), ("karpenter.k8s.aws", "EC2NodeClass")})
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# ObjectMeta's fields a manifest may carry (the API server validates the root metadata itself).
_OBJECT_META = frozenset({"name", "generateName", "namespace", "labels", "annotations", "finalizers",
                          "ownerReferences", "uid", "resourceVersion", "generation", "creationTimestamp",
                          "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"})
_INT_RANGES = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}


def schema_path(api_version: str, kind: str) -> Path:
    group, _, version = api_version.rpartition("/")
    return HERE / group / version / f"{kind}.json"


def known_kinds() -> list[str]:
    """'group/version/Kind' for every schema file present."""
    return sorted(p.relative_to(HERE).with_suffix("").as_posix() for p in HERE.glob("*/*/*.json"))


@cache
def load_schema(api_version: str, kind: str) -> dict[str, Any]:
    path = schema_path(api_version, kind)
    if "/" not in api_version or not path.is_file():
        raise AssertionError(f"no CRD schema for apiVersion={api_version!r} kind={kind!r} under tests/crds/; "
                             f"known: {', '.join(known_kinds())}")
    return json.loads(path.read_text())


def _type_ok(value: Any, type_: str) -> bool:
    if type_ == "object":
        return isinstance(value, dict)
    if type_ == "array":
        return isinstance(value, list)
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "boolean":
        return isinstance(value, bool)
    if type_ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    raise AssertionError(f"schema uses an unknown type {type_!r}")


def _describe(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _check(value: Any, schema: dict[str, Any], path: str, errors: list[str], strict: bool = True) -> None:
    """Append to `errors` every way `value` breaks `schema`. strict=False inside anyOf branches,
    which (in a structural schema) only add value constraints, never fields."""
    if value is None:
        # JSON null is only valid where the schema says nullable; the provider drops such fields.
        if not schema.get("nullable"):
            errors.append(f"{path}: null is not allowed")
        return
    type_ = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        if not (_type_ok(value, "integer") or _type_ok(value, "string")):
            errors.append(f"{path}: expected an integer or a string, got {_describe(value)}")
            return
    elif type_ and not _type_ok(value, type_):
        errors.append(f"{path}: expected {type_}, got {_describe(value)} {json.dumps(value)[:60]}")
        return

    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {json.dumps(value)} is not one of {json.dumps(schema['enum'])}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match pattern {schema['pattern']!r}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{path}: {value!r} is shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{path}: {value!r} is longer than {schema['maxLength']}")
        if schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                errors.append(f"{path}: {value!r} is not an RFC 3339 date-time")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{path}: {value} is above the maximum {schema['maximum']}")
        bounds = _INT_RANGES.get(schema.get("format", ""))
        if bounds and isinstance(value, int) and not bounds[0] <= value <= bounds[1]:
            errors.append(f"{path}: {value} does not fit {schema['format']}")

    if "anyOf" in schema:
        branch_errors: list[list[str]] = []
        for branch in schema["anyOf"]:
            found: list[str] = []
            _check(value, branch, path, found, strict=False)
            if not found:
                break
            branch_errors.append(found)
        else:
            errors.append(f"{path}: matches none of anyOf: " + " | ".join("; ".join(e) for e in branch_errors))
    for branch in schema.get("allOf", []):
        _check(value, branch, path, errors, strict=False)

    if isinstance(value, dict):
        _check_object(value, schema, path, errors, strict)
    elif isinstance(value, list):
        _check_array(value, schema, path, errors, strict)


def _check_object(value: dict[str, Any], schema: dict[str, Any], path: str, errors: list[str], strict: bool) -> None:
    props: dict[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{path}: missing required field {name!r}")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errors.append(f"{path}: has {len(value)} fields, at most {schema['maxProperties']} allowed")
    for name, sub in value.items():
        child = f"{path}.{name}"
        if name in props:
            _check(sub, props[name], child, errors, strict)
        elif isinstance(extra, dict):
            _check(sub, extra, child, errors, strict)
        elif extra is True or preserve or not strict:
            continue
        else:
            allowed = ", ".join(sorted(props)) or "none"
            errors.append(f"{child}: unknown field (the API server would drop it); allowed here: {allowed}")


def _check_array(value: list[Any], schema: dict[str, Any], path: str, errors: list[str], strict: bool) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{path}: has {len(value)} items, at least {schema['minItems']} required")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{path}: has {len(value)} items, at most {schema['maxItems']} allowed")
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _check(item, items, f"{path}[{i}]", errors, strict)
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "set":
        seen = [json.dumps(v, sort_keys=True) for v in value]
        if len(seen) != len(set(seen)):
            errors.append(f"{path}: list-type set holds duplicates")
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen_keys = [tuple(json.dumps(item.get(k)) for k in keys) for item in value if isinstance(item, dict)]
        if len(seen_keys) != len(set(seen_keys)):
            errors.append(f"{path}: list-type map holds two items with the same {'/'.join(keys)}")


def problems(obj: dict[str, Any]) -> list[str]:
    """Every problem of `obj` against its CRD schema (empty when valid)."""
    errors: list[str] = []
    if not isinstance(obj, dict):
        return [f"$: a custom resource is an object, got {_describe(obj)}"]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [f"$: apiVersion and kind must be strings, got {api_version!r}, {kind!r}"]
    schema = load_schema(api_version, kind)
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        errors.append("$.metadata: missing (an object with a name is required)")
    else:
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            errors.append("$.metadata.name: missing")
        elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            errors.append(f"$.metadata.name: {name!r} is not a DNS-1123 subdomain")
        group = api_version.rpartition("/")[0]
        if (group, kind) in CLUSTER_SCOPED and metadata.get("namespace"):
            errors.append(f"$.metadata.namespace: {kind} is cluster-scoped; a namespace is not allowed")
        for key, value in metadata.items():
            if key not in _OBJECT_META:
                errors.append(f"$.metadata.{key}: unknown field of ObjectMeta")
            elif key in ("labels", "annotations") and not (
                    isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
                errors.append(f"$.metadata.{key}: must map strings to strings")
    # The CRD schema declares the root `metadata` as a bare object (the API server checks it as
    # ObjectMeta, done above); everything else is checked against the schema.
    _check({k: v for k, v in obj.items() if k != "metadata"}, schema, "$", errors)
    return errors


def validate_custom_resource(obj: dict[str, Any]) -> None:
    """Raise AssertionError listing every problem of `obj` against its upstream CRD schema."""
    found = problems(obj)
    if found:
        has_metadata = isinstance(obj, dict) and isinstance(obj.get("metadata"), dict)
        name = obj.get("metadata", {}).get("name") if has_metadata else None
        raise AssertionError(f"{obj.get('kind') if isinstance(obj, dict) else '?'} {name!r} is not valid against its "
                             f"CRD schema ({len(found)} problem(s)):\n  " + "\n  ".join(found))
