"""The server's contract values, read as data from `serving/contract.py`.

`models/` (and `components/`, through this module) never import the server package: its
`__init__` loads the HTTP stack and onnxruntime, and the folder rules keep the offline and the
infrastructure worlds apart from it. The values are defined once, in `serving/contract.py`, as
literal assignments; this module parses that file and evaluates each right-hand side with
`ast.literal_eval` (no code runs), so a changed default there is the default here too.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent.parent / "serving" / "contract.py"


def read_contract(path: Path = SOURCE) -> dict[str, Any]:
    """Every `NAME = <literal>` of the file; anything else at module level is an error."""
    values: dict[str, Any] = {}
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{path}:{node.lineno}: the contract holds literal assignments only")
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


_VALUES = read_contract()
ENV_PREFIX: str = _VALUES["ENV_PREFIX"]
PORT: int = _VALUES["PORT"]
READY_PATH: str = _VALUES["READY_PATH"]
LIVE_PATH: str = _VALUES["LIVE_PATH"]
DATATYPES: tuple[str, ...] = _VALUES["DATATYPES"]
DRAIN_SECONDS: int = _VALUES["DRAIN_SECONDS"]
QUEUE_TIMEOUT_MS: int = _VALUES["QUEUE_TIMEOUT_MS"]
MAX_QUEUE_SIZE: int = _VALUES["MAX_QUEUE_SIZE"]
MAX_BODY_BYTES: int = _VALUES["MAX_BODY_BYTES"]
GRPC_HEALTH_SERVICE: str = _VALUES["GRPC_HEALTH_SERVICE"]
GRPC_LIVENESS_SERVICE: str = _VALUES["GRPC_LIVENESS_SERVICE"]
INFLIGHT_METRIC: str = _VALUES["INFLIGHT_METRIC"]
QUEUE_DURATION_METRIC: str = _VALUES["QUEUE_DURATION_METRIC"]
#: Every SERVEDMODEL_* variable the server reads; others stop it at start (fail closed).
SERVER_VARIABLES: tuple[str, ...] = _VALUES["SERVER_VARIABLES"]
DEFAULT_CLIENT: str = _VALUES["DEFAULT_CLIENT"]
TOKENS_PER_CLIENT: int = _VALUES["TOKENS_PER_CLIENT"]
#: The keys of a model's KMS encryption context (a key policy's conditions name them).
ENCRYPTION_CONTEXT_NAME: str = _VALUES["ENCRYPTION_CONTEXT_NAME"]
ENCRYPTION_CONTEXT_VERSION: str = _VALUES["ENCRYPTION_CONTEXT_VERSION"]


def env_name(setting: str) -> str:
    """`max_batch_size` -> `SERVEDMODEL_MAX_BATCH_SIZE` (the server's env naming rule)."""
    return ENV_PREFIX + setting.upper()
