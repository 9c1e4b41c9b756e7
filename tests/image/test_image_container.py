"""The serving image, for real: each zoo model's context (written by models.build) builds with
`docker build`, runs as uid 10001 on a read-only root, serves what onnxruntime computes, stops
cleanly on SIGTERM, passes its HEALTHCHECK, holds no torch, compiler or cache, round-trips the
registry on 127.0.0.1:5000 by digest, and rebuilds only what changed.

The full container checks run on the small models; minilm (the biggest) is built, inspected and
asked one inference. The deps layer is built once and shared by every model.
"""
from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from imagekit import Container, build_image, docker, infer_binary, inspect, sample_inputs

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ZOO = ["mnist-mlp", "lenet", "resnet-tiny", "minilm"]
SMALL = ["mnist-mlp", "lenet", "resnet-tiny"]
def infer_and_compare(built, port: int) -> None:
    """One inference through tritonclient.http (binary tensors) against onnxruntime in-process
    on the same model file."""
    manifest = built.manifest
    inputs = sample_inputs(manifest)
    result = infer_binary(port, manifest, inputs)
    session = ort.InferenceSession(str(built.context / "model" / manifest["model_file"]),
                                   providers=["CPUExecutionProvider"])
    expected = [np.asarray(o) for o in session.run([o["name"] for o in manifest["outputs"]], inputs)]
    for spec, want in zip(manifest["outputs"], expected):
        got = result.get(spec["name"])
        assert got is not None, f"{built.model}: output {spec['name']} missing"
        assert got.shape == want.shape and got.dtype == want.dtype, (spec["name"], got.shape, want.shape)
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                   rtol=1e-4, atol=1e-5, err_msg=f"{built.model}:{spec['name']}")


@pytest.mark.parametrize("model", ZOO)
def test_context_builds_and_image_is_lean(images, model):
    built = images.get(model)
    assert built.image.endswith(":" + built.version), "the tag is the model version"
    assert re.fullmatch(r"[0-9a-f]{16}", built.version)
    cfg = inspect(built.image, "{{json .Config}}")
    assert cfg["User"] == "10001:10001"
    assert "8080/tcp" in cfg["ExposedPorts"]
    assert cfg["Healthcheck"]["Test"][0] == "CMD"
    # No torch, no compiler, no pip, no caches of pip or of a build; the model is the one built.
    probe = (
        "import glob, importlib.util, json, os, shutil\n"
        "print(json.dumps({"
        "'torch': importlib.util.find_spec('torch') is not None,"
        "'compilers': [c for c in ('gcc', 'cc', 'g++', 'c++', 'clang', 'make') if shutil.which(c)],"
        "'pip': importlib.util.find_spec('pip') is not None,"
        "'caches': [p for p in ('/root/.cache', '/tmp/requirements.txt') if os.path.exists(p)]"
        " + glob.glob('/tmp/*') + glob.glob('/opt/venv/**/*.whl', recursive=True)"
        " + glob.glob('/var/cache/apt/archives/*.deb') + glob.glob('/var/lib/apt/lists/*_Packages*'),"
        "'model': sorted(os.listdir('/app/model'))}))"
    )
    # As root, so that nothing is hidden by permissions.
    facts = json.loads(docker("run", "--rm", "--network", "none", "--read-only", "--user", "0",
                              "--entrypoint", "python3", built.image, "-c", probe).stdout)
    assert facts == {"torch": False, "compilers": [], "pip": False, "caches": [],
                     "model": ["manifest.json", "model.onnx"]}, facts


@pytest.mark.parametrize("model", SMALL)
def test_container_serves_read_only_as_non_root_and_stops_on_sigterm(images, model):
    built = images.get(model)
    c = Container(built.image, env={"SERVEDMODEL_DRAIN_SECONDS": "1"})
    try:
        c.wait_ready()
        who = docker("exec", c.id, "python3", "-c", "import os; print(os.getuid(), os.getgid())")
        assert who.stdout.split() == ["10001", "10001"]
        assert docker("exec", c.id, "sh", "-c", "touch /app/x", check=False).returncode != 0, \
            "the root filesystem must be read-only"
        docker("exec", c.id, "sh", "-c", "touch /tmp/x")   # the tmpfs is writable
        infer_and_compare(built, c.port)
        # SIGTERM: drain (1 s here), then exit 0 well within the grace period.
        grace = 15
        t0 = time.monotonic()
        docker("stop", "--time", str(grace), c.id, timeout=grace + 30)
        took = time.monotonic() - t0
        state = inspect(c.id, "{{json .State}}")
        assert state["ExitCode"] == 0, f"exit {state['ExitCode']} after SIGTERM; logs:\n{c.logs()}"
        assert took < grace, f"took {took:.1f}s to stop (grace {grace}s)"
    finally:
        c.remove()


