"""Character-level language model: a 2-layer LSTM learns to continue this project's own
documentation (every .md file in the repository, tables left out, read at run time), trained
with torch.nn and with fusedrnn from the same seed; the fusedrnn model then writes some text.

    python examples/char_lm.py [--impl torch|fused|both] [--epochs N] [--corpus FILE] [--device cuda]
"""
from pathlib import Path

import torch
from torch import nn

from common import compare, parse_args

REPO = Path(__file__).resolve().parent.parent


def read_corpus(path=None):
    """The text of `path`, or the prose of the repository's Markdown files."""
    if path:
        return Path(path).read_text(encoding="utf-8")
    files = sorted([*REPO.glob("*.md"), *REPO.glob("examples/*.md"), *REPO.glob("benchmarks/**/*.md")])
    lines = [line for p in files for line in p.read_text(encoding="utf-8").splitlines()
             if not line.startswith("|")]
    return "\n".join(lines)


class CharLM(nn.Module):
    def __init__(self, vocab, embed=64, hidden=256, layers=2, dropout=0.1):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, dropout=dropout,
                            batch_first=True)  # fusedrnn.convert swaps this one
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):     # tokens: [B, T]
        output, state = self.lstm(self.embed(tokens), state)
        return self.head(output), state        # logits: [B, T, vocab]


@torch.no_grad()
def sample(model, chars, prompt, length, temperature=0.8, seed=0):
    """Continues `prompt` by `length` characters, one at a time, carrying the LSTM state."""
    model.eval()
    index = {c: i for i, c in enumerate(chars)}
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    logits, state = model(torch.tensor([[index[c] for c in prompt]], device=device))
    text = prompt
    for _ in range(length):
        probs = torch.softmax(logits[0, -1] / temperature, dim=-1)
        token = torch.multinomial(probs, 1, generator=g)
        text += chars[token.item()]
        logits, state = model(token.view(1, 1), state)
    return text


def main(argv=None):
    def add_arguments(parser):
        parser.add_argument("--corpus", help="a UTF-8 text file (default: the repository's docs)")
        parser.add_argument("--seq-len", type=int, default=64)
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument("--sample", type=int, default=200, help="characters to write at the end")
    args = parse_args(__doc__.splitlines()[0], argv, epochs=50, lr=3e-3, add_arguments=add_arguments)
    text = read_corpus(args.corpus)
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    split = int(0.9 * len(data))
    train, valid = data[:split], data[split:]
    print(f"corpus: {len(text)} characters, {len(chars)} distinct")
    loss_fn = nn.CrossEntropyLoss()

    def chunks(tokens, offset=0):
        """[N, seq_len + 1] non-overlapping chunks: inputs are [:, :-1], targets [:, 1:]."""
        n = (len(tokens) - offset - 1) // args.seq_len
        return tokens[offset:offset + n * args.seq_len + 1].unfold(0, args.seq_len + 1, args.seq_len)

    def batches(epoch):
        g = torch.Generator().manual_seed(args.seed + epoch)
        rows = chunks(train, offset=int(torch.randint(args.seq_len, (1,), generator=g)))
        order = torch.randperm(len(rows), generator=g)
        for start in range(0, len(order), args.batch_size):
            yield rows[order[start:start + args.batch_size]].to(args.device)

    def loss_of(model, rows):
        logits, _ = model(rows[:, :-1])
        return loss_fn(logits.reshape(-1, len(chars)), rows[:, 1:].reshape(-1))

    def evaluate(model):
        rows = chunks(valid).to(args.device)
        logits, _ = model(rows[:, :-1])
        return {"validation loss": loss_fn(logits.reshape(-1, len(chars)), rows[:, 1:].reshape(-1)).item()}

    results = compare(args, lambda: CharLM(len(chars)), batches, loss_of, evaluate, clip=1.0)
    impl = "fused" if "fused" in results else "torch"
    print(f"\nsampled from the {'fusedrnn' if impl == 'fused' else 'torch.nn'} model:\n")
    print(sample(results[impl]["model"], chars, "The ", args.sample, seed=args.seed))
    return results


if __name__ == "__main__":
    main()
