"""Structured stack config and unknown keys (issue 20).

A setting is written flat (`servedmodel:maxReplicas: 10`) or in its group
(`servedmodel:autoscaling: {maxReplicas: 10}`); both forms give the same settings and the same
resources; one setting given both ways is an error naming both keys; a misspelt key, flat or in
a group, stops the real program with one line naming it and the nearest known key.
"""
from __future__ import annotations

import json

import pulumi
import pytest

from pulumi_harness import STACKS, TEST_SECRET, flat_stack, merged_config, run_program, stack_file
from servedmodel.components.settings import SCHEMA, ConfigError, parse_settings, read_config

TOKEN = {"servedmodel:authToken": TEST_SECRET}
GROUPED_STACKS = [s for s in STACKS if any(isinstance(v, dict) and "secure" not in v for v in stack_file(s).values())]


def engine_config(stack: str, overrides: dict | None = None, stack_values: dict | None = None):
    """What the engine passes the program (text values, Pulumi.yaml defaults merged), as
    load_settings hands it to parse_settings: (raw, secrets)."""
    config, secret_keys = merged_config(stack, overrides, TOKEN, stack_values)
    raw = {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("servedmodel:")}
    return raw, {k.split(":", 1)[1]: config[k] for k in secret_keys}


def problems(stack: str, overrides: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_settings(*engine_config(stack, overrides))
    return err.value.problems


def grouped(config: dict) -> dict:
    """A flat stack config written with every groupable setting in its group."""
    out: dict = {}
    for full, value in config.items():
        d = SCHEMA.by_key.get(full.removeprefix("servedmodel:")) if full.startswith("servedmodel:") else None
        if d is None or d.name is None:
            out[full] = value
        else:
            out.setdefault(f"servedmodel:{d.group_key}", {})[d.name] = value
    return out


def test_the_shipped_stacks_use_both_forms():
    assert "local" not in GROUPED_STACKS and {"dev", "prod", "burst"} <= set(GROUPED_STACKS)


@pytest.mark.parametrize("stack", STACKS)
def test_flat_and_grouped_forms_give_the_same_settings(stack):
    written = stack_file(stack)
    settings = parse_settings(*engine_config(stack, stack_values=written))
    assert parse_settings(*engine_config(stack, stack_values=flat_stack(written))) == settings
    assert parse_settings(*engine_config(stack, stack_values=grouped(flat_stack(written)))) == settings


@pytest.mark.parametrize("stack", ["prod", "burst"])
def test_a_grouped_stack_written_flat_declares_identical_resources(stack_runs, stack):
    flat = run_program(stack, secrets=TOKEN, stack_values=flat_stack(stack_file(stack)))
    grouped_run = stack_runs[stack]

    def graph(run):
        return {r.urn: (r.inputs, sorted(r.dependencies), {k: sorted(v) for k, v in r.property_dependencies.items()},
                        r.custom_timeouts, r.protect, r.ignore_changes) for r in run.resources}
    assert graph(flat) == graph(grouped_run)
    assert flat.outputs == grouped_run.outputs


def test_a_group_sets_the_same_values_as_its_flat_keys():
    [a] = parse_settings(*engine_config("local", {"servedmodel:autoscaling": {"replicas": 2, "maxReplicas": 5,
                                                                              "metric": "queue"},
                                                  "servedmodel:rollout": {"analysisCount": 7, "maxShedRatio": 0.02},
                                                  "servedmodel:resources": {"cpu": 2}})).served
    assert (a.autoscaling.replicas, a.autoscaling.max_replicas, a.autoscaling.metric) == (2, 5, "queue")
    assert (a.rollout.analysis_count, a.rollout.max_shed_ratio, a.resources.cpu) == (7, 0.02, "2")


def test_a_group_with_a_shorthand_takes_its_main_settings_plain_value():
    [a] = parse_settings(*engine_config("local", {"servedmodel:monitoring": "none",
                                                  "servedmodel:rollout": "rolling"})).served
    assert (a.monitoring.mode, a.rollout.strategy) == ("none", "rolling")
    found = problems("local", {"servedmodel:rollout": {"strategy": "canary"}})
    assert any(p.startswith("servedmodel:rollout.strategy = 'canary': a canary needs the kubernetes target")
               for p in found), found


def test_one_setting_given_both_ways_is_an_error_naming_both_keys():
    found = problems("local", {"servedmodel:replicas": 2, "servedmodel:autoscaling": {"replicas": 3, "maxReplicas": 4}})
    assert found == ["servedmodel:replicas = 2 and servedmodel:autoscaling.replicas = 3: the same setting given "
                     "twice; keep one of them"], found


def test_a_flat_key_at_its_pulumi_yaml_default_yields_to_the_group():
    # The engine merges every Pulumi.yaml default (replicas: 1) into the config: it cannot be told
    # from a key left unset, so the group's value holds.
    [a] = parse_settings(*engine_config("local", {"servedmodel:autoscaling": {"replicas": 2, "maxReplicas": 3}})).served
    assert a.autoscaling.replicas == 2


def test_problems_name_each_setting_as_the_stack_wrote_it():
    found = problems("local", {"servedmodel:autoscaling": {"replicas": 3, "maxReplicas": 2},
                               "servedmodel:resources": {"gpu": "one"}, "servedmodel:server": ["drain"]})
    assert "servedmodel:autoscaling.replicas = 3: must not exceed servedmodel:autoscaling.maxReplicas (2); " \
           "min > max replicas" in found
    assert "servedmodel:resources.gpu = 'one': must be an integer" in found
    assert any(p.startswith("servedmodel:server = ['drain']: must be an object of its settings: drainSeconds, ")
               for p in found), found


def test_a_secret_is_never_set_inside_a_group_and_its_value_never_echoed():
    found = problems("local", {"servedmodel:network": {"authToken": "hunter2"}})
    assert found == ["servedmodel:network.authToken: not set in servedmodel:network; set it as "
                     "servedmodel:authToken (a secret: pulumi config set --secret)"], found


def test_every_group_member_has_a_flat_key_and_a_name_of_its_own():
    for key in SCHEMA.groups:
        names = [d.name for d in SCHEMA.members(key)]
        assert names and len(names) == len(set(names)), key
    assert set(SCHEMA.groups) == {"resources", "autoscaling", "network", "server", "nodePool", "rollout",
                                  "monitoring", "elastic", "encryption"}


# ---- a misspelt key is an error (through the real __main__.py under the mocks) ----------------------

def test_a_misspelt_flat_key_stops_the_program_naming_the_nearest_known_key(model_cache):
    with pytest.raises(pulumi.RunError) as err:
        run_program("local", {"servedmodel:replcias": 3})
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid stack config (1 problem):"
    assert lines[1:] == ["  - servedmodel:replcias: unknown key; did you mean servedmodel:replicas?"]


def test_a_misspelt_key_inside_a_group_stops_the_program_naming_the_nearest_key_of_that_group(model_cache):
    with pytest.raises(pulumi.RunError) as err:
        run_program("prod", {"servedmodel:autoscaling": {"replicas": 2, "maxReplcias": 10}}, secrets=TOKEN)
    assert ("  - servedmodel:autoscaling.maxReplcias: unknown key in servedmodel:autoscaling; did you mean "
            "servedmodel:autoscaling.maxReplicas?") in str(err.value).splitlines()


@pytest.mark.parametrize("key, nearest", [("MaxReplicas", "maxReplicas"), ("nodeInstanceType", "nodeInstanceTypes"),
                                          ("autoscalling", "autoscaling"), ("kedaHTTP", "kedaHttp")])
def test_the_nearest_known_key_is_named(key, nearest):
    found = problems("local", {f"servedmodel:{key}": "x"})
    assert f"servedmodel:{key}: unknown key; did you mean servedmodel:{nearest}?" in found, found


def test_a_key_near_nothing_points_at_the_reference():
    assert problems("local", {"servedmodel:zzzz": 1}) == [
        "servedmodel:zzzz: unknown key; docs/config.md lists the known keys"]


def test_other_namespaces_are_not_ours_to_judge():
    parse_settings(*engine_config("local", {"aws:profile": "p", "pulumi:tags": {"team": "ml"}}))


def test_the_program_reads_every_key_from_the_environment_the_cli_sets(monkeypatch):
    """The CLI's language host passes the whole config in PULUMI_CONFIG (pulumi.Config cannot
    list keys); read_config finds a key no declaration names there."""
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({"servedmodel:replcias": "3", "aws:region": "eu-west-1",
                                                    "servedmodel:authToken": "s3cret"}))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps(["servedmodel:authToken"]))
    token = pulumi.runtime.config.CONFIG.set({})
    try:
        raw, secret_keys = read_config()
    finally:
        pulumi.runtime.config.CONFIG.reset(token)
    assert raw == {"replcias": "3", "authToken": "s3cret"} and secret_keys == {"authToken"}


def test_a_setting_of_another_group_is_pointed_to_its_place():
    found = problems("local", {"servedmodel:rollout": {"strategy": "rolling", "prometheusUrl": "http://p:9090"}})
    assert found == ["servedmodel:rollout.prometheusUrl: not set in servedmodel:rollout; set it as "
                     "servedmodel:prometheusUrl or as servedmodel:elastic.prometheusUrl"], found
