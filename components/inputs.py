"""Values another resource may produce (`pulumi.Input`): checked now when known, later when not.

A component arg that names something another resource may produce (a namespace, a certificate
ARN, a hostname, the EKS cluster's name, subnet or security-group ids, a role, a registry) accepts
a `pulumi.Output`.
Its check cannot run at construction then: it is deferred, not skipped. `check_input` is the one
helper every such field goes through: a plain value is checked at once (the caller collects the
problem with the others); an Output comes back as an Output of the same value (same dependencies,
same secrecy) whose apply runs the same check once the value is known and raises with the same
message. During a preview an unknown value runs no check (there is nothing to check yet); the
update that knows it does.

`lift` lets a pure builder (components/specs.py, monitoring.py, canary.py, keda.py, ...) take
plain strings and still serve an Output: it calls the builder directly when every value is plain
(the declared inputs stay exactly what they were) and inside one apply otherwise.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional, TypeVar, cast

import pulumi

__all__ = ["check_input", "given", "is_plain", "known", "lift"]

T = TypeVar("T")


def is_plain(value: Any) -> bool:
    """True for a value known now (not an Output, not awaitable)."""
    return not isinstance(value, pulumi.Output) and not inspect.isawaitable(value)


def _plain_items(value: Any) -> Any:
    """A list or tuple whose items are Outputs becomes one Output of the list (checked whole)."""
    if isinstance(value, (list, tuple)) and not all(is_plain(v) for v in value):
        return pulumi.Output.all(*value).apply(type(value))
    return value


def check_input(value: Any, check: Callable[[Any], Any], error: Callable[[Any, Any], Exception]) -> tuple[Any, Any]:
    """(what to keep, the problem now).

    `check(value)` returns None when the value is good, else its problem (whatever the caller's
    `error(value, problem)` turns into the exception). A plain value is kept as it is and its
    problem returned; an Output (or a list holding Outputs) is kept as an Output that raises
    `error(known, problem)` from its apply once known, and no problem is returned now.
    """
    value = _plain_items(value)
    if is_plain(value):
        return value, check(value)

    def run(known: Any) -> Any:
        problem = check(known)
        if problem is not None:
            raise error(known, problem)
        return known

    return pulumi.Output.from_input(value).apply(run), None


def lift(build: Callable[..., Any], *values: Any) -> Any:
    """`build(*values)` when every value is plain; an Output of it, once all are known, otherwise."""
    values = tuple(_plain_items(v) for v in values)
    if all(is_plain(v) for v in values):
        return build(*values)
    return pulumi.Output.all(*values).apply(lambda known: build(*known))


def given(value: Optional[Any]) -> bool:
    """A value counts as given when it is an Output (it will be known later) or a non-empty value."""
    return not is_plain(value) or bool(value)


def known(value: pulumi.Input[T]) -> T:
    """`value`, which the caller has made plain (inside an apply, or after `is_plain`), for a
    builder that writes it into text: an Output there would print as a warning, not a name."""
    if not is_plain(value):
        raise TypeError(f"a known value is needed here, got {type(value).__name__}: resolve it in an apply first")
    return cast(T, value)
