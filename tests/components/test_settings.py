"""Stack config validation, without mocks: every bad config from issue 4 gives its message."""
from __future__ import annotations

import json

import pulumi
import pytest

from pulumi_harness import STACKS, merged_config, project_config
from servedmodel.components.args import ArgsError, ModelArgs
from servedmodel.components.settings import ConfigError, parse_settings

# prod is public: it deploys once its token secret is set (as in the tests' stack runs).
TOKEN = {"servedmodel:authToken": "t0ken"}


def raw_for(stack: str, overrides: dict | None = None, secrets: dict | None = None):
    """The raw values load_settings would read: Pulumi.yaml defaults + stack file + overrides."""
    config, secret_keys = merged_config(stack, overrides, secrets)
    declared = project_config()
    raw = {}
    for full, text in config.items():
        ns, key = full.split(":", 1)
        if ns != "servedmodel":
            continue
        if declared.get(full, {}).get("type") == "string":
            raw[key] = text
            continue
        try:
            raw[key] = json.loads(text)
        except json.JSONDecodeError:
            raw[key] = text  # a string given where another type was declared
    # The values of the keys given as secrets (load_settings passes the secret Outputs).
    return raw, {k.split(":", 1)[1]: config[k] for k in secret_keys}


def problems(stack: str, overrides: dict | None = None, secrets: dict | None = None) -> list[str]:
    raw, secret_keys = raw_for(stack, overrides, secrets)
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, secret_keys)
    return err.value.problems


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_file_is_valid(stack):
    raw, secret_keys = raw_for(stack, secrets=TOKEN)
    s = parse_settings(raw, secret_keys)
    assert s.models


def test_local_stack_serves_mnist_on_docker_cpu():
    s = parse_settings(*raw_for("local"))
    [a] = s.served
    assert (s.target, a.resources.gpu, a.resources.device) == ("docker", 0, "cpu")
    assert s.models == (ModelArgs(served_name="mnist-mlp", model="mnist-mlp", compression="none"),)


def test_prod_stack_is_gpu_with_hpa_2_to_10_and_a_protected_pool():
    s = parse_settings(*raw_for("prod", secrets=TOKEN))
    [a] = s.served
    assert (s.target, a.resources.gpu, a.resources.device) == ("kubernetes", 1, "cuda")
    assert (a.autoscaling.replicas, a.autoscaling.max_replicas) == (2, 10)
    assert s.models[0].compression in ("int8", "fp16")
    assert a.network.service_type == "LoadBalancer" and a.network.allow_load_balancer and a.protect
    assert a.autoscaling.autoscaled and a.node_pool is not None and a.node_pool.cluster_name == "servedmodel-prod"


def test_dev_stack_is_kubernetes_with_one_to_two_replicas():
    s = parse_settings(*raw_for("dev"))
    assert s.target == "kubernetes" and len(s.served) == 2
    for a in s.served:
        assert 1 <= a.autoscaling.replicas <= a.autoscaling.max_replicas <= 2 and a.resources.gpu <= 1


