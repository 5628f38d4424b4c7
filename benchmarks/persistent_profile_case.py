"""One case of persistent_timing.py, shortened to T=64, forced onto cuda-persistent and called
three times: what benchmarks/persistent_profile.sh points Nsight Compute at (it profiles the
third call's loop_kernel launch, after two warm-up calls).

    python3 benchmarks/persistent_profile_case.py INDEX   # an index into persistent_timing.CASES
"""
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from persistent_timing import CASES  # noqa: E402

from fusedrnn import backends, bench  # noqa: E402


def main(index):
    case = dataclasses.replace(CASES[index], T=64)
    device = torch.device("cuda")
    _, fused = bench.build_modules(case, device)
    step = bench.Step(fused, bench.make_inputs(case, device), case.mode)
    with backends.force("cuda-persistent"):
        for _ in range(3):
            step.reset()
            step()
    torch.cuda.synchronize()
    print(case.label(), "ran 3 times on cuda-persistent")


if __name__ == "__main__":
    main(int(sys.argv[1]))
