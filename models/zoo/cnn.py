"""Convolutional classifiers: lenet (1x28x28) and resnet-tiny (3x64x64), seeded weights.

Both carry calibration batches, so int8 is static QDQ quantization (activations calibrated),
which is what convolutions need to run as integer kernels.
"""
from __future__ import annotations

import torch
from torch import nn

from ..spec import ModelSpec
from ._seed import seeded, uniform

DIGITS = tuple(str(d) for d in range(10))
CLASSES = tuple(f"class_{i}" for i in range(10))


class LeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetTiny(nn.Module):
    """Stem + three stages (24, 48, 96 channels) of basic blocks, global pool, linear head.

    Sized for the serving benchmark: about half a millisecond per item with onnxruntime at
    batch 1 on one core of the dev machines (~56 MFLOPs), so that batching matters.
    """

    def __init__(self, widths: tuple[int, int, int] = (24, 48, 96), classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.stages = nn.Sequential(
            BasicBlock(widths[0], widths[0], 1),
            BasicBlock(widths[0], widths[1], 2),
            BasicBlock(widths[1], widths[2], 2),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[2], classes))
        # Non-trivial BatchNorm statistics, as a trained network has (and the exporter must fold).
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None  # track_running_stats
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.1, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def _calibration(shape: tuple[int, ...], seed: int, batches: int = 8, batch: int = 8) -> list[tuple]:
    return [(uniform((batch, *shape), seed=seed + i),) for i in range(batches)]


def lenet() -> ModelSpec:
    with seeded(0):
        module = LeNet().eval()
    return ModelSpec(
        name="lenet", module=module, example_inputs=(uniform((4, 1, 28, 28), seed=1),),
        input_names=["input"], output_names=["logits"], labels=DIGITS, task="classification",
        calibration_inputs=_calibration((1, 28, 28), seed=100),
        verification_inputs=[(uniform((16, 1, 28, 28), seed=2),)],
    )


def resnet_tiny() -> ModelSpec:
    with seeded(0):
        module = ResNetTiny().eval()
    return ModelSpec(
        name="resnet-tiny", module=module, example_inputs=(uniform((4, 3, 64, 64), seed=1),),
        input_names=["input"], output_names=["logits"], labels=CLASSES, task="classification",
        calibration_inputs=_calibration((3, 64, 64), seed=100),
        verification_inputs=[(uniform((16, 3, 64, 64), seed=2),)],
    )
