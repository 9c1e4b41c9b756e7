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
    # The model's local key and the clients document: files of this machine, read-only (issue 21).
    for m in inputs.get("mounts") or []:
        assert m["type"] == "bind", m
        args += ["--mount", f"type=bind,source={m['source']},target={m['target']}"
                 + (",readonly" if m.get("readOnly") else "")]
    for label in inputs.get("labels") or []:
        args += ["--label", f"{label['label']}={label['value']}"]
    for opt in inputs.get("securityOpts") or []:
        args += ["--security-opt", opt]
    return args + [inputs["image"]]


class Served:
    """The local stack's container, run with the program's options: its base URL and its logs."""

    def __init__(self, run) -> None:
        from pulumi_harness import ROOT

        image = run.one("docker-build:index:Image").inputs
        self.container = run.one("docker:index/container:Container").inputs
        self.tag = image["tags"][0]
        self.context = ROOT / image["context"]["location"]
        self.name = f"servedmodel-test-{uuid.uuid4().hex[:8]}"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.bridge = _has_bridge()

    def __enter__(self) -> Served:
        network = [] if self.bridge else ["--network", "host"]
        build = subprocess.run([DOCKER, "build", *network, "-q", "-t", self.tag, str(self.context)],
                               capture_output=True, text=True, timeout=900)
        assert build.returncode == 0, build.stderr[-3000:]
        started = subprocess.run([DOCKER, *docker_run_args(self.container, self.name, self.port, self.bridge)],
                                 capture_output=True, text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        status = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and status != "healthy":
            time.sleep(1)
            status = subprocess.run([DOCKER, "inspect", "-f", "{{.State.Health.Status}}", self.name],
                                    capture_output=True, text=True).stdout.strip()
        assert status == "healthy", f"container is {status!r}; logs:\n{self.logs()[-3000:]}"
        return self

    def logs(self) -> str:
        done = subprocess.run([DOCKER, "logs", self.name], capture_output=True, text=True)
        return done.stdout + done.stderr

    def __exit__(self, *exc) -> None:
        subprocess.run([DOCKER, "rm", "-f", self.name], capture_output=True)
        subprocess.run([DOCKER, "rmi", self.tag], capture_output=True)


@pytest.mark.skipif(not _engine(), reason="no running Docker engine")
def test_local_stack_container_turns_healthy_and_serves(stack_runs):
    from pulumi_harness import TEST_SECRET

    run = stack_runs["local"]
    with Served(run) as served_container:
        port = served_container.port
        # The image holds the model sealed with the stack's local key (issue 21): the container
        # turned healthy because it read the key mounted read-only and opened the model in memory.
        assert (served_container.context / "model" / "model.onnx.enc").exists()
        assert not (served_container.context / "model" / "model.onnx").exists()
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


@pytest.mark.skipif(not _engine(), reason="no running Docker engine")
def test_named_clients_and_the_audit_stream_in_the_local_container(model_cache):
    """servedmodel:clients on the docker target: the digests' file mounted read-only, each client's
    token opens the model routes under its name, and each request leaves one audit record on
    stdout naming the client, never the token."""
    from pulumi_harness import run_program

    tokens = {"billing": "billing-token-0123456789abcdef", "search": ["search-old-0123456789ab",
                                                                      "search-new-0123456789ab"]}
    run = run_program("local", secrets={"servedmodel:clients": json.dumps(tokens)})
    with Served(run) as served_container:
        model_url = f"{served_container.url}/v2/models/mnist-mlp"
        for token in ("billing-token-0123456789abcdef", "search-old-0123456789ab", "search-new-0123456789ab"):
            request = urllib.request.Request(model_url, headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=5) as resp:
                assert resp.status == 200
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(urllib.request.Request(model_url, headers={"Authorization": "Bearer nope"}),
                                   timeout=5)
        assert denied.value.code == 401
        deadline = time.monotonic() + 10
        records: list[dict] = []
        while time.monotonic() < deadline and len(records) < 4:
            time.sleep(0.5)
            records = [json.loads(line) for line in served_container.logs().splitlines()
                       if line.startswith("{") and '"log":"audit"' in line.replace(" ", "")]
        assert [r["client"] for r in records if r.get("status") == 200] == ["billing", "search", "search"]
        assert any(r["client"] is None and r.get("status") == 401 for r in records)
        logs = served_container.logs()
        for token in ("billing-token-0123456789abcdef", "search-old-0123456789ab", "nope"):
            assert token not in logs
