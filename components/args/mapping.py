"""A plain mapping (the component provider's inputs, or a dict a Python caller writes) -> ServedModelArgs.

The provider (components/provider.py) receives a ServedModel's inputs from a program in another
language as one nested dict of Python field names (`{"model": {"served_name": ...}, "out_dir":
...}`); `args_from_mapping` turns it into the grouped args with the groups' own checks, so a value
gets the same message whichever way it came. Each group is built from its entry (a group that
fails reports its own problems; the rules between groups then run over the groups that built, as
the stack settings do), and one `ArgsError` lists every problem.

The conversion follows each field's annotation: a group is built from its mapping, a `tuple[...]`
from a list, a `Path` from a string; everything else goes to the group as it came (an Output
included: a field that accepts `pulumi.Input` checks it when known, one that does not refuses it).
An Optional setting's "not set" value as the stack writes it (`unset=`: 0, "" or []) is None here
too, so the setting's description holds for both (`maxBatchSize: 0` leaves it to the manifest).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi

from .checking import ArgsError, ArgsGroup, Checker, Problem
from .rules import cross_group_problems
from .served_model import GROUP_TYPES, ServedModelArgs
from .setting import settings_of

__all__ = ["args_from_mapping", "field_types"]


class _Missing:
    def __repr__(self) -> str:
        return "(missing)"


_MISSING: Any = _Missing()


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> its annotation, resolved (`pulumi.Input` included), for an args dataclass."""
    hints = typing.get_type_hints(cls, localns={"Output": pulumi.Output, "T": typing.TypeVar("T")})
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _base(annotation: Any) -> Any:
    """The annotation without Optional."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation


def _convert(annotation: Any, value: Any) -> Any:
    """A plain value into the field's Python type (tuple, Path); anything else as it came."""
    base = _base(annotation)
    if base is Path and isinstance(value, str):
        return Path(value)
    if typing.get_origin(base) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _fields(cls: type, data: Any, path: str, problems: list[Problem]) -> dict[str, Any]:
    """The keyword arguments of `cls` from `data`, with the problems of their shape."""
    if not isinstance(data, Mapping):
        what = "another resource's output as a whole" if isinstance(data, pulumi.Output) else type(data).__name__
        problems.append(Problem(path, data if not isinstance(data, pulumi.Output) else "<output>",
                                f"must be an object of {cls.__name__}'s fields, not {what} (its fields decide which "
                                "resources are declared)"))
        return {}
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in known:
            near = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            problems.append(Problem(f"{path}.{key}" if path else str(key), data[key],
                                    f"unknown; {hint}accepted: {', '.join(known)}"))
    types = field_types(cls)
    unset = {d.field: d.unset for d in settings_of(cls) if d.optional and d.unset is not None}
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        if name in data:
            value = data[name]
            if name in unset and type(value) is type(unset[name]) and value == unset[name]:
                value = None  # the value the stack writes for "not set" (0, "", []) means the same here
            kwargs[name] = _convert(types[name], value)
        elif not _has_default(f):
            problems.append(Problem(f"{path}.{name}" if path else name, _MISSING, "required"))
    return kwargs


def _group(cls: type[ArgsGroup], data: Any, path: str, problems: list[Problem]) -> Any:
    """The group built from its mapping (an instance passes as it is), or None with its problems."""
    if isinstance(data, cls):
        return data
    before = len(problems)
    kwargs = _fields(cls, data, path, problems)
    if len(problems) > before:
        return None
    try:
        return cls(**kwargs)
    except ArgsError as exc:
        problems.extend(exc.problems)
        return None


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def args_from_mapping(data: Mapping[str, Any]) -> ServedModelArgs:
    """ServedModelArgs from a mapping of its field names; raises one ArgsError with every problem."""
    problems: list[Problem] = []
    kwargs = _fields(ServedModelArgs, data, "", problems)
    groups: dict[str, Any] = {}
    for name, cls in GROUP_TYPES.items():
        if name in kwargs:
            value = kwargs[name]
            groups[name] = None if name == "node_pool" and value is None else _group(cls, value, name, problems)
    if not problems:
        return ServedModelArgs(**(kwargs | groups))
    # The rules between groups still run over the groups that built (a group left out has its
    # default; one that failed reported its own problems and its rules are skipped), so one error
    # says everything that is wrong.
    ready = {f.name: _default(f) for f in dataclasses.fields(ServedModelArgs)
             if f.name in GROUP_TYPES and f.name not in kwargs and _has_default(f)}
    ready |= {name: group for name, group in groups.items()
              if group is not None or (name == "node_pool" and kwargs[name] is None)}
    # ServedModelArgs' own settings (target, protect), checked as its construction checks them.
    own = object.__new__(ServedModelArgs)
    for f in dataclasses.fields(ServedModelArgs):
        object.__setattr__(own, f.name, kwargs.get(f.name, _default(f) if _has_default(f) else None))
    c = Checker("", own)
    c.declared()
    if c.ok("target"):
        ready["target"] = own.target
    raise ArgsError("ServedModelArgs", problems + c.problems + cross_group_problems(ready))
