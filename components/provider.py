"""The component provider: ServedModel for programs in any Pulumi language (YAML, TypeScript, Go, ...).

`pulumi package add <path or git url>/provider` runs the plugin in provider/ (PulumiPlugin.yaml,
runtime python): its venv installs this package, and its `__main__.py` calls `main()` here, which
serves `ServedModelProvider` to the engine. The engine asks it for the schema (the SDK a program
in another language gets is generated from it) and calls `construct` for each
`servedmodel:index:ServedModel` the program declares; the component then runs in the plugin's
process, as it does in a Python program.

The schema is inferred from the Python types, as the Python SDK's component provider host does
(pulumi.provider.experimental), with an analyzer that knows this package's args: the dataclass
fields of ServedModelArgs and its groups (a `tuple[...]` is an array, a `Path` a string, a field
with a default is optional, `pulumi.Input[...]` is an input and anything else a plain value); each
description is the one the field already has - a setting's `setting(...)` description, otherwise
its attribute docstring - and a type's description is its class docstring. So nothing is stated
twice: provider/schema.json is this inference, committed (tests/components/test_provider.py checks
it is current, and that every input, output and type has a description).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

import pulumi
from pulumi.errors import InputPropertiesError, InputPropertyErrorDetails
from pulumi.provider import ConstructResult
from pulumi.provider import main as serve
from pulumi.provider.experimental.analyzer import (
    Analyzer,
    ComponentDefinition,
    PropertyDefinition,
    PropertyType,
    TypeDefinition,
)
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.provider.experimental.schema import generate_schema
from pulumi.provider.server import ComponentInitError
from pulumi.resource import ComponentResource

from servedmodel import __version__

from .args import GROUP_TYPES, ArgsError, ServedModelArgs, args_from_mapping
from .args.mapping import field_types
from .args.setting import REF, camel
from .served_model import ServedModel

__all__ = ["PACKAGE", "SCHEMA_FILE", "UP_NEEDS", "ArgsAnalyzer", "ServedModelProvider", "input_error", "main",
           "package_schema", "schema_text"]

PACKAGE = "servedmodel"
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "provider" / "schema.json"
"""The committed schema, in the plugin folder of a checkout (the wheel does not carry it)."""

UP_NEEDS = (
    "The component runs in the plugin's own Python process on the machine that runs `pulumi up`: it "
    "exports the model with torch, verifies and compresses it with onnx and onnxruntime, and builds the "
    "serving image. That machine needs Python 3.11 (the plugin's venv installs the servedmodel package "
    "with torch, onnx and onnxruntime: about 1 GB for torch's CPU build; no GPU is needed to build), a "
    "Docker engine for the image build, and for the kubernetes target AWS credentials (ECR, EKS; with the "
    "default kms encryption also KMS, IAM and EKS Pod Identity, and kms:GenerateDataKey to seal the model, "
    "docs/deploy.md) and access to the cluster. A model given as 'path/to/file.py:factory' is Python code run "
    "there, and "
    "relative paths (the model file, outDir) are taken from the plugin's working directory: give absolute "
    "ones where that matters."
)
"""What the machine that runs `up` needs: the schema's description says it, and docs/packages.md
quotes it (tests/components/test_provider.py keeps the two in step)."""

# pulumi.Input[T] names Output[T] by a forward reference: resolving hints needs both names.
_HINT_NAMES = {"Output": pulumi.Output, "T": typing.TypeVar("T")}


def _schema_name(cls: type) -> str:
    """A type's name in the schema: the args groups without their `Args` suffix (SDKs add their
    own: TypeScript's `inputs.NetworkArgs`, Python's `NetworkArgs`)."""
    return cls.__name__.removesuffix("Args") if cls.__name__ != "Args" else cls.__name__


def _doc(cls: type) -> Optional[str]:
    """The class's own docstring (not the signature dataclasses writes when there is none)."""
    doc = cls.__dict__.get("__doc__")
    if not doc or (dataclasses.is_dataclass(cls) and doc.startswith(f"{cls.__name__}(")):
        return None
    return " ".join(line.strip() for line in doc.strip().splitlines() if line.strip()) if doc else None


