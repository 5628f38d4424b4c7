"""Handwritten digits read row by row: a GRU over the 8x8 images bundled with scikit-learn (no
download), trained with torch.nn and with fusedrnn from the same seed.

    python examples/digits_rnn.py [--impl torch|fused|both] [--epochs N] [--device cuda]

Needs scikit-learn: pip install scikit-learn   (or: pip install "fusedrnn[examples]")
"""
import sys

import torch
from torch import nn

from common import compare, parse_args, tensor_batches


class RowReader(nn.Module):
    """Reads an image one row of pixels per time step; classifies from the last hidden state."""

    def __init__(self, width=8, hidden=128, classes=10):
        super().__init__()
        self.rnn = nn.GRU(width, hidden, batch_first=True)  # fusedrnn.convert swaps this one
        self.head = nn.Linear(hidden, classes)

    def forward(self, images):           # images: [B, rows, width]
        _, h_n = self.rnn(images)        # h_n: [1, B, hidden]
        return self.head(h_n[-1])


def load(seed, device):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("digits_rnn.py needs scikit-learn for its bundled digits: pip install scikit-learn")
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # [1797, 8, 8] in [0, 1]
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test, train = order[:360], order[360:]
    return images[train].to(device), labels[train].to(device), images[test].to(device), labels[test].to(device)


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv, epochs=30, lr=3e-3,
                      add_arguments=lambda p: p.add_argument("--batch-size", type=int, default=32))
    x_train, y_train, x_test, y_test = load(args.seed, args.device)
    loss_fn = nn.CrossEntropyLoss()

    def batches(epoch):
        return tensor_batches(x_train, y_train, args.batch_size, args.seed + epoch)

    def loss_of(model, batch):
        images, labels = batch
        return loss_fn(model(images), labels)

    def evaluate(model):
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        return {"test accuracy": accuracy}

    return compare(args, RowReader, batches, loss_of, evaluate, clip=1.0)


if __name__ == "__main__":
    main()
