"""Fixtures for the server tests: small ONNX build contexts and real server processes on
127.0.0.1 (ephemeral ports), stopped by the fixtures."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from contexts import write_context  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m serving` as a child process; `url` once it listens."""

    def __init__(self, context: Path, env: dict | None = None, log: Path | None = None,
                 grpc: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        #: the gRPC port (`grpc=True`), else None
        self.grpc_port = free_port() if grpc else None
        self.grpc_url = f"127.0.0.1:{self.grpc_port}" if grpc else None
        self.log_path = log or Path(context).parent / f"server-{self.port}.log"
        full_env = {**os.environ, "SERVEDMODEL_LOG_LEVEL": "warning", **(env or {})}
        if grpc:
            full_env["SERVEDMODEL_GRPC_PORT"] = str(self.grpc_port)
        full_env.pop("SERVEDMODEL_CONTEXT", None)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--context", str(context), "--host", "127.0.0.1",
             "--port", str(self.port)], cwd=ROOT, env=full_env, stdout=self._log,
            stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def contexts(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("contexts")
    return {kind: write_context(base / kind, kind)
            for kind in ("mlp", "multi", "log", "half", "flags")}


@pytest.fixture(scope="session")
def start_server():
    started: list[ServerProcess] = []

    def start(context: Path, env: dict | None = None, ready: bool = True,
              grpc: bool = False) -> ServerProcess:
        server = ServerProcess(context, env, grpc=grpc)
        started.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def mlp_server(contexts, start_server) -> ServerProcess:
    return start_server(contexts["mlp"])


@pytest.fixture(scope="session")
def multi_server(contexts, start_server) -> ServerProcess:
    return start_server(contexts["multi"])


@pytest.fixture(scope="session")
def log_server(contexts, start_server) -> ServerProcess:
    return start_server(contexts["log"])


@pytest.fixture(scope="session")
def half_server(contexts, start_server) -> ServerProcess:
    return start_server(contexts["half"])


def raw_http(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side URL normalization); return (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, body
