"""What the examples share: the command line, training one model as torch.nn and as fusedrnn from
the same weights and the same batches, timing each epoch, and printing the two side by side.

An example supplies:
  build()            -> the model, written with torch.nn (nn.LSTM, nn.GRU, ...)
  batches(epoch)     -> an iterable of training batches; the same for both runs (seed it)
  loss_of(model, b)  -> the scalar training loss of batch b
  evaluate(model)    -> {metric name: value} on held-out data, after training
and calls compare(). The fusedrnn run is the torch.nn model after one line:
    model = fusedrnn.convert(model)
Both runs build the model from the same seed, so they start from the very same weights.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import fusedrnn
except ModuleNotFoundError:  # a clone where the extension is built in place (make test)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import fusedrnn


def parse_args(description, argv=None, epochs=10, lr=1e-3, add_arguments=None):
    """The options every example has; add_arguments(parser) adds an example's own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--impl", choices=["torch", "fused", "both"], default="both",
                        help="train with torch.nn, with fusedrnn, or both (default)")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--steps", type=int, default=None,
                        help="at most this many batches per epoch (for quick checks)")
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--seed", type=int, default=0)
    if add_arguments is not None:
        add_arguments(parser)
    return parser.parse_args(argv)


def default_device():
    return "cuda" if torch.cuda.is_available() and fusedrnn.WITH_CUDA else "cpu"


def compare(args, build, batches, loss_of, evaluate=None, clip=None):
    """Trains build() with torch.nn and/or fusedrnn (args.impl), each from seed args.seed, with
    Adam(lr=args.lr) and, if clip is given, gradient norm clipping at clip. Prints the loss
    curves side by side, the time per epoch and the metrics of evaluate().
    Returns {impl: {"losses": [...], "seconds": [...], "metrics": {...}, "model": model}}."""
    impls = ["torch", "fused"] if args.impl == "both" else [args.impl]
    results = {}
    for impl in impls:
        torch.manual_seed(args.seed)  # the same initial weights (and dropout draws) for both
        model = build()
        if impl == "fused":
            model = fusedrnn.convert(model)  # the one-line swap
        model = model.to(args.device)
        print(f"training with {'torch.nn' if impl == 'torch' else 'fusedrnn'} on {args.device}",
              flush=True)
        results[impl] = train(model, args, batches, loss_of, clip)
        results[impl]["metrics"] = evaluated(model, evaluate)
    report(results)
    return results


def train(model, args, batches, loss_of, clip):
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses, seconds = [], []
    for epoch in range(args.epochs):
        model.train()
        synchronize(args.device)
        start = time.perf_counter()
        total, count = 0.0, 0
        for step, batch in enumerate(batches(epoch)):
            if args.steps is not None and step >= args.steps:
                break
            loss = loss_of(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            total += loss.item()
            count += 1
        synchronize(args.device)
        seconds.append(time.perf_counter() - start)
        losses.append(total / max(count, 1))
        print(f"  epoch {epoch + 1:3d}  loss {losses[-1]:.4f}  {seconds[-1]:.2f} s", flush=True)
    return {"losses": losses, "seconds": seconds, "model": model}


def shuffled_chunks(count, batch_size, seed):
    """The indices 0..count-1 in an order fixed by seed, in chunks of batch_size: one epoch of
    batches, the same for both implementations."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return order.split(batch_size)


def tensor_batches(x, y, batch_size, seed):
    """One epoch of (x, y) minibatches of paired rows, in the order shuffled_chunks fixes."""
    for index in shuffled_chunks(len(x), batch_size, seed):
        index = index.to(x.device)
        yield x[index], y[index]


def evaluated(model, evaluate):
    if evaluate is None:
        return {}
    model.eval()
    with torch.no_grad():
        return evaluate(model)


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def report(results):
    """Loss curves side by side, seconds per epoch, and the metrics of each run."""
    names = {"torch": "torch.nn", "fused": "fusedrnn"}
    impls = list(results)
    print()
    print("epoch " + "".join(f"{names[i] + ' loss':>15}{'s':>8}" for i in impls))
    for epoch in range(len(results[impls[0]]["losses"])):
        print(f"{epoch + 1:5d} " + "".join(
            f"{results[i]['losses'][epoch]:15.4f}{results[i]['seconds'][epoch]:8.2f}"
            for i in impls))
    per_epoch = {}
    for impl in impls:
        # The median leaves out the first epoch's warm-up where there are enough epochs.
        seconds = results[impl]["seconds"]
        per_epoch[impl] = statistics.median(seconds[1:] if len(seconds) > 2 else seconds)
        metrics = "  ".join(f"{k} {v:.4g}" for k, v in results[impl]["metrics"].items())
        print(f"{names[impl]:>9}: {per_epoch[impl]:.2f} s per epoch (median)  {metrics}")
    if len(impls) == 2 and per_epoch["fused"] > 0:
        print(f"time per epoch, torch.nn / fusedrnn: {per_epoch['torch'] / per_epoch['fused']:.2f}x "
              "(above 1: fusedrnn is faster)")