def _args_paths() -> dict[str, str]:
    """Every args path (`autoscaling.max_replicas`) -> its path in the schema (`autoscaling.maxReplicas`)."""
    out = {}
    for name in field_types(ServedModelArgs):
        out[name] = camel(name)
        group = GROUP_TYPES.get(name)
        if group is not None:
            for sub in field_types(group):
                out[f"{name}.{sub}"] = f"{camel(name)}.{camel(sub)}"
    return out


def _reference(path: str, paths: dict[str, str]) -> str:
    """`@{path}` in a description, as a program that uses the schema names it: the input's path,
    or for a setting the component does not take (the stack program's), its stack key."""
    if path in paths:
        return paths[path]
    from .settings import NAMESPACE, SCHEMA  # the stack program's settings: only for their names
    return f"{NAMESPACE}:{SCHEMA.stack_key(path)} (a setting of the servedmodel stack program)"


def _union_members(annotation: Any) -> tuple[Any, ...]:
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union else (annotation,)


class ArgsAnalyzer(Analyzer):
    """The SDK's analyzer, taught this package's types.

    - args are dataclasses: their fields (not ClassVars), with annotations resolved (the modules use
      `from __future__ import annotations`); a field with a default is optional;
    - outputs are the component's annotated `pulumi.Output[...]` attributes; a dict output is a
      TypedDict (its required keys are required);
    - `tuple[X, ...]` is an array of X, `Path` a string;
    - descriptions: a setting's declared description, else the attribute's docstring (the SDK's
      source parsing); a type's, its class docstring;
    - a secret setting (or a field whose metadata says `secret`) is `secret`; a plain default is
      the schema's `default`.
    """

    def __init__(self, name: str):
        super().__init__(name)
        # (schema type name or "" for the component's inputs, property) -> extra schema fields.
        self.extras: dict[tuple[str, str], dict[str, Any]] = {}
        self._paths = _args_paths()

    # ---- components, types and their properties ------------------------------------------------

    def analyze_component(self, component: type[ComponentResource]) -> ComponentDefinition:
        hints = typing.get_type_hints(component.__init__, localns=_HINT_NAMES)
        args = next((a for a in _union_members(hints.get("args"))
                     if isinstance(a, type) and dataclasses.is_dataclass(a)), None)
        if args is None:
            raise TypeError(f"{component.__name__}.__init__ needs an `args` annotated with an args dataclass")
        inputs, inputs_mapping = self.analyze_type(args, is_component_output=False)
        outputs, outputs_mapping = self.analyze_type(component, is_component_output=True)
        return ComponentDefinition(name=component.__name__, description=_doc(component), inputs=inputs,
                                   inputs_mapping=inputs_mapping, outputs=outputs, outputs_mapping=outputs_mapping,
                                   module=component.__module__)

    def analyze_type(self, typ: type, *, is_component_output: bool
                     ) -> tuple[dict[str, PropertyDefinition], dict[str, str]]:
        if dataclasses.is_dataclass(typ):
            fields = {f.name: f for f in dataclasses.fields(typ) if f.init}
            hints = field_types(typ)
            required = {n for n, f in fields.items()
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
            owner = "" if typ is ServedModelArgs else _schema_name(typ)
            for n, f in fields.items():
                extra = self._extra(f)
                if extra:
                    self.extras[(owner, camel(n))] = extra
        elif typing.is_typeddict(typ):
            hints = typing.get_type_hints(typ)
            required = set(typ.__required_keys__)  # type: ignore[attr-defined]
        elif isinstance(typ, type) and issubclass(typ, ComponentResource):
            hints = {}
            for cls in typ.__mro__:
                if issubclass(cls, ComponentResource) and cls is not ComponentResource:
                    own = inspect.get_annotations(cls, eval_str=True, locals=_HINT_NAMES)
                    hints = {k: v for k, v in own.items() if not k.startswith("_")} | hints
            required = {n for n, h in hints.items() if type(None) not in _union_members(h)}
        else:
            raise TypeError(f"{typ!r}: not an args dataclass, a TypedDict or a component")
        props = {camel(n): self.analyze_property(h, typ, n, can_be_plain=not is_component_output,
                                                 is_component_output=is_component_output,
                                                 optional=n not in required)
                 for n, h in hints.items()}
        return props, {camel(n): n for n in hints}

    def analyze_property(self, arg: type, typ: type, name: str, *, can_be_plain: bool, is_component_output: bool,
                         optional: Optional[bool] = None) -> PropertyDefinition:
        if arg is Path:
            arg = str
        elif typing.get_origin(arg) is tuple:
            items = [a for a in typing.get_args(arg) if a is not Ellipsis]
            if len(set(items)) != 1:
                raise TypeError(f"{typ.__name__}.{name}: only tuple[X, ...] is an array, not {arg!r}")
            arg = list[items[0]]  # type: ignore[valid-type]
        elif isinstance(arg, type) and (dataclasses.is_dataclass(arg) or typing.is_typeddict(arg)):
            return self._object(arg, typ, name, can_be_plain, is_component_output, optional)
        return super().analyze_property(arg, typ, name, can_be_plain=can_be_plain,
                                        is_component_output=is_component_output, optional=optional)

    def _object(self, arg: type, typ: type, name: str, can_be_plain: bool, is_component_output: bool,
                optional: Optional[bool]) -> PropertyDefinition:
        type_name = _schema_name(arg)
        if type_name not in self.type_definitions:
            type_def = TypeDefinition(name=type_name, type=PropertyType.OBJECT, properties={}, properties_mapping={},
                                      description=_doc(arg), module=arg.__module__, python_type=arg)
            self.type_definitions[type_name] = type_def
            type_def.properties, type_def.properties_mapping = self.analyze_type(
                arg, is_component_output=is_component_output)
        elif self.type_definitions[type_name].python_type is not arg:
            raise TypeError(f"two types are named {type_name} in the schema: {arg!r} and "
                            f"{self.type_definitions[type_name].python_type!r}")
        return PropertyDefinition(ref=f"#/types/{self.name}:index:{type_name}", optional=bool(optional),
                                  plain=True if can_be_plain else None, description=self.get_docstring(typ, name))

    # ---- descriptions, secrets, defaults ------------------------------------------------------

    def get_docstring(self, typ: type, name: str) -> Optional[str]:
        declared = self._setting(typ, name)
        text = declared.description if declared is not None else super().get_docstring(typ, name)
        if not text:
            return None
        text = REF.sub(lambda m: _reference(m.group(1), self._paths), text)
        return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())

    @staticmethod
    def _setting(typ: type, name: str) -> Any:
        if not dataclasses.is_dataclass(typ):
            return None
        f = next((f for f in dataclasses.fields(typ) if f.name == name), None)
        return f.metadata.get("setting") if f is not None else None

    @staticmethod
    def _extra(f: dataclasses.Field) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        declared = f.metadata.get("setting")
        if (declared is not None and declared.secret) or f.metadata.get("secret"):
            extra["secret"] = True
        if type(f.default) in (str, int, float, bool):
            extra["default"] = f.default
        return extra


