"""Factories that misbehave on purpose, loaded through FILE.py:FACTORY by
tests/models/test_models_hostile.py: each one is a way a model or a factory can make the
pipeline ship something wrong (issue 9)."""
import os
import sys

import torch
from torch import nn

from servedmodel.models import ModelSpec


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


class MeanCentred(nn.Module):
    """Each row minus the batch mean: a row's answer depends on the other rows."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        y = self.lin(x)
        return y - y.mean(0)


def mean_centred():
    torch.manual_seed(0)
    return _spec("mean-centred", MeanCentred())


class RunningSum(nn.Module):
    """A cumulative sum over the batch: row 0 is the same alone, later rows are not."""

    def forward(self, x):
        return torch.cumsum(x, 0) * 0.5


class Rolled(nn.Module):
    """Each row gets its neighbour's answer (an off-by-one across the batch)."""

    def forward(self, x):
        return torch.roll(x, 1, 0)


class RowWise(nn.Module):
    """Independent rows, with the batch dimension used honestly (reshape and softmax by row)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x):
        return torch.softmax(self.lin(x).reshape(x.shape[0], 2, 2), -1).reshape(x.shape[0], 4)


def tiny_a():
    """tiny_a and tiny_b: the same served name and file sizes, other weights (cache planting)."""
    torch.manual_seed(1)
    return _spec("tiny", nn.Linear(6, 3))


def tiny_b():
    torch.manual_seed(2)
    return _spec("tiny", nn.Linear(6, 3))


def prints():
    """Talks on stdout in every way a factory can: print, sys.stdout, the file descriptor."""
    print("hello from the factory")
    sys.stdout.write("more text\n")
    sys.stdout.flush()
    os.write(1, b"raw bytes on fd 1\n")
    torch.manual_seed(1)
    return _spec("chatty", nn.Linear(6, 3))


def exits_zero():
    """Ends the interpreter with success before returning a spec."""
    os._exit(0)


class Infinite(nn.Module):
    """Legitimate infinities: log of a ReLU is -inf where the ReLU is 0, and 1/0 is +inf."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x):
        h = torch.relu(self.lin(x))
        return torch.log(h), 1.0 / h


def infinite():
    torch.manual_seed(3)
    return _spec("infinite", Infinite(), output_names=["log", "inverse"],
                 example_inputs=(torch.rand(4, 6, generator=_g(1)) - 0.5,))
