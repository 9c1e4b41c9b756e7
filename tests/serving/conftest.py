"""Fixtures for the server tests: small ONNX build contexts and real server processes on
127.0.0.1 (ephemeral ports), stopped by the fixtures."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from contexts import write_context
from serverkit import ROOT, ServerProcess, free_port  # noqa: F401  (re-exported)


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
