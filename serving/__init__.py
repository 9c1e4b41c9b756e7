"""ServedModel's server: the Open Inference Protocol (KServe V2) over REST and gRPC for one
ONNX model.

Never imports torch, pulumi or `models/`. See docs/protocol.md."""
from .app import create_app
from .errors import ServingError, StartupError

__all__ = ["create_app", "ServingError", "StartupError"]
