"""Deterministic construction: the same weights in every process, whatever ran before."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int):
    """Seed torch's CPU generator inside the block and restore the caller's state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def uniform(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Inputs in [0, 1), like normalised pixels, from a private generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g)
