"""Each setting is declared once (issue 20): `setting(...)` on the args field it sets.

Its type (the annotation), default, stack key, group name, description and check are read from
that one declaration by the settings reader, Pulumi.yaml's `config:` block and docs/config.md;
these tests hold the derived things to the declarations and show what adding one takes.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

import pulumi
import pytest

from pulumi_harness import project_config as committed_project_config
from servedmodel.components.args import (
    REQUIRED,
    ArgsError,
    ArgsGroup,
    Checker,
    Schema,
    ServedModelArgs,
    setting,
    settings_of,
)
from servedmodel.components.args.checking import integer
from servedmodel.components.config_doc import project_config
from servedmodel.components.settings import SCHEMA, _decode, _is_unset


@dataclass(frozen=True)
class ProbeArgs(ArgsGroup):
    """A group the way a new one is written: each setting one declaration, rules in `rules`."""

    GROUP = "probe"
    STACK_GROUP = "probe"

    timeout_seconds: int = setting(30, "How long a probe waits; at most @{probe.limit_seconds}.", check=integer(1))
    limit_seconds: int = setting(60, "The ceiling.", key="probeLimit", check=integer(1))
    names: tuple[str, ...] = setting((), "Names.")
    share: float = setting(0.5, "A share.")
    budget: Optional[int] = setting(None, "0 leaves it to the server.", unset=0)
    hostname: pulumi.Input[str] = setting("", "A name another resource may produce.")

    def rules(self, c: Checker) -> None:
        if c.ok("timeout_seconds", "limit_seconds") and self.timeout_seconds > self.limit_seconds:
            c.bad("timeout_seconds", f"must not exceed @{{probe.limit_seconds}} ({self.limit_seconds})")


def test_adding_a_setting_is_one_declaration():
    by_field = {d.field: d for d in settings_of(ProbeArgs)}
    t = by_field["timeout_seconds"]
    assert (t.path, t.key, t.name, t.kind, t.pulumi_type, t.stack_default) == (
        "probe.timeout_seconds", "timeoutSeconds", "timeoutSeconds", "integer", "integer", 30)
    assert (by_field["limit_seconds"].key, by_field["limit_seconds"].name) == ("probeLimit", "limitSeconds")
    assert (by_field["names"].kind, by_field["names"].stack_default) == ("array", [])
    assert (by_field["share"].pulumi_type, by_field["share"].stack_default) == ("string", "0.5")
    assert (by_field["budget"].optional, by_field["budget"].stack_default) == (True, 0)
    assert by_field["hostname"].is_input and not t.is_input
    schema = Schema([ProbeArgs])
    assert schema.render(t.description, lambda path: f"servedmodel:{schema.stack_key(path)}") == \
        "How long a probe waits; at most servedmodel:probeLimit."
    assert schema.members("probe") == settings_of(ProbeArgs)
    # Its checks and rules run on construction, naming fields by path.
    with pytest.raises(ArgsError) as err:
        ProbeArgs(timeout_seconds=0, limit_seconds=True)
    assert str(err.value).splitlines()[1:] == ["  - probe.timeout_seconds = 0: must be 1 or more",
                                               "  - probe.limit_seconds = True: must be an integer"]
    with pytest.raises(ArgsError, match=r"probe.timeout_seconds = 90: must not exceed probe.limit_seconds \(60\)"):
        ProbeArgs(timeout_seconds=90)
    # A field that does not accept another resource's output refuses one at once.
    with pytest.raises(ArgsError, match="must be a plain value, not another resource's output"):
        # (the wrong type is the point)
        ProbeArgs(timeout_seconds=pulumi.Output.from_input(5))  # pyright: ignore[reportArgumentType]


def test_the_committed_pulumi_yaml_declares_what_the_declarations_say():
    assert committed_project_config() == project_config()


@pytest.mark.parametrize("d", list(SCHEMA.project_settings()), ids=lambda d: d.key)
def test_the_stack_default_is_the_python_default(d):
    """Pulumi.yaml's default, read as the stack reads it, is the args field's own default."""
    typed, problem = _decode(d, d.stack_default, in_group=False)
    assert problem is None
    value = None if _is_unset(d, typed) else typed
    if d.default is not REQUIRED:
        assert value == d.default
    assert d.description and not d.description.endswith(" ")


def test_every_setting_belongs_to_one_field_and_every_field_of_a_group_is_declared_or_documented():
    assert len({d.path for d in SCHEMA.settings}) == len(SCHEMA.settings)
    declared = {d.path for d in SCHEMA.settings}
    # Fields the stack does not set: ServedModelArgs' groups and paths, values derived from
    # another setting, and the ones no stack key sets yet.
    not_settings = {"model", "out_dir", "resources", "autoscaling", "network", "server", "registry", "node_pool",
                    "rollout", "monitoring", "elastic", "encryption", "cache_dir", "rollout.prometheus_address",
                    "rollout.query_timeout_seconds",
                    # The cluster (Settings.cluster_name, from node_pool.cluster_name's key) given to each model.
                    "cluster_name"}
    for cls in [ServedModelArgs, *{d.owner for d in SCHEMA.settings if d.owner is not ServedModelArgs}]:
        group = getattr(cls, "GROUP", "")
        for f in fields(cls):
            path = f"{group}.{f.name}" if group else f.name
            if cls.__name__ == "Settings" and f.name in ("target", "cluster_name", "served", "aws_profile"):
                continue
            assert path in declared or path in not_settings, path
