"""Device checks of the persistent backend (benchmarks/persistent_check.sh), before its tests
and timings: every cell, float32/float64/float16/bfloat16, inference and training, on odd small
shapes and on one that stages the state in several chunks; forced onto cuda-persistent against
torch.nn (float32/float64: relative error; float16/bfloat16: at most 3x the per-step path's
error against a float64 run, plus 1e-3), bitwise repeatable over two runs. On a mismatch, the
output's error per time step says where it starts. Exits 1 if any case fails.
"""
import contextlib
import sys
import time

import pytest
import torch

from fusedrnn import backends
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "tests"))
from conftest import CELLS, make_pair, random_state, rel_err, run_and_grad  # noqa: E402

# --model: a dry run on the CPU through the kernel's CPU model (layer/persistent.h), H200 plans.
DEVICE = "cpu" if "--model" in sys.argv else "cuda"
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
SHAPES = [(2, 1, 3, 1), (9, 3, 5, 13), (33, 17, 24, 200), (20, 16, 768, 768)]  # T, B, I, H


def results(model, x, hx, backend):
    with backends.force(backend):
        return run_and_grad(model, x, hx)


def per_step_error(actual, expected):
    return " ".join(f"{rel_err(a, e):.1e}" for a, e in zip(actual, expected))


def check(cell, dtype, shape, index):
    T, B, I, H = shape
    ref, fused = make_pair(cell, I, H, DEVICE, dtype, seed=index, bidirectional=True)
    gen = torch.Generator().manual_seed(1000 + index)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64)
    hx = random_state(cell, ref, B, "cpu", torch.float64, gen)
    to = lambda t, d: tuple(s.to(DEVICE, d) for s in t) if isinstance(t, tuple) \
        else t.to(DEVICE, d)  # noqa: E731

    def float64_results():  # torch.nn's, in float64, the reference of both rules below
        exact, _ = make_pair(cell, I, H, DEVICE, torch.float64, seed=index, bidirectional=True)
        return run_and_grad(exact, x.to(DEVICE), to(hx, torch.float64))

    ours = results(fused, x.to(DEVICE, dtype), to(hx, dtype), "cuda-persistent")
    again = results(fused, x.to(DEVICE, dtype), to(hx, dtype), "cuda-persistent")
    repeatable = all(torch.equal(ours[k], again[k]) for k in ours)
    if dtype in TOLERANCE:
        theirs = run_and_grad(ref, x.to(DEVICE, dtype), to(hx, dtype))
        errors = {k: rel_err(ours[k], theirs[k]) for k in theirs}
        off = [k for k, e in errors.items() if not e <= TOLERANCE[dtype]]
        if off and dtype == torch.float32:
            # conftest.assert_matches' rule: an ill-conditioned sum (H=1, a bias gradient) may
            # differ more between two summation orders; then ours must be as close as
            # torch.nn's to float64.
            exact = float64_results()
            off = [k for k in off if not rel_err(ours[k], exact[k])
                   <= 2 * rel_err(theirs[k], exact[k]) + 1e-6]
        ok = not off
        worst = max(errors, key=errors.get)
        detail = f"max {errors[worst]:.1e} ({worst})"
    else:
        exact = float64_results()
        step = results(fused, x.to(DEVICE, dtype), to(hx, dtype), "step")
        ratios = {k: (rel_err(ours[k], exact[k]), rel_err(step[k], exact[k])) for k in exact}
        bad = {k: r for k, r in ratios.items() if not r[0] <= 3 * r[1] + 1e-3}
        ok = not bad
        worst = max(ratios, key=lambda k: ratios[k][0])
        detail = f"max {ratios[worst][0]:.1e} vs step {ratios[worst][1]:.1e} ({worst})"
        theirs = exact
    line = f"{cell:8} {str(dtype)[6:]:8} T={T} B={B} I={I} H={H}: " \
           f"{'ok' if ok and repeatable else 'FAIL'} {detail}" \
           f"{'' if repeatable else ' NOT BITWISE REPEATABLE'}"
    if not ok:
        line += "\n    output error per time step: " + per_step_error(ours["output"],
                                                                     theirs["output"])
    return ok and repeatable, line


def main():
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    model = backends.persistent_model() if DEVICE == "cpu" else contextlib.nullcontext()
    model.__enter__()
    failed = 0
    began = time.perf_counter()
    for cell in CELLS:
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            for index, shape in enumerate(SHAPES):
                if shape[3] == 768 and dtype not in (torch.float16, torch.float32):
                    continue
                try:
                    ok, line = check(cell, dtype, shape, index)
                except (Exception, pytest.skip.Exception) as error:  # one case must not hide others
                    ok, line = False, f"{cell} {dtype} {shape}: ERROR {str(error)[:300]}"
                failed += not ok
                print(line, flush=True)
    print(f"selftest: {failed} failed, {time.perf_counter() - began:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
