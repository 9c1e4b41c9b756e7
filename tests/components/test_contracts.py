"""Each shared contract has one definition, and every reader gets the same values from it."""
from __future__ import annotations

import ast

import yaml

from pulumi_harness import ROOT
from servedmodel.components import args as component_args
from servedmodel.components import specs
from servedmodel.models import contract, loader
from servedmodel.models import spec as model_spec


def test_the_contract_file_holds_literals_only_and_is_read_as_data():
    values = contract.read_contract()
    assert values["DATATYPES"] == contract.DATATYPES and values["DRAIN_SECONDS"] == contract.DRAIN_SECONDS
    tree = ast.parse((ROOT / "serving" / "contract.py").read_text())
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_a_non_literal_in_the_contract_is_refused(tmp_path):
    bad = tmp_path / "contract.py"
    bad.write_text('"""doc"""\nimport os\nPORT = 8080\n')
    try:
        contract.read_contract(bad)
    except ValueError as exc:
        assert "literal assignments only" in str(exc)
    else:
        raise AssertionError("an import in the contract file was accepted")


def test_the_server_uses_the_same_defaults_and_datatypes():
    from servedmodel.serving import codec
    from servedmodel.serving import settings as server_settings

    assert tuple(codec.V2_TO_NUMPY) == contract.DATATYPES
    defaults = server_settings.Settings()
    assert defaults.drain_seconds == contract.DRAIN_SECONDS and defaults.port == contract.PORT
    assert defaults.batching.queue_timeout_ms == contract.QUEUE_TIMEOUT_MS
    assert defaults.batching.max_queue_size == contract.MAX_QUEUE_SIZE
    assert server_settings.PREFIX == contract.ENV_PREFIX


def test_the_components_and_the_stack_defaults_use_the_contract():
    assert (specs.SERVER_PORT, specs.READY_PATH, specs.LIVE_PATH) == \
        (contract.PORT, contract.READY_PATH, contract.LIVE_PATH)
    assert component_args.ServerArgs().drain_seconds == contract.DRAIN_SECONDS
    # YAML cannot import: the project default is held to the contract here.
    config = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert config["servedmodel:drainSeconds"]["default"] == contract.DRAIN_SECONDS
    env = {e["name"] for e in specs.server_env("cpu", 3, True)}
    assert env == {contract.env_name(n) for n in ("host", "port", "device", "drain_seconds", "auth_token_file")}


def test_compressions_and_the_model_reference_grammar_come_from_models():
    from servedmodel.components import settings

    assert settings.COMPRESSIONS is model_spec.COMPRESSIONS
    assert component_args.is_model_ref is loader.is_model_ref
    for ref in ("lenet", "my/model.py:make", "m.py:f2"):
        assert loader.is_model_ref(ref)
        component_args.ModelArgs(served_name="m", model=ref)
    for ref in ("gpt-17", "m.py", "m.py:2f", "m.txt:f", ""):
        assert not loader.is_model_ref(ref)
