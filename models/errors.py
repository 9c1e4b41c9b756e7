"""`BuildError`, `SpecError` and the CLI's exit codes (one per kind of failure, documented in
docs/pipeline.md). A leaf module: every other module of `models/` may import it."""
from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1        # a bug in the pipeline itself
EXIT_USAGE = 2           # bad arguments, unknown zoo model, missing file or factory, bad device
EXIT_FACTORY = 3         # the factory raised, or returned something that is not a valid ModelSpec
EXIT_EXPORT = 4          # torch.onnx.export, onnx.checker or shape inference failed
EXIT_PARITY = 5          # onnxruntime disagrees with eager torch past the tolerance
EXIT_UNSUPPORTED_COMPRESSION = 6  # compression not one of models.spec.COMPRESSIONS, or not applicable
EXIT_COMPRESS = 7        # the fp16 converter or the quantizer failed
EXIT_PACKAGE = 8         # the context could not be written (runtime files missing, --out not ours)
EXIT_QUALITY = 9         # the task-quality gate refused a variant: its metric dropped past the allowance
EXIT_ENCRYPT = 10        # --encrypt: the key file cannot be made or read, KMS refused GenerateDataKey
EXIT_INTERRUPTED = 130   # SIGINT (Ctrl-C): the build stopped and cleaned up (128 + SIGINT, as shells report)

EXIT_CODES = {
    "usage": EXIT_USAGE, "load": EXIT_USAGE, "factory": EXIT_FACTORY, "export": EXIT_EXPORT,
    "verify": EXIT_PARITY, "verify-compressed": EXIT_PARITY, "compression": EXIT_UNSUPPORTED_COMPRESSION,
    "compress": EXIT_COMPRESS, "package": EXIT_PACKAGE, "evaluate": EXIT_QUALITY, "internal": EXIT_INTERNAL,
    "encrypt": EXIT_ENCRYPT,
}


class BuildError(Exception):
    """A build failed. `str(err)` is one line naming the model and the step.

    Attributes: `model` (the model reference), `step` (usage, load, factory, export, verify,
    compression, compress, verify-compressed, evaluate, package, internal) and `exit_code`.
    """

    def __init__(self, model: str, step: str, message: str, exit_code: int | None = None):
        self.model, self.step, self.detail = model, step, message
        self.exit_code = exit_code if exit_code is not None else EXIT_CODES.get(step, EXIT_INTERNAL)
        one_line = " ".join(str(message).split())
        super().__init__(f"model {model!r}: {step} failed: {one_line}")


class SpecError(ValueError):
    """A ModelSpec (or a Tolerance, Evaluation, FineTune, PruneOptions) is invalid; the message
    lists every problem."""