@pytest.mark.parametrize("overrides, needle", [
    ({"servedmodel:model": "gpt-17"},
     "servedmodel:model = 'gpt-17': unknown model; accepted: one of mnist-mlp, lenet, resnet-tiny, digits-cnn, minilm"),
    ({"servedmodel:compression": "int4"}, "servedmodel:compression = 'int4': accepted: one of none, fp16, int8"),
    ({"servedmodel:replicas": 3, "servedmodel:maxReplicas": 2},
     "servedmodel:replicas = 3: must not exceed servedmodel:maxReplicas (2)"),
    ({"servedmodel:gpu": 1}, "servedmodel:gpu = 1: GPUs are served on the kubernetes target only"),
    ({"servedmodel:target": "kubernetes"},
     "servedmodel:clusterName = '': the kubernetes target needs the name of an existing EKS cluster"),
    ({"servedmodel:target": "k8s"}, "servedmodel:target = 'k8s': accepted: one of docker, kubernetes"),
    ({"servedmodel:authToken": "hunter2"}, "servedmodel:authToken = [given in plain text]: must be a secret"),
    ({"servedmodel:serviceType": "LoadBalancer"}, "set servedmodel:allowLoadBalancer to true to opt in"),
    ({"servedmodel:tlsCertificateArn": "my-cert"},
     "servedmodel:tlsCertificateArn = 'my-cert': must be an ACM certificate ARN"),
    ({"servedmodel:tlsCertificateArn": "arn:aws:acm:eu-west-1:123456789012:certificate/ab-12"},
     "TLS terminates at the load balancer: only with servedmodel:serviceType LoadBalancer"),
    ({"servedmodel:memory": "lots"}, "servedmodel:memory = 'lots': must be a Kubernetes quantity"),
    ({"servedmodel:ingressCidrs": ["10.0.0.0/33"]}, "servedmodel:ingressCidrs = '10.0.0.0/33'"),
    ({"servedmodel:name": "My_Model"}, "servedmodel:name = 'My_Model': must be a DNS label"),
    ({"servedmodel:registryUsername": "bot"},
     "servedmodel:registryUsername = 'bot': needs the secret servedmodel:registryPassword"),
    ({"servedmodel:registryPassword": "pw"}, "servedmodel:registryPassword = [given in plain text]: must be a secret"),
    ({"servedmodel:kubeconfig": "apiVersion: v1"}, "servedmodel:kubeconfig = [given in plain text]: must be a secret"),
    ({"servedmodel:maxMetricDrop": "1.5"}, "servedmodel:maxMetricDrop = 1.5: must be a share between 0 and 1"),
    ({"servedmodel:maxMetricDrop": "-0.01"}, "servedmodel:maxMetricDrop = -0.01: must be a share between 0 and 1"),
    ({"servedmodel:maxMetricDrop": "a lot"},
     "servedmodel:maxMetricDrop = 'a lot': must be a decimal number in a string"),
])
def test_each_bad_config_names_key_value_and_what_is_accepted(overrides, needle):
    found = problems("local", overrides)
    assert any(needle in p for p in found), found


def test_plain_text_secret_never_echoes_the_value():
    found = problems("local", {"servedmodel:authToken": "hunter2"})
    assert not any("hunter2" in p for p in found)


def test_a_secret_given_as_a_secret_is_accepted():
    raw, secret_keys = raw_for("local", secrets={"servedmodel:authToken": "hunter2"})
    parse_settings(raw, secret_keys)


def test_an_instance_type_without_an_nvidia_gpu_is_rejected_from_ec2():
    # Whether a type has GPUs (and which architecture) is EC2's to say; the families whose GPUs the
    # image's CUDA cannot use are refused without the cloud (test_capacity.py).
    from test_platforms import recorded
    raw, secrets = raw_for("prod", {"servedmodel:nodeInstanceTypes": ["m5.large"]}, TOKEN)
    parse_settings(raw, secrets)  # without EC2's figures nothing says m5.large has no GPU
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, secrets, ec2=recorded)
    assert any(p.startswith("servedmodel:gpu = 1: does not fit m5.large: EC2 gives it no NVIDIA GPU")
               for p in err.value.problems), err.value.problems
    found = problems("prod", {"servedmodel:nodeInstanceTypes": ["g5xlarge"]})
    assert any(p.startswith("servedmodel:nodeInstanceTypes = 'g5xlarge': an EC2 instance type") for p in found), found


def test_all_problems_are_reported_together():
    found = problems("local", {
        "servedmodel:model": "nope", "servedmodel:compression": "int3", "servedmodel:replicas": 4,
        "servedmodel:maxReplicas": 2, "servedmodel:gpu": 1, "servedmodel:authToken": "plain",
    })
    keys = {p.split(" ", 1)[0] for p in found}
    assert {"servedmodel:model", "servedmodel:compression", "servedmodel:replicas", "servedmodel:gpu",
            "servedmodel:authToken"} <= keys, found
    err = ConfigError(found)
    assert str(err).startswith(f"invalid stack config ({len(found)} problems):")


def test_kubernetes_target_without_cluster_and_with_gpu_on_docker_both_reported():
    found = problems("dev", {"servedmodel:clusterName": ""})
    assert any(p.startswith("servedmodel:clusterName") for p in found)


def test_several_models_need_unique_dns_names():
    models = [{"name": "a", "model": "mnist-mlp"}, {"name": "a", "model": "lenet", "compression": "int8"},
              {"model": "lenet"}]
    found = problems("local", {"servedmodel:models": models})
    assert any("servedmodel:models = 'a': each served name must be unique" in p for p in found), found
    assert any(p.startswith("servedmodel:models[2].name = None") for p in found), found


