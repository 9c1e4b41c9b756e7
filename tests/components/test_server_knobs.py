"""The server's knobs in the stack: gRPC port, batching settings, the served name (issue 10/8).

Each run goes through the real __main__.py under the mocks; every Kubernetes object is validated
strictly against the cluster's schema.
"""
from __future__ import annotations

import kubernetes_validate
import pytest

from pulumi_harness import KUBERNETES_VERSION, TEST_SECRET, kubernetes_manifest, run_program
from servedmodel.components import ArgsError, NetworkArgs, ServerArgs, specs
from servedmodel.components.settings import ConfigError, parse_settings
from servedmodel.models.contract import GRPC_HEALTH_SERVICE, GRPC_LIVENESS_SERVICE
from test_settings import problems, raw_for

SECRETS = {"servedmodel:authToken": TEST_SECRET}
GRPC = 8081


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.fixture(scope="module")
def grpc_dev(model_cache):
    return run_program("dev", {"servedmodel:grpcPort": GRPC, "servedmodel:maxBatchSize": 16,
                               "servedmodel:maxQueueDelayMs": 3, "servedmodel:maxQueueSize": 64,
                               "servedmodel:queueTimeoutMs": 250}, secrets=SECRETS)


def test_grpc_port_adds_container_and_service_ports_grpc_probes_and_the_network_rule(grpc_dev):
    for d in grpc_dev.of_type("kubernetes:apps/v1:Deployment"):
        [c] = d.inputs["spec"]["template"]["spec"]["containers"]
        assert {"name": "grpc", "containerPort": GRPC, "protocol": "TCP"} in c["ports"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert "httpGet" not in c[probe], probe
        # Readiness asks the server as a whole (NOT_SERVING while loading or draining); liveness
        # asks the server's liveness service (SERVING while the process runs), so a draining pod
        # leaves the endpoints but is never restarted by its liveness probe.
        assert c["readinessProbe"]["grpc"] == {"port": GRPC, "service": GRPC_HEALTH_SERVICE}
        assert c["livenessProbe"]["grpc"] == {"port": GRPC, "service": GRPC_LIVENESS_SERVICE}
        assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert env_of(c)["SERVEDMODEL_GRPC_PORT"] == str(GRPC)
    for svc in grpc_dev.of_type("kubernetes:core/v1:Service"):
        assert {"name": "grpc", "port": GRPC, "targetPort": "grpc", "protocol": "TCP",
                "appProtocol": "grpc"} in svc.inputs["spec"]["ports"]
    for np in grpc_dev.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy"):
        assert {"protocol": "TCP", "port": GRPC} in np.inputs["spec"]["ingress"][0]["ports"]
    for r in grpc_dev.resources:
        if r.type.startswith("kubernetes:"):
            kubernetes_validate.validate(kubernetes_manifest(r), KUBERNETES_VERSION, strict=True)


def test_batching_settings_and_the_served_name_reach_the_container(grpc_dev):
    for d in grpc_dev.of_type("kubernetes:apps/v1:Deployment"):
        env = env_of(d.inputs["spec"]["template"]["spec"]["containers"][0])
        assert (env["SERVEDMODEL_MAX_BATCH_SIZE"], env["SERVEDMODEL_MAX_QUEUE_DELAY_MS"],
                env["SERVEDMODEL_MAX_QUEUE_SIZE"], env["SERVEDMODEL_QUEUE_TIMEOUT_MS"]) == ("16", "3", "64", "250")
        served = d.name.removesuffix("-deploy")
        assert env["SERVEDMODEL_MODEL_NAME"] == served


def test_off_by_default_no_grpc_and_no_batching_variables(stack_runs):
    for stack in ("dev", "prod"):
        workloads = [*stack_runs[stack].of_type("kubernetes:apps/v1:Deployment"),
                     *stack_runs[stack].of_type("kubernetes:argoproj.io/v1alpha1:Rollout")]
        assert workloads
        for d in workloads:
            [c] = d.inputs["spec"]["template"]["spec"]["containers"]
            env = env_of(c)
            assert not {"SERVEDMODEL_GRPC_PORT", "SERVEDMODEL_MAX_BATCH_SIZE", "SERVEDMODEL_MAX_QUEUE_DELAY_MS",
                        "SERVEDMODEL_MAX_QUEUE_SIZE", "SERVEDMODEL_QUEUE_TIMEOUT_MS"} & set(env)
            assert [p["name"] for p in c["ports"]] == ["http"]
            assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
            assert env["SERVEDMODEL_MODEL_NAME"] == d.name.removesuffix("-deploy").removesuffix("-rollout")


def test_the_local_target_maps_grpc_and_passes_the_settings(model_cache):
    run = run_program("local", {"servedmodel:grpcPort": 9001, "servedmodel:queueTimeoutMs": 500,
                                "servedmodel:models": [{"name": "a", "model": "mnist-mlp"},
                                                       {"name": "b", "model": "mnist-mlp"}]})
    containers = sorted(run.of_type("docker:index/container:Container"), key=lambda c: c.name)
    for i, c in enumerate(containers):
        grpc = 9001 + i  # each model its own host port, as for HTTP
        assert {"internal": grpc, "external": grpc, "ip": "127.0.0.1"} in c.inputs["ports"]
        envs = c.inputs["envs"]
        assert f"SERVEDMODEL_GRPC_PORT={grpc}" in envs and "SERVEDMODEL_QUEUE_TIMEOUT_MS=500" in envs
        assert f"SERVEDMODEL_MODEL_NAME={'ab'[i]}" in envs
    assert run.outputs["inferUrl"] == {"a": "http://127.0.0.1:8080/v2/models/a/infer",
                                       "b": "http://127.0.0.1:8081/v2/models/b/infer"}


@pytest.mark.parametrize("overrides, needle", [
    ({"servedmodel:grpcPort": 8080}, "servedmodel:grpcPort = 8080: must differ from the server's HTTP port (8080)"),
    ({"servedmodel:grpcPort": 80}, "servedmodel:grpcPort = 80: must be 0 (gRPC off) or a port between 1024 and 65535"),
    ({"servedmodel:maxQueueDelayMs": 20000}, "servedmodel:maxQueueDelayMs = 20000: must be between 0 and 10000"),
    ({"servedmodel:maxBatchSize": -1}, "servedmodel:maxBatchSize = -1: must be 1 or more"),
    ({"servedmodel:queueTimeoutMs": -5}, "servedmodel:queueTimeoutMs = -5: must be 1 or more"),
    ({"servedmodel:maxQueueSize": "many"}, "servedmodel:maxQueueSize = 'many': must be an integer"),
])
def test_bad_server_knobs_name_the_key(overrides, needle):
    found = problems("dev", overrides)
    assert any(needle in p for p in found), found


def test_docker_port_ranges_of_several_models_must_not_overlap():
    models = [{"name": "a", "model": "mnist-mlp"}, {"name": "b", "model": "lenet"}]
    found = problems("local", {"servedmodel:models": models, "servedmodel:grpcPort": 8081})
    assert any(p.startswith("servedmodel:grpcPort = 8081: on the docker target") for p in found), found
    parse_settings(*raw_for("local", {"servedmodel:models": models, "servedmodel:grpcPort": 9000}))


def test_zero_leaves_the_setting_to_the_server():
    [a, _] = parse_settings(*raw_for("dev", {"servedmodel:maxBatchSize": 0, "servedmodel:queueTimeoutMs": 300})).served
    assert a.server.max_batch_size is None and a.server.queue_timeout_ms == 300
    assert a.server.batching_env() == {"queue_timeout_ms": "300"}


def test_server_and_network_args_check_themselves():
    with pytest.raises(ArgsError) as err:
        ServerArgs(max_batch_size=0, queue_timeout_ms=0)
    assert "server.max_batch_size = 0" in str(err.value) and "server.queue_timeout_ms = 0" in str(err.value)
    with pytest.raises(ArgsError) as err:
        NetworkArgs(grpc_port=9000, local_port=9000)
    assert "network.grpc_port = 9000: must differ" in str(err.value)


def test_pure_builders_for_grpc():
    assert specs.service_ports(0) == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert specs.probes(0)["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert specs.probes(9000)["readinessProbe"]["grpc"] == {"port": 9000, "service": ""}
    assert specs.probes(9000)["livenessProbe"]["grpc"] == {"port": 9000, "service": "live"}
    assert [p["port"] for p in specs.network_policy_ingress((), (), 9000)[0]["ports"]] == [8080, 9000]
    assert specs.docker_env(specs.server_env("cpu", 3)) == [
        "SERVEDMODEL_HOST=0.0.0.0", "SERVEDMODEL_PORT=8080", "SERVEDMODEL_DEVICE=cpu", "SERVEDMODEL_DRAIN_SECONDS=3"]


def test_config_error_type_is_reported_not_raised_for_knobs():
    with pytest.raises(ConfigError):
        parse_settings(*raw_for("dev", {"servedmodel:grpcPort": 70000}))
