"""A CPU loop's team with its threads sharing out each step's panels (a thread done with its own
takes the others' left: csrc/cpu/team.cpp, StepPanels) against the same team with each thread
running only its own slice, and torch.nn beside them: fusedrnn.bench's inference and training
steps, and how many panels a shared call's threads took over from one another.

Interleaved rounds, each in an order of its own, medians, the single rounds' quartiles, as
fusedrnn.bench times its sides.

    python benchmarks/panel_sharing.py [SECONDS_PER_CASE] [OUT.json]
"""
import random
import statistics
import sys

import torch

from fusedrnn import bench
from fusedrnn._extension import _C
from fusedrnn.bench_report import run_cases

# cell, T, B, H (I = H), mode: the CPU grid's one-direction cases whose loops share their
# panels (8 or more of them, of at least 32K multiply-adds each), and one that does not.
CASES = [("lstm", 48, 32, 128, "inference"), ("lstm", 48, 32, 128, "training"),
         ("gru", 48, 32, 128, "inference"), ("gru", 48, 32, 128, "training"),
         ("lstm", 100, 16, 64, "inference"), ("lstm", 100, 16, 64, "training"),
         ("lstm", 100, 64, 512, "inference"), ("lstm", 100, 64, 512, "training"),
         ("gru", 100, 64, 512, "training"), ("gru", 100, 8, 256, "inference"),
         ("lstm", 100, 64, 32, "inference")]


class Sharing:
    """A step run with the team's panel sharing set to `on`, and back on afterwards."""

    def __init__(self, step, on):
        self.step, self.on = step, on

    def reset(self):
        self.step.reset()

    def __call__(self):
        _C.set_panel_sharing(self.on)
        try:
            self.step()
        finally:
            _C.set_panel_sharing(True)


def measure(cell, T, B, H, mode, seconds):
    """-> one row: medians in ms, torch.nn time / fused time for both, own / shared and its
    single rounds' quartiles, and the panels taken over per shared call."""
    case = bench.Case(cell, T=T, B=B, I=H, H=H, mode=mode)
    reference, fused = bench.build_modules(case, torch.device("cpu"))
    inputs = bench.make_inputs(case, torch.device("cpu"))
    steps = {"torch": bench.Step(reference, inputs, mode),
             "shared": Sharing(bench.Step(fused, inputs, mode), True),
             "own": Sharing(bench.Step(fused, inputs, mode), False)}
    taken = _C.panels_taken_over()
    samples = bench.measure(steps, bench.Timer(torch.device("cpu")), seconds,
                            bench.WARMUP_ROUNDS["cpu"], shuffle=random.Random(0))
    calls = len(samples["shared"]) + bench.WARMUP_ROUNDS["cpu"]
    ms = {name: statistics.median(times) for name, times in samples.items()}
    return dict(cell=cell, T=T, B=B, H=H, mode=mode, rounds=len(samples["shared"]), ms=ms,
                torch_over_shared=ms["torch"] / ms["shared"],
                torch_over_own=ms["torch"] / ms["own"],
                own_over_shared=ms["own"] / ms["shared"],
                own_over_shared_quartiles=bench.round_speedup_quartiles(samples["own"],
                                                                        samples["shared"]),
                panels_taken_over_per_call=(_C.panels_taken_over() - taken) / calls)


def describe(row):
    q = row["own_over_shared_quartiles"]
    return (f"{row['cell']} T={row['T']} B={row['B']} H={row['H']} {row['mode']}: torch "
            f"{row['ms']['torch']:.3f} ms, shared {row['ms']['shared']:.3f} ms "
            f"({row['torch_over_shared']:.2f}x), own {row['ms']['own']:.3f} ms "
            f"({row['torch_over_own']:.2f}x); own / shared {row['own_over_shared']:.3f}x "
            f"({q[0]:.2f}-{q[1]:.2f}); {row['panels_taken_over_per_call']:.1f} panels taken "
            f"over a call")


def main():
    run_cases(CASES, lambda case, seconds: measure(*case, seconds), describe, sys.argv[1:])


if __name__ == "__main__":
    main()
