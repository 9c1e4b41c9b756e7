"""A real server process for tests: `python -m serving` on 127.0.0.1 (ephemeral ports), its
log, readiness, RSS and stop. A plain module (not a conftest) so that other test folders
(tests/monitoring) import the same helper."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_sum(text: str, prefix: str) -> float:
    """The sum of the /metrics samples whose line starts with `prefix` (a name, or a name and
    some of its labels)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def wait_until_ready(proc: subprocess.Popen, url: str, timeout: float, what: str,
                     output: Callable[[], str]) -> None:
    """Poll `url` until it answers 200; RuntimeError with the process's output if it exits or
    the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}: {output()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout}s: {output()}")


def stop_process(proc: subprocess.Popen, grace_seconds: float) -> None:
    """SIGTERM, then SIGKILL after `grace_seconds`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerProcess:
    """`python -m serving` as a child process; `url` once it listens."""

    def __init__(self, context: Path, env: dict | None = None, log: Path | None = None,
                 grpc: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        #: the gRPC port (`grpc=True`), else None
        self.grpc_port = None
        while grpc and self.grpc_port in (None, self.port):    # two free_port() calls can agree
            self.grpc_port = free_port()
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

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        wait_until_ready(self.proc, self.url + "/v2/health/ready", timeout, "server", self.output)
        return self

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        stop_process(self.proc, 30)
        self._log.close()
        return self.proc.returncode
