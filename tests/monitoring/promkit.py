"""Helpers of the monitoring tests: Debian's `promtool` and a real Prometheus server.

.ci/prepare-prometheus.sh installs the `prometheus` package before `make test`. Where the
binaries are missing the tests skip with the reason; in CI (CI=true) they fail instead.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "tests" / "serving"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from serverkit import free_port, stop_process, wait_until_ready  # noqa: E402  (tests/serving/serverkit.py)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    if IN_CI:
        pytest.fail(f"{reason} (CI runs .ci/prepare-prometheus.sh first)", pytrace=False)
    pytest.skip(reason)


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"no `{name}` on this machine: install Debian's prometheus package "
                    "(.ci/prepare-prometheus.sh)")
    return path


def run_promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"promtool {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


class Prometheus:
    """`prometheus` on 127.0.0.1 (free port, temporary TSDB), with a given config file."""

    def __init__(self, binary: str, workdir: Path, config: dict[str, Any], rule_files: dict[str, str]):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        for name, text in rule_files.items():
            (workdir / name).write_text(text)
        config = dict(config, rule_files=sorted(rule_files))
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             f"--web.console.templates={workdir}", f"--web.console.libraries={workdir}"],
            cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30.0) -> Prometheus:
        wait_until_ready(self.proc, self.url + "/-/ready", timeout, "prometheus", self.output)
        return self

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        if r.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"GET /api/v1/{path} {params}: {r.status_code} {body}")
        return body["data"]

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query, as the Argo Rollouts prometheus provider sends it (now)."""
        return self.api("query", query=expr)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process(self.proc, 20)
        self._log.close()