def _apply_extras(schema: dict[str, Any], extras: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """Add the fields the SDK's schema classes have no room for (secret, default)."""
    for (owner, prop), extra in extras.items():
        if owner:
            target = schema["types"][f"{PACKAGE}:index:{owner}"]["properties"][prop]
        else:
            target = schema["resources"][f"{PACKAGE}:index:ServedModel"]["inputProperties"][prop]
        target.update(extra)
    return schema


def package_schema(version: str = __version__) -> dict[str, Any]:
    """The provider's schema, inferred from the types (what provider/schema.json holds)."""
    analyzer = ArgsAnalyzer(PACKAGE)
    result = analyzer.analyze([ServedModel])
    spec = generate_schema(PACKAGE, version, None, result["component_definitions"], result["type_definitions"],
                           sorted(result["dependencies"], key=lambda d: f"{d.name}{d.version}"))
    schema = _apply_extras(spec.to_json(), analyzer.extras)
    schema["description"] = f"ServedModel: a PyTorch model from source to a served, autoscaled endpoint. {UP_NEEDS}"
    return schema


def schema_text() -> str:
    """provider/schema.json as written (`python -m servedmodel.components.config_doc` writes it with
    the other files derived from the declarations)."""
    return json.dumps(package_schema(), indent=2, sort_keys=True) + "\n"


class ServedModelProvider(ComponentProvider):
    """The SDK's component provider with this package's analyzer, and inputs turned into
    ServedModelArgs before the component is constructed (a bad input is an input error naming the
    property as the program wrote it)."""

    def __init__(self, version: str = __version__) -> None:
        self._name = PACKAGE
        self.analyzer = ArgsAnalyzer(PACKAGE)
        result = self.analyzer.analyze([ServedModel])
        self._components = {ServedModel.__name__: ServedModel}
        self._component_defs = result["component_definitions"]
        self._type_defs = result["type_definitions"]
        self._external_enum_types = result["external_enum_types"]
        self._dependencies = sorted(result["dependencies"], key=lambda d: f"{d.name}{d.version}")
        super(ComponentProvider, self).__init__(version, json.dumps(package_schema(version)))

    def construct(self, name: str, resource_type: str, inputs: pulumi.Inputs,
                  options: Optional[pulumi.ResourceOptions] = None) -> ConstructResult:
        self.validate_resource_type(self._name, resource_type)
        component_def = self._component_defs[ServedModel.__name__]
        try:
            args = args_from_mapping(self.map_inputs(inputs, component_def))
        except ArgsError as exc:
            raise input_error(exc) from None
        try:
            component = ServedModel(name, args, options)
        except Exception as exc:  # noqa: BLE001 - the SDK's way to tell the component's errors from its own
            raise ComponentInitError(exc) from exc
        return ConstructResult(component.urn, self.get_state(component, component_def))

    def map_input_properties(self, inputs: pulumi.Inputs, properties: dict[str, PropertyDefinition],
                             mapping: dict[str, str], component_name: str, property_path: str) -> pulumi.Inputs:
        # Two values the SDK's mapping would get wrong go to the args as they came: an integer
        # (the SDK's int() would make 2.5 a 2 and fail on an Output; an integral float becomes an
        # int) and an object given as another resource's output as a whole (the SDK would read it
        # as {}). The args' checks then name what is wrong with them.
        given = inputs if isinstance(inputs, dict) else {}
        kept = {key: value for key, value in given.items() if key in properties and value is not None and (
            properties[key].type == PropertyType.INTEGER or (properties[key].ref and isinstance(value, pulumi.Output)))}
        mapped = dict(super().map_input_properties({k: v for k, v in given.items() if k not in kept}, {
            k: dataclasses.replace(p, optional=True) if k in kept else p for k, p in properties.items()},
            mapping, component_name, property_path))
        for key, value in kept.items():
            mapped[mapping[key]] = int(value) if isinstance(value, float) and value.is_integer() else value
        return mapped


def _schema_path(path: str) -> str:
    """An args path in the schema's names (`autoscaling.max_replicas` -> `autoscaling.maxReplicas`)."""
    return ".".join(camel(part) for part in path.split("."))


def input_error(exc: ArgsError) -> InputPropertiesError:
    """The args' problems as the engine reports bad inputs: per property, in the schema's names."""
    errors: list[InputPropertyErrorDetails] = [
        {"property_path": _schema_path(p.field), "reason": p.render(_schema_path).split(": ", 1)[1]}
        for p in exc.problems]
    message = f"invalid {ServedModel.__name__} inputs ({len(errors)} problem{'' if len(errors) == 1 else 's'}):\n" \
        + "\n".join(f"  - {p.render(_schema_path)}" for p in exc.problems)
    return InputPropertiesError(message, errors)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Serve the provider to the engine (provider/__main__.py); `--schema` prints the schema instead."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--schema"]:
        sys.stdout.write(schema_text())
        return
    serve(ServedModelProvider(), args)


if __name__ == "__main__":
    main()
