"""What the server needs from a model runtime, as typed protocols.

`OnnxModel` implements all three; tests pass smaller fakes. Only `ModelHooks` is required; a
model that also offers `BatchTuning` tells the batcher, after its warm-up, how big a batch to
pack and whether batches may run on the event loop thread, and one that offers `PeakMemory`
gives back, when the server is idle, memory that a run bigger than usual left behind."""
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


class Predicts(Protocol):
    """What the batcher needs of a model: its (batched) prediction."""

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


@runtime_checkable
class PeakMemory(Protocol):
    """Optional: memory held after a run bigger than usual, given back once the server is
    idle (the server calls `release_peak_memory` from the model's thread)."""

    #: True after such a run, until `release_peak_memory` ran
    holds_peak_memory: bool

    def release_peak_memory(self) -> None: ...
