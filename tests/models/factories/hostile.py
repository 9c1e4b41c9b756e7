"""Factories that misbehave on purpose, loaded through FILE.py:FACTORY by
tests/models/test_models_hostile.py: each one is a way a model or a factory can make the
pipeline ship something wrong (issue 9)."""
import os
import sys

import torch
from torch import nn

from models import ModelSpec


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _spec(name, module, **kw):
    base = dict(name=name, module=module.eval(), example_inputs=(torch.rand(4, 6, generator=_g(1)),),
                input_names=["x"], output_names=["y"])
    return ModelSpec(**{**base, **kw})


class BigBatchBranch(nn.Module):
    """Right for batches up to 16; the exporter traces that branch only."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        y = self.lin(x)
        if x.shape[0] > 16:
            return y * 2.0
        return y


def big_batch_branch():
    torch.manual_seed(0)
    return _spec("big-batch-branch", BigBatchBranch())
