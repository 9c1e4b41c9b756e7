"""mnist-mlp: 784 -> 128 -> 10, the smallest useful classifier (and the local stack's model).

No dataset ships with the repo, so the weights are made, not downloaded: a seeded random
hidden layer, and an output layer fitted in closed form (ridge regression, float64) to ten
seeded digit-like "stroke" prototypes. Its logits then have the clear margins of a trained
classifier; a purely random MLP has near-ties that make top-1 agreement meaningless.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..spec import ModelSpec
from ._seed import seeded

DIGITS = tuple(str(d) for d in range(10))


class MnistMlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(784, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def _prototypes() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((10, 784)) < 0.2).astype(np.float64)


def digits(n: int, seed: int) -> torch.Tensor:
    """n noisy samples of the prototypes, classes 0..9 in turn, pixels in [0, 1]."""
    rng = np.random.default_rng(seed)
    p = _prototypes()[np.arange(n) % 10]
    x = p * rng.uniform(0.6, 1.0, size=p.shape) + rng.normal(0.0, 0.15, size=p.shape)
    return torch.from_numpy(np.clip(x, 0.0, 1.0).astype(np.float32))


def mnist_mlp() -> ModelSpec:
    with seeded(0):
        module = MnistMlp().eval()
    x = digits(400, seed=10).double().numpy()
    w1, b1 = module.hidden.weight.detach().double().numpy(), module.hidden.bias.detach().double().numpy()
    h = np.maximum(x @ w1.T + b1, 0.0)
    h1 = np.hstack([h, np.ones((len(h), 1))])
    target = 8.0 * (np.eye(10)[np.arange(len(x)) % 10] - 0.1)
    coef = np.linalg.solve(h1.T @ h1 + 1e-2 * np.eye(h1.shape[1]), h1.T @ target)
    with torch.no_grad():
        module.out.weight.copy_(torch.from_numpy(coef[:-1].T.copy()))
        module.out.bias.copy_(torch.from_numpy(coef[-1].copy()))
    return ModelSpec(
        name="mnist-mlp", module=module, example_inputs=(digits(4, seed=1),),
        input_names=["input"], output_names=["logits"], labels=DIGITS, task="classification",
        # matmul-only: dynamic int8 quantization (no calibration_inputs)
        verification_inputs=[(digits(32, seed=2),)],
    )
