"""Where a fused GPU call's time goes, per case: the wall time (CUDA events, median), the host's
time to issue the call, the GPU's busy time (sum of kernel times from torch.profiler), and, for
inference, the replay of the call captured as a CUDA graph (the GPU time without launch gaps).

    PYTHONPATH=$PWD python3 benchmarks/gpu_anatomy.py     (on the GPU machine, after the build)

When the wall time follows the host time and the graph replay is far below it, the loop is
host-bound: each step costs more to issue than to run. Findings: benchmarks/NOTES.md.
"""
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fusedrnn import bench

SHAPES = [dict(cell="lstm", T=1024, B=16, I=768, H=768, dtype="float16"),
          dict(cell="gru", T=1024, B=16, I=768, H=768, dtype="bfloat16"),
          dict(cell="lstm", T=100, B=64, I=512, H=512, dtype="float32"),
          dict(cell="lstm", T=1000, B=1, I=512, H=512, dtype="float32")]
REPS = 20


def device_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(REPS):
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def host_ms(fn) -> float:
    times = []
    for _ in range(REPS):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def kernel_times(fn) -> dict:
    """-> {kernel name: (launches, total microseconds)} for one call."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            count, total = kernels.get(event.name[:60], (0, 0.0))
            kernels[event.name[:60]] = (count + 1, total + event.device_time_total)
    return kernels


def graph_replay_ms(fn) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return device_ms(graph.replay)


def main():
    device = torch.device("cuda")
    for shape in SHAPES:
        for mode in bench.MODES:
            case = bench.Case(mode=mode, **shape)
            reference, fused = bench.build_modules(case, device)
            inputs = bench.make_inputs(case, device)
            fused_step, cudnn_step = (bench.Step(m, inputs, mode) for m in (fused, reference))

            def run_fused():
                fused_step.reset()
                fused_step()

            def run_cudnn():
                cudnn_step.reset()
                cudnn_step()

            for _ in range(3):
                run_fused()
                run_cudnn()
            wall, cudnn, host = device_ms(run_fused), device_ms(run_cudnn), host_ms(run_fused)
            kernels = kernel_times(run_fused)
            busy = sum(total for _, total in kernels.values()) / 1e3
            print(f"\n{case.label()}: fused {wall:.3f} ms ({wall / case.T * 1e3:.1f} us/step), "
                  f"cuDNN {cudnn:.3f} ms, host {host:.3f} ms, GPU busy {busy:.3f} ms")
            for name, (count, total) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:6]:
                print(f"  {total / 1e3:8.3f} ms {count:6d}x {total / count:7.2f} us  {name}")
            if mode == "inference":
                print(f"  graph replay {graph_replay_ms(run_fused):.3f} ms")


if __name__ == "__main__":
    main()
