"""Run by tests/components/test_installed.py with the Python of a fresh venv that has the wheel.

    python installed_programs.py SPEC.json RESULT.json

SPEC names the programs to run under the mocks (each a copy of an example, outside the
repository, with its project, config and secret keys); RESULT gets each run (resources, outputs,
logs), where `servedmodel` was imported from, and the schema the plugin folder serves when this
Python runs it as the language host does (`python provider/ ENGINE`). The harness is the same
one the in-repo tests use; nothing of the checkout's `servedmodel/` is on the path (this file's
folder, tests/components/, is the first entry, and the working directory is elsewhere).
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pulumi_harness


def plugin_schema(plugin: Path) -> dict[str, Any]:
    """Start the plugin as the Python language host runs it and ask it for its schema over gRPC."""
    import grpc
    from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

    proc = subprocess.Popen([sys.executable, str(plugin), "127.0.0.1:1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        port = proc.stdout.readline().strip() if proc.stdout else ""
        if not port.isdigit():
            raise RuntimeError(f"the plugin did not start: {port!r} {proc.stderr.read() if proc.stderr else ''}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = provider_pb2_grpc.ResourceProviderStub(channel)
            response = stub.GetSchema(provider_pb2.GetSchemaRequest(version=0), timeout=60)
        return json.loads(response.schema)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    import servedmodel

    result: dict[str, Any] = {"servedmodel": servedmodel.__file__, "prefix": sys.prefix, "runs": {}}
    for name, program in spec["runs"].items():
        run = pulumi_harness.run_file(Path(program["program"]), program["project"], "example", program["config"],
                                      set(program["secrets"]))
        result["runs"][name] = dataclasses.asdict(run)
    result["plugin_schema"] = plugin_schema(Path(spec["plugin"]))
    Path(sys.argv[2]).write_text(json.dumps(result, default=sorted))


if __name__ == "__main__":
    main()
