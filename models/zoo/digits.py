"""digits-cnn: a small CNN trained at build time on the 8x8 handwritten digits that ship inside
scikit-learn (`sklearn.datasets.load_digits`: 1797 images, no download).

The split is fixed (stratified, seed 0: 1347 training and 450 test images) and the training is
deterministic (seeded, deterministic kernels, one thread; a few seconds of CPU), so every build
gets the same weights and the same bytes. The trained weights are cached with the build's
exports (keyed on this file, the training settings and the torch/scikit-learn versions), so
building another compression does not train again.

The model carries what the quality gate and pruning need: the held-out test set with its
labels (accuracy), the training set for the fine-tune after pruning, and calibration batches
from the training set for static int8.
"""
from __future__ import annotations

import hashlib
import io
import json
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..cache import cached_bytes
from ..evaluate import Evaluation
from ..prune import FineTune
from ..spec import ModelSpec
from ..train import train

DIGITS = tuple(str(d) for d in range(10))
SPLIT_SEED = 0
TEST_SIZE = 450
# Adam, shuffled mini-batches; measured: test accuracy ~0.98 after 30 epochs.
TRAINING = {"epochs": 12, "lr": 3e-3, "batch_size": 64, "seed": 0, "init_seed": 0}
DATASET = f"sklearn-digits-test ({TEST_SIZE} of 1797, stratified split seed {SPLIT_SEED})"


class DigitsCnn(nn.Module):
    """1x8x8 -> conv 16 -> conv 32, pool -> conv 64, pool -> 64 -> 10.

    Wider than 8x8 digits need, on purpose: it is the zoo's model for structured pruning, which
    removes the channels it can spare."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def dataset() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): pixels scaled to [0, 1], shape [n, 1, 8, 8]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y)
    as_t = torch.from_numpy
    return as_t(x_tr), as_t(np.asarray(y_tr, dtype=np.int64)), as_t(x_te), as_t(np.asarray(y_te, dtype=np.int64))


def training_key() -> str:
    """What the trained weights depend on."""
    parts = {"source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(), "training": TRAINING,
             "torch": metadata.version("torch"), "scikit-learn": metadata.version("scikit-learn")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def trained_module() -> DigitsCnn:
    """The trained CNN: from the build cache, or trained now (and cached)."""
    def make() -> bytes:
        x_tr, y_tr, _, _ = dataset()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TRAINING["init_seed"])
            module = DigitsCnn()
        train(module, (x_tr,), y_tr, loss="cross_entropy", epochs=TRAINING["epochs"], lr=TRAINING["lr"],
              batch_size=TRAINING["batch_size"], seed=TRAINING["seed"])
        buf = io.BytesIO()
        torch.save(module.state_dict(), buf)
        return buf.getvalue()

    data, _ = cached_bytes("trained", "digits-cnn-" + training_key(), make)
    module = DigitsCnn()
    module.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
    return module.eval()


def digits_cnn() -> ModelSpec:
    x_tr, y_tr, x_te, y_te = dataset()
    module = trained_module()
    test_batches = [(x_te[i:i + 150],) for i in range(0, len(x_te), 150)]
    return ModelSpec(
        name="digits-cnn", module=module, example_inputs=(x_te[:4],),
        input_names=["input"], output_names=["logits"], labels=DIGITS, task="classification",
        calibration_inputs=[(x_tr[i:i + 32],) for i in range(0, 256, 32)],
        verification_inputs=[(x_te[:64],)],
        evaluation=Evaluation(metric="accuracy", inputs=test_batches, targets=y_te.numpy(), dataset=DATASET),
        finetune=FineTune(inputs=(x_tr,), targets=y_tr, loss="cross_entropy", epochs=3, lr=1e-3, batch_size=32, seed=0),
    )
