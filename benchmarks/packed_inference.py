"""A PackedSequence's call that needs no gradient through the one C++ call past the dispatcher
(csrc/layer/direct.h, direct_packed_forward) against the same call through the general Python
path (the direct call declined, as dispatch modes and transforms make it decline), and
torch.nn beside them: fusedrnn.bench's packed inference step, on input packed beforehand as a
server's batching would give it (mixed lengths, bench.Case.lengths).

Interleaved rounds, each in an order of its own, medians, the single rounds' quartiles, as
fusedrnn.bench times its sides.

    python benchmarks/packed_inference.py [SECONDS_PER_CASE] [OUT.json]
"""
import random
import statistics
import sys

import torch

from fusedrnn import bench, modules
from fusedrnn.bench_report import run_cases

# cell, layers, T, B, H (I = H), bidirectional.
CASES = [*((cell, 1, 20, 4, 64, False) for cell in ("lstm", "gru", "rnn_tanh")),
         ("lstm", 1, 20, 1, 64, False), ("lstm", 1, 20, 4, 64, True),
         ("lstm", 1, 50, 16, 128, False), ("gru", 2, 50, 16, 128, True)]


def measure(cell, layers, T, B, H, bidirectional, seconds):
    """-> one row: medians in ms, torch.nn time / fused time for both paths, general / direct
    and its single rounds' quartiles."""
    case = bench.Case(cell, T=T, B=B, I=H, H=H, layers=layers, bidirectional=bidirectional,
                      mode="inference", packed=True)
    reference, fused = bench.build_modules(case, torch.device("cpu"))
    inputs = bench.make_inputs(case, torch.device("cpu"))
    steps = {"torch": bench.Step(reference, inputs, "inference"),
             "direct": bench.Step(fused, inputs, "inference"),
             # the packed direct call declined: the general Python path runs
             "general": bench.Patched(bench.Step(fused, inputs, "inference"), modules._C,
                                      direct_packed_forward=lambda *args: None)}
    samples = bench.measure(steps, bench.Timer(torch.device("cpu")), seconds,
                            bench.WARMUP_ROUNDS["cpu"], shuffle=random.Random(0))
    ms = {name: statistics.median(times) for name, times in samples.items()}
    return dict(cell=cell, layers=layers, T=T, B=B, H=H, bidirectional=bidirectional,
                rounds=len(samples["direct"]), ms=ms,
                torch_over_direct=ms["torch"] / ms["direct"],
                torch_over_general=ms["torch"] / ms["general"],
                general_over_direct=ms["general"] / ms["direct"],
                general_over_direct_quartiles=bench.round_speedup_quartiles(
                    samples["general"], samples["direct"]))


def describe(row):
    q = row["general_over_direct_quartiles"]
    return (f"{row['cell']} L{row['layers']}{' bidir' if row['bidirectional'] else ''} "
            f"T<={row['T']} B={row['B']} H={row['H']}: torch {row['ms']['torch']:.3f} ms, "
            f"direct {row['ms']['direct']:.3f} ms ({row['torch_over_direct']:.2f}x), general "
            f"{row['ms']['general']:.3f} ms ({row['torch_over_general']:.2f}x); general / "
            f"direct {row['general_over_direct']:.2f}x ({q[0]:.2f}-{q[1]:.2f})")


def main():
    run_cases(CASES, lambda case, seconds: measure(*case, seconds), describe, sys.argv[1:])


if __name__ == "__main__":
    main()
