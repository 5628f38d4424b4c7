"""A layer's training step on the CPU through its C++ autograd node (one direction's, or both
directions' in one) against the same step through the Python autograd.Function, and torch.nn's:
first-order steps (fusedrnn.bench's training step: forward, backward of out.sum() + h_n.sum())
and a gradient-penalty step (the input's gradient taken with create_graph, then the backward of
its squared norm plus the output's sum), whose create_graph backward the node hands to the
Function's.

The module's call runs every layer in one C++ call, each layer its node (csrc/layer/direct.h:
direct_module_forward, direct_packed_forward), where a plain CPU call may need a gradient.
"fused_loop" declines that call: the layers run from modules.py's Python loop, each still its
node (direct_layer_node, direct_layer_pair_node); "fused_function" declines the nodes too, as
transforms and dispatch modes make them decline, and the Python autograd.Functions run.
Interleaved rounds, medians, the single rounds' quartiles, as fusedrnn.bench times its sides,
each round in an order of its own (torch.nn's GRU step, 28 ms of small ops, slowed whichever
side ran right after it).

    python benchmarks/layer_node.py [SECONDS_PER_CASE] [OUT.json]
"""
import random
import statistics
import sys

import torch
from torch import nn

import fusedrnn
from fusedrnn import bench
from fusedrnn._extension import _C
from fusedrnn.bench_report import run_cases

# cell, layers, T, B, H (I = H), step, bidirectional.
CASES = [*((cell, 1, 100, 1, 64, "training", False) for cell in ("lstm", "gru", "rnn_tanh")),
         ("lstm", 1, 100, 16, 64, "training", False), ("lstm", 1, 100, 64, 32, "training", False),
         ("lstm", 1, 48, 32, 128, "training", False), ("gru", 1, 48, 32, 128, "training", False),
         ("lstm", 2, 50, 16, 128, "training", False),
         ("lstm", 1, 50, 16, 128, "penalty", False), ("gru", 1, 50, 16, 128, "penalty", False),
         ("rnn_tanh", 1, 50, 16, 128, "penalty", False),
         *((cell, 1, 50, 1, 64, "training", True) for cell in ("lstm", "gru", "rnn_tanh")),
         ("lstm", 1, 20, 4, 64, "training", True), ("lstm", 2, 50, 16, 128, "training", True),
         ("lstm", 1, 50, 16, 128, "penalty", True)]
# The same fields, on a PackedSequence of mixed lengths (bench.Case.lengths).
PACKED_CASES = [*((cell, 1, 20, 4, 64, "training", False) for cell in ("lstm", "gru", "rnn_tanh")),
                ("lstm", 1, 50, 16, 128, "training", False), ("lstm", 1, 20, 4, 64, "training", True),
                ("lstm", 2, 50, 16, 128, "training", True)]
# LSTMs with proj_size: layers, T, B, H (I = H), proj_size, bidirectional.
PROJECTED_CASES = [(1, 100, 1, 64, 32, False), (1, 50, 16, 128, 64, False),
                   (1, 50, 1, 64, 32, True), (2, 50, 16, 128, 64, True)]


class PenaltyStep(bench.Step):
    """bench.Step's module and inputs; the step a gradient penalty takes."""

    def __call__(self):
        output, h_n = self.module(self.x, self.hx)
        (d_x,) = torch.autograd.grad(output.pow(2).sum(), self.x, create_graph=True)
        (d_x.pow(2).sum() + output.sum()).backward()


# The direct calls each variant of fusedrnn declines (see the docstring).
_MODULE_CALLS = ("direct_module_forward", "direct_packed_forward")
DECLINED = {"fused_loop": _MODULE_CALLS,
            "fused_function": (*_MODULE_CALLS, "direct_layer_node", "direct_layer_pair_node")}


