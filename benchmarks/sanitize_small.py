"""A forward and backward of every fused cell on CUDA, small enough to run under
`compute-sanitizer --tool memcheck` (benchmarks/gpu_check.sh).

Two layers, bidirectional, float32 and float16; sizes that are not multiples of 8 or 32, so
that a kernel reading or writing past a row's end has no padding to hide in. Exits 1 if an
output or a gradient is not finite.
"""
import sys

import torch

from fusedrnn import bench


def check_case(case: bench.Case) -> list:
    """Runs the fused module forward and backward. -> names of the non-finite results."""
    device = torch.device("cuda")
    _, fused = bench.build_modules(case, device)
    x, hx = bench.make_inputs(case, device)
    output, h_n = fused(x, hx)
    finals = h_n if isinstance(h_n, tuple) else (h_n,)
    (output.float().sum() + finals[0].float().sum()).backward()
    states = hx if isinstance(hx, tuple) else (hx,)
    results = {"output": output, "h_n": finals[0], "grad x": x.grad,
               **{f"grad state {index}": state.grad for index, state in enumerate(states)},
               **{f"grad {name}": parameter.grad for name, parameter in fused.named_parameters()}}
    torch.cuda.synchronize()
    return [name for name, tensor in results.items() if not torch.isfinite(tensor).all()]


def main() -> int:
    failed = False
    for cell in bench.CELLS:
        for dtype in ("float32", "float16"):
            case = bench.Case(cell, T=7, B=3, I=11, H=19, layers=2, bidirectional=True,
                              dtype=dtype, mode="training")
            bad = check_case(case)
            failed |= bool(bad)
            print(f"{case.label()}: " + (f"NOT FINITE: {', '.join(bad)}" if bad else "finite"),
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
