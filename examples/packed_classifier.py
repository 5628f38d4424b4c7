"""Variable-length sequence classification: is a string of brackets such as "([]())" balanced? A
bidirectional LSTM reads each string through pack_padded_sequence (no work spent on padding);
trained with torch.nn and with fusedrnn from the same seed. Each unbalanced string is a balanced
one with two brackets swapped, so only the order tells the two classes apart.

    python examples/packed_classifier.py [--impl torch|fused|both] [--epochs N] [--device cuda]
"""
import random

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

from common import compare, parse_args, shuffled_chunks

PAIRS = {"(": ")", "[": "]"}
VOCAB = {c: i + 1 for i, c in enumerate("()[]")}  # 0 is padding


def balanced(pairs, rng):
    """A random balanced string of `pairs` pairs of () and []."""
    text, stack, opens_left = [], [], pairs
    while opens_left or stack:
        if opens_left and (not stack or rng.random() < 0.5):
            stack.append(rng.choice("(["))
            text.append(stack[-1])
            opens_left -= 1
        else:
            text.append(PAIRS[stack.pop()])
    return "".join(text)


def is_balanced(text):
    stack = []
    for c in text:
        if c in PAIRS:
            stack.append(PAIRS[c])
        elif not stack or stack.pop() != c:
            return False
    return not stack


def unbalanced(pairs, rng):
    """A balanced string with two of its brackets swapped, so that it is no longer balanced:
    the same brackets, as many of each, in another order ("([])" -> "([)]")."""
    text = balanced(pairs, rng)
    while True:
        i, j = sorted(rng.sample(range(len(text)), 2))
        swapped = text[:i] + text[j] + text[i + 1:j] + text[i] + text[j + 1:]
        if not is_balanced(swapped):
            return swapped


def make_dataset(count, max_pairs, seed):
    """count strings of 1 to max_pairs pairs, half balanced (label 1), half not (label 0)."""
    rng = random.Random(seed)
    texts = [(balanced if i % 2 == 0 else unbalanced)(rng.randint(1, max_pairs), rng)
             for i in range(count)]
    sequences = [torch.tensor([VOCAB[c] for c in text]) for text in texts]
    labels = torch.tensor([i % 2 == 0 for i in range(count)], dtype=torch.long)
    return sequences, labels


class BracketClassifier(nn.Module):
    def __init__(self, embed=8, hidden=64):
        super().__init__()
        self.embed = nn.Embedding(len(VOCAB) + 1, embed, padding_idx=0)
        self.lstm = nn.LSTM(embed, hidden, bidirectional=True, batch_first=True)  # convert swaps it
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, padded, lengths):  # padded: [B, T] token ids, lengths: [B] (on the CPU)
        packed = pack_padded_sequence(self.embed(padded), lengths, batch_first=True,
                                      enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n: [2, B, hidden], each string's own last step
        return self.head(torch.cat([h_n[0], h_n[1]], dim=1))


def main(argv=None):
    def add_arguments(parser):
        parser.add_argument("--max-pairs", type=int, default=25, help="strings up to twice this long")
        parser.add_argument("--train-size", type=int, default=8000)
        parser.add_argument("--batch-size", type=int, default=64)
    args = parse_args(__doc__.splitlines()[0], argv, epochs=10, lr=3e-3, add_arguments=add_arguments)
    train_x, train_y = make_dataset(args.train_size, args.max_pairs, args.seed)
    test_x, test_y = make_dataset(2000, args.max_pairs, args.seed + 1)
    loss_fn = nn.CrossEntropyLoss()

    def collate(sequences):
        lengths = torch.tensor([len(s) for s in sequences])  # stays on the CPU, as packing wants
        return pad_sequence(sequences, batch_first=True, padding_value=0).to(args.device), lengths

    def batches(epoch):
        for index in shuffled_chunks(len(train_y), args.batch_size, args.seed + epoch):
            yield collate([train_x[i] for i in index]), train_y[index].to(args.device)

    def loss_of(model, batch):
        (padded, lengths), labels = batch
        return loss_fn(model(padded, lengths), labels)

    def evaluate(model):
        padded, lengths = collate(test_x)
        predictions = model(padded, lengths).argmax(1).cpu()
        return {"test accuracy": (predictions == test_y).float().mean().item()}

    return compare(args, BracketClassifier, batches, loss_of, evaluate, clip=1.0)


if __name__ == "__main__":
    main()
