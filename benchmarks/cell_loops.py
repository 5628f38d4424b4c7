"""Cells, and layers one step at a time, stepped in a Python loop, as decoders, control policies
and custom recurrences run them: a training step (T steps, a loss summed over them, backward)
and the same loop without a gradient, CPU, torch.nn against fusedrnn.

fusedrnn's steps take one of two routes where a gradient may follow: one autograd node in C++
(csrc/layer/direct.h: direct_cell_step; a module's call, direct_module_forward, makes its layer's
node), or the ops' Python autograd.Function, where the node steps aside (transforms, dispatch
modes, ...). Both are timed ("fused", "fused_function"), so that the node's gain is measured
in the same process; for the modules also the layer's node reached from modules.py's Python
loop ("fused_loop"), against the module's one C++ call. Timed as fusedrnn.bench times its
sides: interleaved rounds, medians, the single rounds' quartiles of torch.nn time / fused time.

    python benchmarks/cell_loops.py [SECONDS_PER_CASE] [OUT.json]
"""
import statistics
import sys

import torch

import fusedrnn
from fusedrnn import bench
from fusedrnn._extension import _C
from fusedrnn.bench_report import run_cases

# cell or module, T, B, H (I = H): one sample, a small batch, a wide layer.
CASES = [(cell, 50, B, H) for cell in ("LSTMCell", "GRUCell", "RNNCell", "LSTM", "GRU", "RNN")
         for B, H in ((1, 64), (32, 128), (64, 512))]

# The direct calls each variant of fusedrnn declines: "fused_function" the nodes and the
# module's one C++ call, which strings its layers' nodes together, so that the Python
# autograd.Functions run; "fused_loop" (modules only) that call alone, so that the layer's node
# runs from modules.py's Python loop.
DECLINED = {"fused_function": ("direct_cell_step", "direct_layer_node", "direct_module_forward"),
            "fused_loop": ("direct_module_forward",)}


class CellLoop:
    """T steps of `cell` (a cell, or a module given [1, B, H] a step) over fixed random inputs,
    from a random state; in training, the sum of the squared hidden states differentiated with
    respect to the input and the parameters."""

    def __init__(self, cell, x, hx, training):
        self.cell, self.x, self.hx, self.training = cell, x, hx, training
        self.module = not isinstance(cell, torch.nn.RNNCellBase)

    def reset(self):
        self.cell.zero_grad(set_to_none=True)
        self.x.grad = None

    def __call__(self):
        with torch.set_grad_enabled(self.training):
            hx, loss = self.hx, 0
            for t in range(self.x.size(0)):
                if self.module:
                    h, hx = self.cell(self.x[t:t + 1], hx)
                else:
                    hx = self.cell(self.x[t], hx)
                    h = hx[0] if isinstance(hx, tuple) else hx
                loss = loss + h.pow(2).sum()
            if self.training:
                loss.backward()


def measure(cell, T, B, H, mode, seconds):
    """-> one row: medians in ms, and torch.nn time / fused time with its single rounds'
    quartiles, for the node, the Function and (modules) the Python layer loop around the node,
    and that loop's time / the node's with its quartiles."""
    torch.manual_seed(0)
    reference = getattr(torch.nn, cell)(H, H)
    fused = getattr(fusedrnn, cell)(H, H)
    fused.load_state_dict(reference.state_dict())
    x = torch.randn(T, B, H, requires_grad=mode == "training")
    shape = (B, H) if cell.endswith("Cell") else (1, B, H)
    h = torch.randn(shape)
    hx = (h, torch.randn(shape)) if cell.startswith("LSTM") else h
    training = mode == "training"
    loops = {"torch": CellLoop(reference, x, hx, training),
             "fused": CellLoop(fused, x, hx, training)}
    if training:
        loops.update({name: bench.Patched(CellLoop(fused, x, hx, training), _C,
                                          **dict.fromkeys(declined, lambda *args: None))
                      for name, declined in DECLINED.items()
                      if name != "fused_loop" or not cell.endswith("Cell")})
    samples = bench.measure(loops, bench.Timer(torch.device("cpu")), seconds,
                            bench.WARMUP_ROUNDS["cpu"])
    ms = {name: statistics.median(times) for name, times in samples.items()}
    row = dict(cell=cell, T=T, B=B, H=H, mode=mode, rounds=len(samples["fused"]), ms=ms)
    for name in loops.keys() - {"torch"}:
        row[f"torch_over_{name}"] = ms["torch"] / ms[name]
        row[f"torch_over_{name}_quartiles"] = bench.round_speedup_quartiles(samples["torch"],
                                                                            samples[name])
    if "fused_loop" in loops:
        row["loop_over_call"] = ms["fused_loop"] / ms["fused"]
        row["loop_over_call_quartiles"] = bench.round_speedup_quartiles(samples["fused_loop"],
                                                                        samples["fused"])
    return row


def describe(row):
    text = [f"{row['cell']} T={row['T']} B={row['B']} H={row['H']} {row['mode']}: torch "
            f"{row['ms']['torch']:.2f} ms"]
    for name in ("fused", *DECLINED):
        if name in row["ms"]:
            q = row[f"torch_over_{name}_quartiles"]
            text.append(f"{name} {row['ms'][name]:.2f} ms "
                        f"{row[f'torch_over_{name}']:.2f}x ({q[0]:.2f}-{q[1]:.2f})")
    if "loop_over_call" in row:
        q = row["loop_over_call_quartiles"]
        text.append(f"Python loop / one call {row['loop_over_call']:.2f}x ({q[0]:.2f}-{q[1]:.2f})")
    return ", ".join(text)


def main():
    cases = [(*case, mode) for case in CASES for mode in ("training", "inference")]
    run_cases(cases, lambda case, seconds: measure(*case, seconds), describe, sys.argv[1:])


if __name__ == "__main__":
    main()