def test_container_serves_grpc(images):
    """The image's own dependencies serve gRPC (SERVEDMODEL_GRPC_PORT): tritonclient.grpc gets
    onnxruntime's answer, the health service answers SERVING."""
    import grpc
    import tritonclient.grpc as grpcclient
    from grpc_health.v1 import health_pb2
    from grpc_health.v1 import health_pb2_grpc as _health_pb2_grpc

    # grpc's generated stubs declare HealthStub without the methods its __init__ adds.
    health_pb2_grpc: Any = _health_pb2_grpc

    from imagekit import free_port

    built = images.get("mnist-mlp")
    grpc_port = free_port()
    c = Container(built.image, env={"SERVEDMODEL_GRPC_PORT": str(grpc_port)})
    try:
        c.wait_ready()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_ready() and client.is_model_ready(built.manifest["name"])
        x = np.random.default_rng(3).random((2, 784), dtype=np.float32)
        inp = grpcclient.InferInput("input", [2, 784], "FP32")
        inp.set_data_from_numpy(x)
        got = client.infer(built.manifest["name"], [inp]).as_numpy("logits")
        session = ort.InferenceSession(str(built.context / "model" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        want = np.asarray(session.run(None, {"input": x})[0])
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == \
            health_pb2.HealthCheckResponse.SERVING
    finally:
        c.remove()


def test_minilm_serves_one_inference(images):
    built = images.get("minilm")
    c = Container(built.image)
    try:
        c.wait_ready(timeout=120)
        infer_and_compare(built, c.port)
    finally:
        c.remove()


def test_healthcheck_turns_healthy(images):
    """The Dockerfile's own HEALTHCHECK command (only its interval is shortened for the test)."""
    built = images.get("mnist-mlp")
    c = Container(built.image, "--health-interval", "1s", "--health-start-period", "30s")
    try:
        assert inspect(c.id, "{{json .Config.Healthcheck.Test}}") == \
            inspect(built.image, "{{json .Config.Healthcheck.Test}}")
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            status = inspect(c.id, "{{json .State.Health.Status}}")
            if status == "healthy":
                break
            time.sleep(0.5)
        assert status == "healthy", f"health {status}; {inspect(c.id, '{{json .State.Health}}')}\n{c.logs()}"
    finally:
        c.remove()


def test_unchanged_context_rebuild_reuses_every_layer(images):
    built = images.get("mnist-mlp")
    image_id, log, _ = build_image(built.context, built.image)
    assert image_id == built.image_id, "an unchanged context must give the same image"
    steps = len(re.findall(r"^Step \d+/\d+ :", log, re.M))
    ran = re.findall(r"^ ---> Running in ", log, re.M)
    if steps:   # the classic builder: every step after FROM says "Using cache"
        assert not ran, f"steps ran again:\n{log}"
        assert "Using cache" in log
    else:       # BuildKit
        assert "CACHED" in log and not re.search(r"^#\d+ \[.*\] RUN .*\n#\d+ DONE", log, re.M)


def _layers(image: str) -> list[str]:
    return inspect(image, "{{json .RootFS.Layers}}")


def test_push_pull_by_digest_and_a_new_model_version_pushes_one_layer(images, registry):
    """Push (tag = version), remove the local image, pull by digest: same digest, same image.
    Then a new model version (the same model, another compression: new weights, same server and
    dependencies) differs in the last layer only, and its push sends that layer alone."""
    built = images.get("mnist-mlp")
    # A repository of its own per run: the registry outlives test runs, and "already exists"
    # must mean "pushed with version A just now".
    name = f"servedmodel-test/{built.model}-{uuid.uuid4().hex[:8]}"
    repo = f"{registry}/{name}"
    ref = f"{repo}:{built.version}"
    docker("tag", built.image, ref)
    docker("push", ref)
    digest = next(d.split("@", 1)[1] for d in inspect(ref, "{{json .RepoDigests}}") if d.startswith(repo + "@"))
    req = urllib.request.Request(f"http://{registry}/v2/{name}/manifests/{built.version}",
                                 method="HEAD",
                                 headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Docker-Content-Digest"] == digest
    tags = json.load(urllib.request.urlopen(f"http://{registry}/v2/{name}/tags/list"))
    assert built.version in tags["tags"]

    # Remove every local name of the image (keeping its build cache), then pull it by digest.
    docker("rmi", "--no-prune", "--force", built.image_id)
    assert docker("image", "inspect", built.image_id, check=False).returncode != 0
    docker("pull", f"{repo}@{digest}")
    assert inspect(f"{repo}@{digest}", "{{json .Id}}") == built.image_id
    assert f"{repo}@{digest}" in inspect(built.image_id, "{{json .RepoDigests}}")
    docker("tag", built.image_id, built.image)

    # A new model version: only the model layer differs, and only it is pushed.
    new = images.get("mnist-mlp", "fp16")
    assert new.version != built.version
    old_layers, new_layers = _layers(built.image), _layers(new.image)
    assert len(old_layers) == len(new_layers)
    assert old_layers[:-1] == new_layers[:-1] and old_layers[-1] != new_layers[-1], \
        "a new model version must change the model layer only"
    new_ref = f"{repo}:{new.version}"
    docker("tag", new.image, new_ref)
    push = docker("push", new_ref).stdout
    # Every layer but one is already in the repository; the one is sent (or, when another
    # repository of this registry has it from an earlier run, mounted from there).
    existed = re.findall(r"^[0-9a-f]{12}: Layer already exists$", push, re.M)
    sent = re.findall(r"^[0-9a-f]{12}: (?:Pushed|Mounted from .+)$", push, re.M)
    assert len(existed) == len(new_layers) - 1 and len(sent) == 1, push
