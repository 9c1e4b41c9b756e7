"""The docker target's container options, run for real against the real image (needs Docker).

The Pulumi CLI and its docker provider cannot be installed here, so this builds the local
stack's real build context with the Docker CLI and runs it with exactly the options the
program gives `docker.Container` (recorded under the mocks): port mapping on 127.0.0.1, the
health check, restart policy, user, read-only root filesystem with a tmpfs /tmp, all
capabilities dropped, no-new-privileges. The container must turn healthy and serve.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.slow]
DOCKER = shutil.which("docker") or ""  # "": no engine, every test skips


def _engine() -> bool:
    return bool(DOCKER) and subprocess.run([DOCKER, "info"], capture_output=True, timeout=30).returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_bridge() -> bool:
    return subprocess.run([DOCKER, "network", "inspect", "bridge"], capture_output=True).returncode == 0


def docker_run_args(inputs: dict, name: str, port: int, bridge: bool) -> list[str]:
    """`docker run` flags equivalent to the pulumi-docker Container inputs the program declares.

    Without a bridge network (the engine on these machines has none) the container shares the
    host network and the server listens on `port` itself instead of a published 8080.
    """
    args = ["run", "-d", "--name", name]
    envs = list(inputs["envs"])
    if bridge:
        for p in inputs["ports"]:
            args += ["-p", f"{p['ip']}:{port}:{p['internal']}"]
    else:
        args += ["--network", "host"]
        envs = [e for e in envs if not e.startswith(("SERVEDMODEL_PORT=", "SERVEDMODEL_HOST="))]
        envs += [f"SERVEDMODEL_PORT={port}", "SERVEDMODEL_HOST=127.0.0.1"]
    for env in envs:
        args += ["-e", env]
    hc = inputs["healthcheck"]
    test = hc["tests"]
    assert test[0] == "CMD"
    args += ["--health-cmd", " ".join(json.dumps(t) if " " in t or ";" in t else t for t in test[1:]),
             "--health-interval", "2s", "--health-timeout", hc["timeout"], "--health-retries", str(hc["retries"]),
             "--health-start-period", hc["startPeriod"]]
    args += ["--restart", inputs["restart"], "--user", inputs["user"], "--stop-timeout", str(inputs["stopTimeout"])]
    if inputs.get("readOnly"):
        args.append("--read-only")
    for path, opts in (inputs.get("tmpfs") or {}).items():
        args += ["--tmpfs", f"{path}:{opts}"]
    for cap in inputs["capabilities"]["drops"]:
        args += ["--cap-drop", cap]
    for opt in inputs.get("securityOpts") or []:
        args += ["--security-opt", opt]
    return args + [inputs["image"]]


@pytest.mark.skipif(not _engine(), reason="no running Docker engine")
def test_local_stack_container_turns_healthy_and_serves(stack_runs):
    from pulumi_harness import ROOT, TEST_SECRET

    run = stack_runs["local"]
    image = run.one("docker-build:index:Image").inputs
    container = run.one("docker:index/container:Container").inputs
    tag = image["tags"][0]
    bridge = _has_bridge()
    network = [] if bridge else ["--network", "host"]
    build = subprocess.run([DOCKER, "build", *network, "-q", "-t", tag, str(ROOT / image["context"]["location"])],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    name = f"servedmodel-test-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    started = subprocess.run([DOCKER, *docker_run_args(container, name, port, bridge)], capture_output=True, text=True,
                             timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        status = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and status != "healthy":
            time.sleep(1)
            status = subprocess.run([DOCKER, "inspect", "-f", "{{.State.Health.Status}}", name],
                                    capture_output=True, text=True).stdout.strip()
        logs = subprocess.run([DOCKER, "logs", name], capture_output=True, text=True).stdout[-2000:]
        assert status == "healthy", f"container is {status!r}; logs:\n{logs}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5) as resp:
            assert resp.status == 200
        # The server answers under the served name (SERVEDMODEL_MODEL_NAME), the stable route
        # the `modelName`/`inferUrl` outputs give apps, not under the manifest's model name.
        served = run.outputs["modelName"]["mnist-mlp"]
        model_url = f"http://127.0.0.1:{port}/v2/models/{served}"
        # The stack's auth token (a Pulumi secret) reached the server: model routes need it.
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(model_url, timeout=5)
        assert denied.value.code == 401
        request = urllib.request.Request(model_url, headers={"Authorization": f"Bearer {TEST_SECRET}"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            meta = json.loads(resp.read())
        signature = run.outputs["signature"]["mnist-mlp"]
        assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in signature["inputs"]]
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)
        subprocess.run([DOCKER, "rmi", tag], capture_output=True)
