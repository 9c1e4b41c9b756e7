"""What the server needs from a model runtime, as typed protocols.

`OnnxModel` implements both; tests pass smaller fakes. Only `ModelHooks` is required; a model
that also offers `BatchTuning` tells the batcher, after its warm-up, how big a batch to pack
and whether batches may run on the event loop thread."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ModelHooks(Protocol):
    """Required: readiness, a warm-up run before readiness, and a (batched) prediction."""

    @property
    def ready(self) -> bool: ...

    def warm_up(self) -> None: ...

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@runtime_checkable
class BatchTuning(Protocol):
    """Optional: what the warm-up measured, read once after it."""

    #: rows per batch that were fastest per item at warm-up
    preferred_batch_size: int
    #: a full preferred batch takes microseconds: run it on the event loop thread
    run_inline: bool
    #: items per second measured per warm-up batch size (logged)
    warmup_items_per_second: dict[int, float]
    #: whether onnxruntime's intra-op threads spin (logged)
    spinning: bool
