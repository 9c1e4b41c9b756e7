"""Train the tagger on a synthetic task and write tagger.pt next to this file.

The task: a sequence of 20 token ids is "negative", "neutral" or "positive" by which third of the
vocabulary most of its ids come from. `--seed` gives another training run (other weights), as a
retraining would. About 15 s of CPU.

    python examples/tagger/train_tagger.py [--seed N] [--steps N]
"""
import argparse
from pathlib import Path

import torch

from tagger import CLASSES, VOCAB, Tagger


def batch(g: torch.Generator, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences whose ids lean towards one third of the vocabulary, and that third as the label."""
    labels = torch.randint(0, len(CLASSES), (rows,), generator=g)
    band = VOCAB // len(CLASSES)
    lean = labels[:, None] * band + torch.randint(0, band, (rows, 20), generator=g)
    ids = torch.where(torch.rand(rows, 20, generator=g) < 0.6, lean, torch.randint(0, VOCAB, (rows, 20), generator=g))
    return ids, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=80)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = Tagger()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(args.steps):
        ids, labels = batch(g, 64)
        loss = torch.nn.functional.cross_entropy(model(ids), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    ids, labels = batch(torch.Generator().manual_seed(10_000), 512)
    with torch.no_grad():
        accuracy = (model(ids).argmax(1) == labels).float().mean().item()
    path = Path(__file__).with_name("tagger.pt")
    torch.save(model.state_dict(), path)
    print(f"wrote {path} (held-out accuracy {accuracy:.3f})")


if __name__ == "__main__":
    main()