def projected(case, proj_size):
    """bench.build_modules' and bench.make_inputs' LSTMs and inputs, with proj_size: h0 the
    first proj_size columns of bench's."""
    options = dict(num_layers=case.layers, bidirectional=case.bidirectional, proj_size=proj_size)
    torch.manual_seed(bench.SEED)
    reference = nn.LSTM(case.I, case.H, **options)
    fused = fusedrnn.LSTM(case.I, case.H, **options)
    fused.load_state_dict(reference.state_dict())
    x, (h0, c0) = bench.make_inputs(case, torch.device("cpu"))
    return reference, fused, (x, (h0.detach()[..., :proj_size].clone().requires_grad_(), c0))


def measure(cell, layers, T, B, H, step, seconds, bidirectional=False, packed=False,
            proj_size=0):
    """-> one row: medians in ms, torch.nn time / fused time and its single rounds' quartiles,
    for the node and for the Function."""
    case = bench.Case(cell, T=T, B=B, I=H, H=H, layers=layers, bidirectional=bidirectional,
                      mode="training", packed=packed)
    if proj_size:
        reference, fused, inputs = projected(case, proj_size)
    else:
        reference, fused = bench.build_modules(case, torch.device("cpu"))
        inputs = bench.make_inputs(case, torch.device("cpu"))
    kind = PenaltyStep if step == "penalty" else bench.Step
    steps = {"torch": kind(reference, inputs, "training"),
             "fused": kind(fused, inputs, "training"),
             **{name: bench.Patched(kind(fused, inputs, "training"), _C,
                                    **dict.fromkeys(names, lambda *args: None))
                for name, names in DECLINED.items()}}
    samples = bench.measure(steps, bench.Timer(torch.device("cpu")), seconds,
                            bench.WARMUP_ROUNDS["cpu"], shuffle=random.Random(0))
    ms = {name: statistics.median(times) for name, times in samples.items()}
    row = dict(cell=cell, layers=layers, bidirectional=bidirectional, packed=packed, T=T, B=B,
               H=H, proj_size=proj_size, step=step, rounds=len(samples["fused"]), ms=ms)
    for name in ("fused", *DECLINED):
        row[f"torch_over_{name}"] = ms["torch"] / ms[name]
        row[f"torch_over_{name}_quartiles"] = bench.round_speedup_quartiles(samples["torch"],
                                                                            samples[name])
    for ratio, name in (("function_over_node", "fused_function"), ("loop_over_call", "fused_loop")):
        row[ratio] = ms[name] / ms["fused"]
        row[f"{ratio}_quartiles"] = bench.round_speedup_quartiles(samples[name], samples["fused"])
    return row


def describe(row):
    q, loop = row["function_over_node_quartiles"], row["loop_over_call_quartiles"]
    proj_size = row["proj_size"]
    return (f"{row['cell']} L{row['layers']}{' bidir' if row['bidirectional'] else ''}"
            f"{' packed' if row['packed'] else ''}{f' P={proj_size}' if proj_size else ''} "
            f"T={row['T']} B={row['B']} H={row['H']} "
            f"{row['step']}: torch {row['ms']['torch']:.3f} ms, node "
            f"{row['ms']['fused']:.3f} ms ({row['torch_over_fused']:.2f}x), function "
            f"{row['ms']['fused_function']:.3f} ms ({row['torch_over_fused_function']:.2f}x); "
            f"function / node {row['function_over_node']:.2f}x ({q[0]:.2f}-{q[1]:.2f}); "
            f"Python loop / one call {row['loop_over_call']:.2f}x ({loop[0]:.2f}-{loop[1]:.2f})")


def main():
    cases = [*((*c, False, 0) for c in CASES), *((*c, True, 0) for c in PACKED_CASES),
             *(("lstm", layers, T, B, H, "training", bidirectional, False, proj_size)
               for layers, T, B, H, proj_size, bidirectional in PROJECTED_CASES)]

    def measure_case(case, seconds):
        *arguments, bidirectional, packed, proj_size = case
        return measure(*arguments, seconds, bidirectional, packed, proj_size)

    run_cases(cases, measure_case, describe, sys.argv[1:])


if __name__ == "__main__":
    main()
