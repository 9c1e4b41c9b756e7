"""Factories with a task metric, for the quality-gate tests (loaded as FILE.py:FACTORY)."""
import numpy as np
import torch
from torch import nn

from servedmodel.models import Evaluation, ModelSpec


def _g(seed):
    return torch.Generator().manual_seed(seed)


def mse(outputs, targets):
    """Mean squared error to the eager torch outputs: 0 for the fp32 export (up to kernel
    rounding), strictly more for fp16, so any allowance of 0 refuses the fp16 variant."""
    return float(np.mean((np.asarray(outputs, dtype=np.float64) - targets) ** 2))


def regressor():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4)).eval()
    held_out = [(torch.randn(8, 16, generator=_g(10 + i)),) for i in range(3)]
    with torch.no_grad():
        targets = np.concatenate([module(*b).numpy() for b in held_out]).astype(np.float64)
    return ModelSpec(name="byo-regressor", module=module, example_inputs=(torch.randn(2, 16, generator=_g(1)),),
                     input_names=["x"], output_names=["y"],
                     evaluation=Evaluation(metric=mse, name="mse", inputs=held_out, targets=targets,
                                           dataset="byo-held-out",
                                           higher_is_better=False, max_drop={"fp16": 1e-3}))
