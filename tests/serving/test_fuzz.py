"""Schemathesis against the live server, driven by the OpenAPI document the server generates
from the manifest: at least 500 generated cases, zero 5xx, zero crashes, every response as
documented (status codes, content types, schemas, 405 for undocumented methods)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance,unsupported_method,"
          "negative_data_rejection")


def run_schemathesis(server, examples: int, report: Path) -> dict:
    schemathesis = Path(sys.executable).with_name("schemathesis")
    cmd = [str(schemathesis), "run", server.url + "/openapi.json", "--checks", CHECKS,
           "-n", str(examples), "--seed", "20261122", "--workers", "1", "--no-color",
           "--generation-database", "none", "--request-timeout", "10",
           "--report", "json", "--report-json-path", str(report)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert report.exists(), out.stdout[-3000:] + out.stderr[-3000:]
    doc = json.loads(report.read_text())
    assert doc["exit_code"] == 0 and not doc["failures"] and not doc["errors"], \
        out.stdout[-6000:]
    return doc


@pytest.mark.slow
def test_schemathesis_mlp(mlp_server, tmp_path):
    doc = run_schemathesis(mlp_server, 40, tmp_path / "st.json")
    assert doc["test_cases"]["generated"] >= 500, doc["test_cases"]
    assert httpx.get(mlp_server.url + "/v2/health/live").status_code == 200
    assert "internal error" not in mlp_server.output()


@pytest.mark.slow
def test_schemathesis_two_inputs(multi_server, tmp_path):
    doc = run_schemathesis(multi_server, 10, tmp_path / "st.json")
    assert doc["test_cases"]["generated"] >= 100, doc["test_cases"]
    assert "internal error" not in multi_server.output()
