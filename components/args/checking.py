"""The checking machinery every args group shares: Problem, ArgsError, the Checker, common checks.

A group (`ArgsGroup` subclass) checks itself when it is created: first every declared setting's
type and check (in field order), then its own `rules` between fields; it raises one `ArgsError`
with every problem. A field that accepts `pulumi.Input` and holds an Output is checked when the
Output is known (components/inputs.py `check_input`), with the same message; a field that does
not accept one refuses it at once (its value decides which resources are declared).

A problem's text may name another field as `@{group.field}`: `Problem.render` writes it as the
field's path here, and the stack settings write it as the stack key (`servedmodel:maxReplicas`),
so one rule gives the right words to both kinds of callers.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Sequence

import pulumi

from ..inputs import check_input, is_plain
from .setting import REF, Check, settings_of

__all__ = ["ArgsError", "ArgsGroup", "Checker", "Problem", "cidr", "dns_label", "each", "integer", "is_dns_label",
           "matching", "one_of"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Problem:
    """One bad value: the field's path (`autoscaling.max_replicas`), the value, what is accepted."""

    field: str
    value: Any
    accepted: str
    secret: bool = False  # never echo the value

    def render(self, name_of: Callable[[str], str] = lambda path: path) -> str:
        text = REF.sub(lambda m: name_of(m.group(1)), self.accepted)
        shown = "[secret]" if self.secret else repr(self.value)
        return f"{name_of(self.field)} = {shown}: {text}"


class ArgsError(ValueError, pulumi.RunError):
    """Every problem of one args object (or of several, when the stack settings collect them).

    Also a `pulumi.RunError`: a program stopped by bad args (at construction, or when an
    Output it was given turns out bad) ends with this message, not a traceback.
    """

    def __init__(self, what: str, problems: Sequence[Problem]):
        self.what = what
        self.problems = list(problems)
        super().__init__(f"invalid {what} ({len(self.problems)} problem{'' if len(self.problems) == 1 else 's'}):\n"
                         + "\n".join(f"  - {p.render()}" for p in self.problems))


def _found(result: Any, value: Any) -> list[tuple[Any, str]]:
    """A check's result as [(value, accepted text)]: None, a text, or that list already."""
    if result is None:
        return []
    if isinstance(result, str):
        return [(value, result)]
    return list(result)


class Checker:
    """Collects the problems of one args object; `raise_if_any` raises them together."""

    def __init__(self, group: str, obj: Any):
        self.group, self.obj, self.problems = group, obj, []
        self.failed: set[str] = set()

    def path(self, name: str) -> str:
        return f"{self.group}.{name}" if self.group else name

    def bad(self, name: str, accepted: str, value: Any = ..., secret: bool = False) -> None:
        self.problems.append(Problem(self.path(name), getattr(self.obj, name) if value is ... else value,
                                     accepted, secret))
        self.failed.add(name)

    def ok(self, *names: str) -> bool:
        """None of these fields has a problem (so a rule between them can read them)."""
        return not self.failed.intersection(names)

    def check(self, name: str, check: Check, accepts_input: bool = True) -> bool:
        """Run `check` on the field now, or (an Output) when it is known; True when no problem now."""
        value = getattr(self.obj, name)
        if not accepts_input and not is_plain(value):
            self.bad(name, "must be a plain value, not another resource's output: it decides which resources "
                           "are declared")
            return False
        what = type(self.obj).__name__

        def error(known: Any, found: Any) -> Exception:
            return ArgsError(what, [Problem(self.path(name), v, text) for v, text in found])

        kept, found = check_input(value, lambda v: _found(check(v), v) or None, error)
        if kept is not value:
            object.__setattr__(self.obj, name, kept)  # the Output that carries the check
        for v, text in found or ():
            self.bad(name, text, value=v)
        return not found

    def declared(self) -> None:
        """Every setting declared on the object's class: its type, then its own check."""
        for d in settings_of(type(self.obj)):
            checks = [c for c in (_TYPE_CHECKS.get(d.kind), d.check) if c is not None]
            optional = d.optional

            def run(value: Any, checks: list[Check] = checks, optional: bool = optional) -> Any:
                if value is None and optional:
                    return None
                for c in checks:
                    found = c(value)
                    if found:
                        return found
                return None

            self.check(d.field, run, accepts_input=d.is_input)

    def raise_if_any(self, what: str) -> None:
        if self.problems:
            raise ArgsError(what, self.problems)


class ArgsGroup:
    """Base of the args groups: checks the declared settings, then `rules`, and raises once.

    `GROUP` is the group's args path (`autoscaling`); `STACK_GROUP` its structured stack key
    (`servedmodel:autoscaling: {...}`; None: flat keys only); `SHORTHAND` the field a plain value
    of that key sets (`servedmodel:rollout: canary`).
    """

    GROUP: ClassVar[str] = ""
    STACK_GROUP: ClassVar[Optional[str]] = None
    SHORTHAND: ClassVar[Optional[str]] = None

    def __post_init__(self) -> None:
        c = Checker(self.GROUP, self)
        c.declared()
        self.rules(c)
        c.raise_if_any(type(self).__name__)

    def rules(self, c: Checker) -> None:
        """The group's rules between its fields (each field has checked itself already)."""


# ---- common checks: value -> None, or what is accepted -------------------------------------------

def integer(minimum: Optional[int] = None, maximum: Optional[int] = None) -> Check:
    """An integer (not a bool) in [minimum, maximum]."""
    def check(value: Any) -> Optional[str]:
        if not isinstance(value, int) or isinstance(value, bool):
            return "must be an integer"
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            return (f"must be between {minimum} and {maximum}" if maximum is not None
                    else f"must be {minimum} or more")
        return None
    return check


def _boolean(value: Any) -> Optional[str]:
    return None if isinstance(value, bool) else "must be true or false"


# The type checks a declared kind brings with it (a string's check is the setting's own).
_TYPE_CHECKS: dict[str, Check] = {"integer": integer(), "boolean": _boolean}


def one_of(choices: Sequence[str]) -> Check:
    def check(value: Any) -> Optional[str]:
        return None if value in choices else f"accepted: one of {', '.join(choices)}"
    return check


def matching(pattern: re.Pattern[str], accepted: str) -> Check:
    """A string that the pattern matches."""
    def check(value: Any) -> Optional[str]:
        return None if isinstance(value, str) and pattern.match(value) else accepted
    return check


def is_dns_label(value: Any, max_len: int = 63) -> bool:
    return isinstance(value, str) and len(value) <= max_len and bool(_DNS_LABEL.match(value))


def dns_label(accepted: str, max_len: int = 63) -> Check:
    def check(value: Any) -> Optional[str]:
        return None if is_dns_label(value, max_len) else accepted
    return check


def each(check: Check) -> Check:
    """Every item of a list: one problem per bad item, naming the item."""
    def run(values: Any) -> list[tuple[Any, str]]:
        return [(item, text) for item in values or () for _, text in _found(check(item), item)]
    return run


def cidr(value: Any) -> Optional[str]:
    try:
        ipaddress.ip_network(value)
    except (TypeError, ValueError):
        return "each entry must be a CIDR block such as 10.0.0.0/16"
    return None
