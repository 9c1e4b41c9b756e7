"""Deterministic training on the CPU: the zoo's trained models and the fine-tune after pruning.

The trained weights become the model's bytes and hence its version, so training must give the
same weights in every run: seeded, deterministic kernels, one thread.

torch is imported inside the functions: `import models` must not load it.
"""
from __future__ import annotations

import contextlib
from typing import Callable

from .export import flatten_outputs

LOSSES = ("cross_entropy", "mse")


@contextlib.contextmanager
def deterministic(seed: int):
    """Seeded, deterministic kernels, one thread: the same weights in every run (the weights
    become the model's bytes, hence its version). The caller's settings are restored."""
    import torch

    threads = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(threads)


def train(module, inputs: tuple, targets, *, loss: str | Callable, epochs: int, lr: float, batch_size: int,
          seed: int) -> list[float]:
    """Adam on shuffled mini-batches, deterministically. Returns the mean loss of each epoch."""
    import torch

    def loss_of(out, y):
        if callable(loss):
            return loss(out, y)
        first = flatten_outputs(out)[0]
        if loss == "cross_entropy":
            return torch.nn.functional.cross_entropy(first, y)
        return torch.nn.functional.mse_loss(first, y)

    history = []
    with deterministic(seed):
        opt = torch.optim.Adam(module.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        n = len(inputs[0])
        module.train()
        for _ in range(epochs):
            order = torch.randperm(n, generator=g)
            total = 0.0
            for i in range(0, n, batch_size):
                idx = order[i:i + batch_size]
                opt.zero_grad()
                value = loss_of(module(*(t[idx] for t in inputs)), targets[idx])
                value.backward()
                opt.step()
                total += value.item() * len(idx)
            history.append(total / n)
        module.eval()
    return history
