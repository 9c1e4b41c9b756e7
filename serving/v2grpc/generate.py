"""Generate the Python stubs of grpc_predict_v2.proto (committed next to it).

Run from the repository root: `make grpc-stubs`, or `python serving/v2grpc/generate.py`.
Needs grpcio-tools (requirements-dev.txt), never the server image. tests/serving/test_grpc.py
checks that the committed stubs equal a fresh generation."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = "serving/v2grpc/grpc_predict_v2.proto"
# The .pyi gives the type checker the message classes, which the .py builds at import time.
GENERATED = ("serving/v2grpc/grpc_predict_v2_pb2.py", "serving/v2grpc/grpc_predict_v2_pb2.pyi",
             "serving/v2grpc/grpc_predict_v2_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Write the stubs under `out_dir` (the repository root for the committed ones); the
    proto's path relative to the root makes the stubs import each other as serving.v2grpc."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", str(ROOT / PROTO)]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed on {PROTO}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
