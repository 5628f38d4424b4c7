"""A module's single-step inference call (T=1, as a server answering one request at a time
calls it), or a cell's, with the direct call's Python checks cut to those the C++ call cannot
make (modules.direct_call_may_apply), against the same call with all of them
(modules.direct_path_applies, as before), torch.nn and (modules) ONNX Runtime beside:
fusedrnn.bench's inference step, each call timed alone as the bench times it, where the core
comes back cold to every call and each check costs several times its warm cost
(benchmarks/NOTES.md, twenty-fourth session).

Interleaved rounds, each in an order of its own, medians, the single rounds' quartiles.

    python benchmarks/call_checks.py [SECONDS_PER_CASE] [OUT.json]
"""
import random
import statistics
import sys

import torch
from torch import nn

import fusedrnn
from fusedrnn import bench, modules
from fusedrnn.bench_report import run_cases

# cell (a module's, or a cell class's name), B, H (I = H), T (1 for a cell).
CASES = [("lstm", 1, 64, 1), ("gru", 1, 64, 1), ("rnn_tanh", 1, 64, 1), ("lstm", 16, 128, 1),
         ("lstm", 1, 64, 20), ("LSTMCell", 1, 64, 1), ("GRUCell", 1, 64, 1)]


def cells_and_inputs(name, B, H):
    """torch.nn's and fusedrnn's cell `name` (the same parameters), and random x [B, H] and
    states."""
    torch.manual_seed(bench.SEED)
    reference = getattr(nn, name)(H, H)
    fused = getattr(fusedrnn, name)(H, H)
    fused.load_state_dict(reference.state_dict())
    x, h = torch.randn(B, H), torch.randn(B, H)
    return reference, fused, (x, (h, torch.randn(B, H)) if name == "LSTMCell" else h)


def measure(cell, B, H, T, seconds, onnxruntime=True):
    """-> one row: medians in ms, all checks / cut checks and its quartiles, and each of
    torch.nn's and (modules) ONNX Runtime's time over the cut call's."""
    if cell.endswith("Cell"):
        reference, fused, inputs = cells_and_inputs(cell, B, H)
        onnxruntime = False  # the bench's ONNX Runtime side runs modules
    else:
        case = bench.Case(cell, T=T, B=B, I=H, H=H, mode="inference")
        reference, fused = bench.build_modules(case, torch.device("cpu"))
        inputs = bench.make_inputs(case, torch.device("cpu"))
    steps = {"torch": bench.Step(reference, inputs, "inference"),
             "fused": bench.Step(fused, inputs, "inference"),
             # every check of the general path's before the C++ call, as before the cut
             "fused_all_checks": bench.Patched(bench.Step(fused, inputs, "inference"), modules,
                                               direct_call_may_apply=modules.direct_path_applies)}
    if onnxruntime and bench.onnxruntime_version():
        steps["onnxruntime"] = bench.OnnxRuntimeStep(reference, inputs)
    samples = bench.measure(steps, bench.Timer(torch.device("cpu")), seconds,
                            bench.WARMUP_ROUNDS["cpu"], shuffle=random.Random(0))
    ms = {name: statistics.median(times) for name, times in samples.items()}
    row = dict(cell=cell, T=T, B=B, H=H, rounds=len(samples["fused"]), ms=ms,
               all_over_cut=ms["fused_all_checks"] / ms["fused"],
               all_over_cut_quartiles=bench.round_speedup_quartiles(samples["fused_all_checks"],
                                                                   samples["fused"]))
    for name in steps.keys() - {"fused"}:
        row[f"{name}_over_fused"] = ms[name] / ms["fused"]
    return row


def describe(row):
    q = row["all_over_cut_quartiles"]
    against = ", ".join(f"{name} {row[f'{name}_over_fused']:.2f}x"
                        for name in ("torch", "onnxruntime") if f"{name}_over_fused" in row)
    return (f"{row['cell']} T={row['T']} B={row['B']} H={row['H']}: fused "
            f"{row['ms']['fused'] * 1e3:.1f} us, all checks "
            f"{row['ms']['fused_all_checks'] * 1e3:.1f} us; all / cut {row['all_over_cut']:.3f}x "
            f"({q[0]:.2f}-{q[1]:.2f}); over fused: {against}")


def main():
    run_cases(CASES, lambda case, seconds: measure(*case, seconds), describe, sys.argv[1:])


if __name__ == "__main__":
    main()
