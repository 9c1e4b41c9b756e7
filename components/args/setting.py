"""One declaration per stack setting: `setting(...)` on the args field that carries it.

A setting is declared once, where its value lands:

    max_replicas: int = setting(1, "Maximum replicas. Above @{autoscaling.replicas} an HPA ...",
                                key="maxReplicas", check=integer(1))

- the field's **annotation** is its type (`int`, `str`, `bool`, `float`, `tuple[str, ...]`,
  `Optional[...]`, `pulumi.Input[...]`); the stack's type follows from it (Pulumi.yaml has no
  number type: a `float` is a decimal number in a string);
- the field's **default** is the default everywhere (the Python API, Pulumi.yaml, docs/config.md);
- `description` is the text of Pulumi.yaml and docs/config.md; `@{group.field}` names another
  setting and is written as its stack key there (and as its field path in Python messages);
- `key` is the flat stack key (`servedmodel:<key>`); `name` its name inside the group's
  structured key (`servedmodel:autoscaling: {maxReplicas: 4}`); both default to the field name
  in camelCase;
- `check` is the value's own check (components/args/checking.py); rules between fields live in
  the group's `rules`, rules between groups in components/args/rules.py.

From these declarations `settings_of` lists a class's settings, `Schema` indexes every setting of
the stack (flat keys, group keys, paths), components/settings.py reads the stack config with it,
and components/config_doc.py writes Pulumi.yaml's `config:` block and docs/config.md from it.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import functools
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

import pulumi

__all__ = ["REF", "REQUIRED", "Check", "Declared", "Schema", "Setting", "camel", "setting", "settings_of"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


# `@{group.field}` in a description or a problem: another setting, named for the reader.
REF = re.compile(r"@\{([a-z_.]+)\}")
REQUIRED: Any = _Required()
"""A setting's field without a Python default (the caller must give it); its stack default is
`stack_default`."""
_NOTHING: Any = object()

# A check: value -> None (good), the accepted text, or [(value, accepted text), ...] (one problem
# per item). components/args/checking.py has the common ones.
Check = Callable[[Any], Any]


@dataclass(frozen=True)
class Setting:
    """What `setting()` puts in a field's metadata (see the module docstring)."""

    description: str
    key: str = ""
    name: str = ""
    check: Optional[Check] = None
    unset: Any = _NOTHING
    """The stack value that stands for None (0, "", []): Pulumi.yaml declares it as the default."""
    stack_default: Any = _NOTHING
    """The stack's default of a field the Python API requires (REQUIRED)."""
    secret: bool = False
    """Accepted only as a Pulumi secret: a flat stack-only key, never in Pulumi.yaml or a group."""
    flat_only: bool = False
    """No name inside the group's structured key (a stack-wide value such as clusterName)."""


def setting(default: Any, description: str, *, key: str = "", name: str = "", check: Optional[Check] = None,
            unset: Any = _NOTHING, stack_default: Any = _NOTHING, secret: bool = False, flat_only: bool = False,
            repr: bool = True, compare: bool = True) -> Any:
    """A dataclass field that is a stack setting; `default` is REQUIRED for a field without one."""
    meta = {"setting": Setting(description, key, name, check, unset, stack_default, secret, flat_only)}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta, repr=repr, compare=compare)
    return dataclasses.field(default=default, metadata=meta, repr=repr, compare=compare)


def camel(field_name: str) -> str:
    """`max_replicas` -> `maxReplicas`."""
    head, *rest = field_name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@dataclass(frozen=True)
class Declared:
    """A setting bound to its field: where it lands, its stack names, its type and defaults."""

    setting: Setting
    owner: type
    field: str
    path: str
    """The args path of the field (`autoscaling.max_replicas`; top-level fields: the field name)."""
    kind: str
    """string | integer | boolean | number | array (of strings) | map (name -> list of strings: a
    secret's structured value, never in Pulumi.yaml)."""
    optional: bool
    """None is a value (the field is Optional): the stack writes it as `setting.unset`."""
    is_input: bool
    """The field accepts a pulumi.Input (another resource's output)."""
    default: Any
    """The field's default (REQUIRED when the Python API has none)."""

    @property
    def key(self) -> str:
        return self.setting.key or camel(self.field)

    @property
    def name(self) -> Optional[str]:
        """Its name inside the group's structured key; None when it has none."""
        group = getattr(self.owner, "STACK_GROUP", None)
        if group is None or self.setting.flat_only or self.setting.secret:
            return None
        return self.setting.name or camel(self.field)

    @property
    def description(self) -> str:
        return self.setting.description

    @property
    def check(self) -> Optional[Check]:
        return self.setting.check

    @property
    def secret(self) -> bool:
        return self.setting.secret

    @property
    def unset(self) -> Any:
        return None if self.setting.unset is _NOTHING else self.setting.unset

    @property
    def pulumi_type(self) -> str:
        """The type Pulumi.yaml declares (no number type there: a decimal number in a string)."""
        return {"number": "string"}.get(self.kind, self.kind)

    @property
    def stack_default(self) -> Any:
        """The default as the stack writes it (JSON types: what Pulumi.yaml declares)."""
        if self.setting.stack_default is not _NOTHING:
            return self.setting.stack_default
        if self.default is REQUIRED:
            raise TypeError(f"{self.path}: a REQUIRED setting needs a stack_default")
        if self.default is None:
            if self.setting.unset is _NOTHING:
                raise TypeError(f"{self.path}: an Optional setting defaulting to None needs `unset`")
            return self.setting.unset
        if self.kind == "array":
            return list(self.default)
        if self.kind == "number":
            return repr(float(self.default))
        return self.default

    @property
    def group_key(self) -> Optional[str]:
        """The structured key of the group this setting belongs to (None: no structured form)."""
        return getattr(self.owner, "STACK_GROUP", None)


