"""The persistent backend against cuDNN and the per-step path, on issue 17's target shapes
(benchmarks/persistent_check.sh runs it on the GPU).

For each case, three contenders timed interleaved in one process with CUDA events after
warm-up: torch.nn (cuDNN), fusedrnn on `step`, fusedrnn forced onto `cuda-persistent`. Prints a
markdown table of medians, microseconds a time step and ratios (> 1: faster than cuDNN), and
writes the samples as JSON. A case a contender cannot run (its reason) is reported, not fatal.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from fusedrnn import backends, bench
from fusedrnn.bench_cases import Case

CASES = [
    Case("lstm", T=1024, B=16, I=768, H=768, dtype="float16", mode="inference"),
    Case("lstm", T=1024, B=16, I=768, H=768, dtype="bfloat16", mode="inference"),
    Case("lstm", T=1024, B=16, I=768, H=768, dtype="float16", mode="training"),
    Case("lstm", T=1024, B=16, I=768, H=768, dtype="bfloat16", mode="training"),
    Case("gru", T=1024, B=16, I=768, H=768, dtype="float16", mode="inference"),
    Case("gru", T=1024, B=16, I=768, H=768, dtype="float16", mode="training"),
    Case("lstm", T=1000, B=1, I=512, H=512, mode="inference"),
    Case("gru", T=1000, B=1, I=512, H=512, mode="inference"),
    Case("lstm", T=100, B=64, I=512, H=512, mode="inference"),
    Case("lstm", T=100, B=64, I=512, H=512, mode="training"),
    Case("rnn_tanh", T=100, B=64, I=512, H=512, mode="inference"),
    Case("lstm", T=4096, B=1, I=8, H=8, mode="inference"),  # the barrier alone, nearly
]


class ForcedStep(bench.Step):
    """A bench.Step whose calls run forced onto one fusedrnn backend."""

    def __init__(self, module, inputs, mode, backend):
        super().__init__(module, inputs, mode)
        self.backend = backend

    def __call__(self):
        with backends.force(self.backend):
            super().__call__()


def run(case, timer, budget_s):
    device = torch.device("cuda")
    reference, fused = bench.build_modules(case, device)
    inputs = bench.make_inputs(case, device)
    steps = {"cudnn": bench.Step(reference, inputs, case.mode),
             "step": ForcedStep(fused, inputs, case.mode, "step"),
             "persistent": ForcedStep(fused, inputs, case.mode, "cuda-persistent")}
    refused = {}
    for name, step in list(steps.items()):
        try:
            step.reset()
            step()
            torch.cuda.synchronize()
        except RuntimeError as error:
            refused[name] = str(error).splitlines()[0][:200]
            del steps[name]
    samples = bench.measure(steps, timer, budget_s, warmup_rounds=2)
    return {"case": case.label(), "T": case.T, "refused": refused,
            "median_ms": {name: statistics.median(ms) for name, ms in samples.items()},
            "samples_ms": samples}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds a case")
    parser.add_argument("--cases", type=int, nargs="+", metavar="INDEX",
                        help="only these cases (indices into CASES)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/persistent.json"))
    args = parser.parse_args(argv)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    timer = bench.Timer(torch.device("cuda"))
    results = []
    print("| case | cuDNN ms | step ms | persistent ms | persistent us/step | vs cuDNN | vs step |")
    print("|---|---|---|---|---|---|---|")
    for case in [CASES[i] for i in args.cases] if args.cases else CASES:
        result = run(case, timer, args.budget)
        results.append(result)
        m = result["median_ms"]
        cell = lambda name: f"{m[name]:.3f}" if name in m else "refused"  # noqa: E731
        ratio = lambda a, b: f"{m[a] / m[b]:.2f}x" if a in m and b in m else "-"  # noqa: E731
        per_step = f"{1e3 * m['persistent'] / case.T:.2f}" if "persistent" in m else "-"
        print(f"| {result['case']} | {cell('cudnn')} | {cell('step')} | {cell('persistent')} | "
              f"{per_step} | {ratio('cudnn', 'persistent')} | {ratio('step', 'persistent')} |",
              flush=True)
        for name, why in result["refused"].items():
            print(f"|   {name} refused: {why} |||||||", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": bench.environment(torch.device("cuda")),
                                    "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