def test_file_reference_models_are_accepted():
    raw, keys = raw_for("local", {"servedmodel:model": "examples/my_model.py:make_model"})
    assert parse_settings(raw, keys).models[0].model == "examples/my_model.py:make_model"


def test_a_configured_zero_is_not_replaced_by_a_default():
    raw, keys = raw_for("local", {"servedmodel:preStopSeconds": 0, "servedmodel:drainSeconds": 0})
    [a] = parse_settings(raw, keys).served
    assert (a.server.pre_stop_seconds, a.server.drain_seconds) == (0, 0)


def test_bad_config_stops_the_real_program_with_one_run_error():
    from pulumi_harness import run_program

    with pytest.raises(pulumi.RunError) as err:
        run_program("local", {"servedmodel:model": "nope", "servedmodel:replicas": 3, "servedmodel:maxReplicas": 1})
    message = str(err.value)
    assert "invalid stack config (2 problems)" in message
    assert "servedmodel:model = 'nope'" in message and "servedmodel:replicas = 3" in message


def test_a_non_integer_for_an_integer_key_is_reported_by_the_loader():
    from pulumi_harness import run_program

    with pytest.raises(pulumi.RunError) as err:
        run_program("local", {"servedmodel:replicas": "two"})
    assert "servedmodel:replicas = 'two': must be an integer" in str(err.value)


PUBLIC_NEEDS = ("servedmodel:serviceType = 'LoadBalancer': a public endpoint needs a client identity (the secret "
                "servedmodel:authToken, the secret servedmodel:clients or servedmodel:oidcIssuer) and "
                "servedmodel:tlsCertificateArn")
IDENTITY = "servedmodel:authToken, servedmodel:clients or servedmodel:oidcIssuer"
NO_OIDC = {"servedmodel:oidcIssuer": "", "servedmodel:oidcAudience": "", "servedmodel:oidcScope": ""}


def test_a_public_endpoint_without_identity_or_tls_is_one_error_naming_the_keys():
    # prod names its OIDC callers: it deploys without a token secret (issue 21).
    parse_settings(*raw_for("prod"))
    # Without OIDC and without a token or clients secret: refused, naming every way to name callers.
    found = problems("prod", NO_OIDC)
    [msg] = [p for p in found if p.startswith(PUBLIC_NEEDS)]
    assert msg.endswith(f"missing: {IDENTITY}")
    for secrets in ({"servedmodel:authToken": "t0ken"}, {"servedmodel:clients": json.dumps({"billing": "b" * 32})}):
        parse_settings(*raw_for("prod", NO_OIDC, secrets=secrets))
    found = problems("prod", NO_OIDC | {"servedmodel:tlsCertificateArn": ""},
                     secrets={"servedmodel:authToken": "t0ken"})
    [msg] = [p for p in found if p.startswith(PUBLIC_NEEDS)]
    assert msg.endswith("missing: servedmodel:tlsCertificateArn")
    found = problems("prod", NO_OIDC | {"servedmodel:tlsCertificateArn": ""})
    assert any(p.endswith(f"missing: {IDENTITY}; servedmodel:tlsCertificateArn") for p in found), found


def test_the_metric_allowance_is_unset_by_default_and_given_to_every_model():
    """servedmodel:maxMetricDrop (issue 13): "" keeps each spec's allowance; a value overrides it
    for every model of the stack."""
    assert [m.max_metric_drop for m in parse_settings(*raw_for("dev")).models] == [None, None]
    s = parse_settings(*raw_for("dev", {"servedmodel:maxMetricDrop": "0.005"}))
    assert len(s.models) == 2 and [m.max_metric_drop for m in s.models] == [0.005, 0.005]
    assert parse_settings(*raw_for("local", {"servedmodel:maxMetricDrop": "0"})).models[0].max_metric_drop == 0.0


@pytest.mark.parametrize("bad", [1.01, -0.1, float("nan"), "0.01", True])
def test_model_args_check_the_metric_allowance(bad):
    with pytest.raises(ArgsError) as err:
        ModelArgs(served_name="m", model="mnist-mlp", max_metric_drop=bad)
    assert "model.max_metric_drop = " in str(err.value) and "between 0 and 1" in str(err.value)