def _kind(annotation: Any) -> tuple[str, bool, bool]:
    """(kind, optional, accepts Input) of a field annotation."""
    optional = is_input = False
    base: list[Any] = []
    for arg in _union_args(annotation):
        origin = typing.get_origin(arg) or arg
        if arg is type(None):
            optional = True
        elif origin in (collections.abc.Awaitable, pulumi.Output):
            is_input = True
        else:
            base.append(arg)
    if len(base) != 1:
        raise TypeError(f"cannot derive a stack type from {annotation!r}")
    tp = base[0]
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return simple[tp], optional, is_input
    if typing.get_origin(tp) in (tuple, list, collections.abc.Sequence):
        items = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(items) == 1 and _kind(items[0])[0] == "string":
            return "array", optional, is_input
    if typing.get_origin(tp) in (dict, collections.abc.Mapping):
        key, value = typing.get_args(tp)
        if key is str and _kind(value)[0] == "array":
            return "map", optional, is_input
    raise TypeError(f"cannot derive a stack type from {annotation!r}")


def _union_args(annotation: Any) -> Iterable[Any]:
    if typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            yield from _union_args(arg)
    else:
        yield annotation


@functools.cache
def settings_of(cls: type) -> tuple[Declared, ...]:
    """The settings declared on `cls` (a dataclass), in field order."""
    # pulumi.Input is Union[T, Awaitable[T], "Output[T]"]: its forward reference needs Output.
    hints = typing.get_type_hints(cls, localns={"Output": pulumi.Output, "T": typing.TypeVar("T")})
    group = getattr(cls, "GROUP", "")
    out = []
    for f in dataclasses.fields(cls):
        s = f.metadata.get("setting")
        if s is None:
            continue
        kind, optional, is_input = _kind(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else REQUIRED
        out.append(Declared(s, cls, f.name, f"{group}.{f.name}" if group else f.name, kind, optional, is_input,
                            default))
    return tuple(out)


class Schema:
    """Every setting of one stack program, indexed the ways the stack names them.

    `owners` are the classes whose settings make up the stack (the args groups, ServedModelArgs,
    the program's own Settings); `derived` maps an args path that no key sets to the setting
    whose value it takes (one Prometheus for KEDA and the canary analysis).
    """

    def __init__(self, owners: Iterable[type], derived: Optional[Mapping[str, str]] = None):
        self.settings: tuple[Declared, ...] = tuple(d for cls in owners for d in settings_of(cls))
        self.by_path = {d.path: d for d in self.settings}
        self.by_key = {d.key: d for d in self.settings}
        self.derived = dict(derived or {})
        self.groups: dict[str, type] = {}
        for d in self.settings:
            if d.group_key is not None:
                self.groups.setdefault(d.group_key, d.owner)
        self.in_group = {(d.group_key, d.name): d for d in self.settings if d.name is not None}
        if len(self.by_key) != len(self.settings) or len(self.by_path) != len(self.settings):
            raise TypeError("two settings share a stack key or a path")
        clash = [k for k in self.by_key if k in self.groups and self.shorthand(k) is not self.by_key[k]]
        if clash:
            raise TypeError(f"flat keys that are also group keys: {clash}")

    def shorthand(self, group_key: str) -> Optional[Declared]:
        """The setting a plain (non-object) value of a group key sets (`servedmodel:rollout: canary`)."""
        field = getattr(self.groups[group_key], "SHORTHAND", None)
        return next((d for d in self.settings if d.owner is self.groups[group_key] and d.field == field), None)

    def members(self, group_key: str) -> tuple[Declared, ...]:
        return tuple(d for d in self.settings if d.group_key == group_key and d.name is not None)

    def flat_keys(self) -> tuple[str, ...]:
        """Keys that stand for one setting each (the shorthand's key is its group's key)."""
        return tuple(d.key for d in self.settings)

    def project_settings(self) -> tuple[Declared, ...]:
        """What Pulumi.yaml declares: every non-secret flat key that is not also a group key (a group
        key may hold an object, which project config cannot declare)."""
        return tuple(d for d in self.settings if not d.secret and d.key not in self.groups)

    def stack_key(self, path: str) -> str:
        """The flat key that sets an args path (derived paths: their source's)."""
        path = self.derived.get(path, path)
        d = self.by_path.get(path)
        return d.key if d is not None else path

    def render(self, text: str, name_of: Callable[[str], str]) -> str:
        """`@{group.field}` references written with `name_of(path)`."""
        return REF.sub(lambda m: name_of(m.group(1)), text)
