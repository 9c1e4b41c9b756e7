# my_model.py
from pathlib import Path

import torch

from servedmodel.models import ModelSpec, Tolerance
from tagger import CLASSES, VOCAB, Tagger  # the model's code, in a file next to this one

WEIGHTS = Path(__file__).with_name("tagger.pt")  # written by train_tagger.py


def make_spec() -> ModelSpec:
    module = Tagger()
    module.load_state_dict(torch.load(WEIGHTS, weights_only=True))  # your weights
    g = torch.Generator().manual_seed(0)  # seeded: the same example inputs in every build
    return ModelSpec(
        name="tagger",
        module=module,
        example_inputs=(torch.randint(0, VOCAB, (4, 20), generator=g),),  # batch >= 2
        input_names=["ids"],
        output_names=["logits"],
        labels=list(CLASSES),
        task="classification",
        # optional: more batches to verify on; static int8 calibration batches
        verification_inputs=[(torch.randint(0, VOCAB, (8, 20), generator=g),)],
        # optional: what the server refuses before batching (an id past the embedding table)
        input_ranges={"ids": (0, VOCAB - 1)},
        tolerances={"int8": Tolerance(atol=None, rtol=0.0, min_top1_agreement=0.95, min_cosine=0.98)},
    )
