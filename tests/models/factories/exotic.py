"""Models the pipeline's authors did not write, loaded through FILE.py:FACTORY in the tests.

Each factory is what a user would write: a module, example inputs, names.
"""
import torch
from torch import nn

from servedmodel.models import ModelSpec, Tolerance


def _g(seed):
    return torch.Generator().manual_seed(seed)


class ConvNet(nn.Module):
    """1-d and 2-d convolutions, grouped and dilated, batch norm, pooling."""

    def __init__(self):
        super().__init__()
        self.c2 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4), nn.ReLU(),
                                nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.c2(x))


def conv_net():
    torch.manual_seed(0)
    calib = [(torch.rand(4, 3, 20, 20, generator=_g(10 + i)),) for i in range(4)]
    return ModelSpec(name="byo-conv", module=ConvNet().eval(),
                     example_inputs=(torch.rand(2, 3, 20, 20, generator=_g(1)),),
                     input_names=["image"], output_names=["scores"], task="classification",
                     labels=["a", "b", "c", "d", "e"], calibration_inputs=calib)


class Attention(nn.Module):
    """Self-attention with a key padding mask; returns the output and the attention weights."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim=32, num_heads=4, batch_first=True)
        self.norm = nn.LayerNorm(32)

    def forward(self, x):
        out, weights = self.attn(x, x, x, need_weights=True)
        return self.norm(out + x), weights


def attention():
    torch.manual_seed(0)
    return ModelSpec(name="byo-attention", module=Attention().eval(),
                     example_inputs=(torch.randn(2, 7, 32, generator=_g(1)),),
                     input_names=["tokens"], output_names=["hidden", "attention"],
                     dynamic_axes={"tokens": {0: "batch", 1: "sequence"}},
                     verification_inputs=[(torch.randn(3, 11, 32, generator=_g(2)),)])


class Recurrent(nn.Module):
    """A GRU feeding an LSTM (batch first), the last hidden state classified."""

    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(16, 24, batch_first=True)
        self.lstm = nn.LSTM(24, 24, num_layers=2, batch_first=True)
        self.out = nn.Linear(24, 4)

    def forward(self, x):
        y, _ = self.gru(x)
        y, (h, _c) = self.lstm(y)
        return self.out(h[-1])


def recurrent():
    torch.manual_seed(0)
    return ModelSpec(name="byo-recurrent", module=Recurrent().eval(),
                     example_inputs=(torch.randn(2, 9, 16, generator=_g(1)),),
                     input_names=["sequence"], output_names=["logits"], task="classification",
                     # Time stays static: the pinned exporter bakes the traced length into the
                     # LSTM's reshapes (verification catches it as a parity failure).
                     verification_inputs=[(torch.randn(5, 9, 16, generator=_g(2)),)])


class MultiIO(nn.Module):
    """Two inputs (float features, int64 ids), three outputs (float, float, int64)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.proj = nn.Linear(12, 8)

    def forward(self, features, ids):
        e = self.emb(ids).mean(dim=1)
        p = torch.tanh(self.proj(features))
        score = (e * p).sum(dim=-1, keepdim=True)
        return e + p, score, ids.argmax(dim=1)


def multi_io():
    torch.manual_seed(0)
    return ModelSpec(name="byo-multi", module=MultiIO().eval(),
                     example_inputs=(torch.randn(3, 12, generator=_g(1)),
                                     torch.randint(0, 50, (3, 6), generator=_g(2))),
                     input_names=["features", "ids"], output_names=["mixed", "score", "argmax"])


# ---- factories that fail, one per exit code ------------------------------------------------

def raises():
    raise RuntimeError("weights not found on purpose")


def not_a_spec():
    return {"name": "dict"}


def invalid_spec():
    return ModelSpec(name="bad name!", module=nn.Linear(2, 2), example_inputs=(torch.zeros(1, 2),),
                     input_names=["x"], output_names=["y", "y"], max_batch_size=-1)


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value: torch.export cannot trace it
            return x * 2
        return x - 1


def export_fails():
    return ModelSpec(name="byo-datadep", module=DataDependent(), example_inputs=(torch.ones(2, 3),),
                     input_names=["x"], output_names=["y"])


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 64)

    def forward(self, x):
        return self.a(x) * 100.0, self.b(x) * 100.0


def strict_fp16():
    """fp16 cannot meet a zero tolerance: both outputs fail verification, reported at once."""
    torch.manual_seed(0)
    return ModelSpec(name="byo-strict", module=TwoOutputs().eval(),
                     example_inputs=(torch.randn(4, 64, generator=_g(1)),),
                     input_names=["x"], output_names=["first", "second"],
                     tolerances={"fp16": Tolerance(atol=0.0, rtol=0.0)})


def no_matmul():
    """Nothing for int8 to quantize."""
    return ModelSpec(name="byo-relu", module=nn.ReLU(), example_inputs=(torch.randn(2, 3),),
                     input_names=["x"], output_names=["y"])


class PairwiseDistances(nn.Module):
    """No batch dim: a [points, 3] cloud in, its [points, points] distance matrix out."""

    def forward(self, points):
        # (torch.cdist has no ONNX translation in the pinned exporter: export fails, exit 4)
        return ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1).sqrt()


def unbatched():
    return ModelSpec(name="byo-unbatched", module=PairwiseDistances(),
                     example_inputs=(torch.randn(6, 3, generator=_g(1)),),
                     input_names=["points"], output_names=["distances"], max_batch_size=0)


def wrong_labels():
    """Two labels for a five-class head: caught once the output shape is known (exit 3)."""
    spec = conv_net()
    spec.labels = ("yes", "no")
    return spec


class TokenBag(nn.Module):
    """Token ids -> mean of their embeddings over the unmasked positions (a tiny text encoder)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)

    def forward(self, ids, mask):
        m = mask.unsqueeze(-1).to(torch.float32)
        return (self.emb(ids) * m).sum(1) / m.sum(1).clamp(min=1.0)


def bounded():
    """The request bounds a spec can declare: token ids in the vocabulary, a 0/1 mask, at most
    16 positions, at most 64 elements a request (all inputs)."""
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (3, 7), generator=_g(1))
    return ModelSpec(name="byo-bounded", module=TokenBag().eval(), example_inputs=(ids, torch.ones_like(ids)),
                     input_names=["ids", "mask"], output_names=["vector"],
                     dynamic_axes={"ids": {0: "batch", 1: "sequence"}, "mask": {0: "batch", 1: "sequence"}},
                     verification_inputs=[(torch.randint(0, 50, (5, 12), generator=_g(2)),
                                           torch.ones(5, 12, dtype=torch.int64))],
                     input_ranges={"ids": (0, 49), "mask": (0, 1)},
                     input_max_shapes={"ids": (-1, 16), "mask": (-1, 16)}, max_request_elements=64)
