"""The gRPC port judged by h2spec, the HTTP/2 conformance suite (RFC 7540/9113, RFC 7541 HPACK
and generic server cases), built from upstream into ../shared/tools (see its README): every
case of its default mode must pass. Skipped, saying why, where the binary is absent (a
user's clone has no ../shared)."""
from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET

import pytest

from serverkit import ROOT

H2SPEC = ROOT.parent / "shared" / "tools" / "h2spec"


@pytest.mark.skipif(not H2SPEC.exists(), reason=f"h2spec is not at {H2SPEC} (it is built "
                    "into the project's shared/tools, beside the repository; see its README)")
def test_h2spec_default_mode_passes_every_case(contexts, start_server, tmp_path):
    server = start_server(contexts["mlp"], {}, grpc=True)
    report = tmp_path / "h2spec.xml"
    out = subprocess.run([str(H2SPEC), "-h", "127.0.0.1", "-p", str(server.grpc_port),
                          "-o", "3", "-j", str(report)],
                         capture_output=True, text=True, timeout=600)
    summary = re.search(r"(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed", out.stdout)
    assert summary, out.stdout[-3000:] + out.stderr[-2000:]
    total, passed, skipped, failed = map(int, summary.groups())
    failures = [case.get("name") for case in ET.parse(report).iter("testcase")
                if case.find("failure") is not None]
    print(f"\nh2spec: {total} tests, {passed} passed, {skipped} skipped, {failed} failed")
    assert failed == 0, failures
    assert total >= 146 and passed == total - skipped
    # and the server is still well after all of it
    import httpx
    assert httpx.get(server.url + "/v2/health/ready", timeout=5).status_code == 200
