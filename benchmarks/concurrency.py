"""fusedrnn.LSTM against torch.nn.LSTM under CPU oversubscription, as an inference server meets it.

    PYTHONPATH=. .venv/bin/python benchmarks/concurrency.py [--seconds 3] [--rounds 3] [--json out.json]

Both modules have the same weights (fused.load_state_dict(ref.state_dict())) and run float32
inference on the CPU under torch.inference_mode(), on random inputs and initial states drawn
from a fixed seed. Scenarios:

  callers    N Python threads in this process (N = --threads, 1,2,4 by default) share one module
             and loop over requests (T=100, B=1, I=64, H=128 by default) for --seconds, started
             together by a threading.Barrier after a per-thread warm-up (threads are new
             in every phase, as a server's short-lived handler threads are). Throughput is all
             threads' requests over the longest thread's time. torch.get_num_threads() is left
             at its default, so N > 1 threads each running an intra-op team oversubscribe the CPUs.
  pinned     one child process under `taskset -c <first allowed CPU>` (os.sched_setaffinity in
             the child if taskset is missing) with OMP_NUM_THREADS=--pinned-threads (2): a team
             of two threads on one CPU. It runs a long sequence (T=2000, B=1, I=H=64), times
             torch and fused calls alternately after one warm-up call each, and reports medians.
  processes  --processes (2) child processes with the default thread count, each running the
             callers=1 loop on the callers shape. The children start, build and warm up, say
             "ready", then run each phase on the parent's command, given to all children at
             once over stdin: torch, fused, torch, fused, ... (one launch, phases in lockstep).
             Throughput is the sum of the children's requests/s.

callers and processes run torch and fused phases alternately for --rounds rounds and report
the median of the per-round throughputs, so machine noise hits both alike. Every output is
checked to be finite. Ratios are oriented so that > 1 means fusedrnn is faster: throughput
fused/torch, time torch/fused. --json writes the environment, options and all numbers.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time

SEED = 0


def build(T, B, I, H, layers):
    """-> (modules {"torch", "fused"}, x, (h0, c0)), identical weights, random nonzero inputs."""
    import torch
    import fusedrnn
    torch.manual_seed(SEED)
    ref = torch.nn.LSTM(I, H, num_layers=layers).eval()
    fused = fusedrnn.LSTM(I, H, num_layers=layers).eval()
    fused.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(T, B, I, generator=g)
    hx = (torch.randn(layers, B, H, generator=g), torch.randn(layers, B, H, generator=g))
    return {"torch": ref, "fused": fused}, x, hx


def run_loop(model, x, hx, seconds):
    """Calls model(x, hx) until `seconds` have passed. -> (requests, elapsed, all finite)."""
    import torch
    n, finite, start = 0, True, time.perf_counter()
    with torch.inference_mode():
        while True:
            out, _ = model(x, hx)
            finite &= bool(torch.isfinite(out).all())
            n += 1
            if time.perf_counter() - start >= seconds:
                return n, time.perf_counter() - start, finite


def callers_phase(model, x, hx, threads, seconds):
    """`threads` threads loop on one shared model, started together. -> requests/s in all."""
    import torch
    barrier, results = threading.Barrier(threads), [None] * threads

    def work(i):
        with torch.inference_mode():
            for _ in range(2):  # warm-up: per-thread buffers, first-call setup
                model(x, hx)
        barrier.wait()
        results[i] = run_loop(model, x, hx, seconds)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if not all(r[2] for r in results):
        raise RuntimeError(f"non-finite output with {threads} callers")
    return sum(r[0] for r in results) / max(r[1] for r in results)


def alternate(phase, rounds):
    """Runs phase("torch"), phase("fused") alternately. -> {impl: [per-round values]}."""
    out = {"torch": [], "fused": []}
    for _ in range(rounds):
        for impl in out:
            out[impl].append(phase(impl))
    return out


def row(scenario, setting, unit, rounds, faster_is_higher):
    t, f = statistics.median(rounds["torch"]), statistics.median(rounds["fused"])
    return {"scenario": scenario, "setting": setting, "unit": unit, "torch": t, "fused": f,
            "ratio": f / t if faster_is_higher else t / f, "rounds": rounds}


def shape_args(a):
    return ["--T", str(a.T), "--B", str(a.B), "--I", str(a.I), "--H", str(a.H),
            "--layers", str(a.layers)]


def scenario_callers(a):
    modules, x, hx = build(a.T, a.B, a.I, a.H, a.layers)
    return [row("callers", f"N={n} threads", "req/s",
                alternate(lambda impl: callers_phase(modules[impl], x, hx, n, a.seconds), a.rounds),
                True) for n in a.threads]


def scenario_pinned(a):
    cpu = min(os.sched_getaffinity(0))
    cmd = [sys.executable, __file__, "--child", "pinned", "--T", str(a.pinned_T), "--B", "1",
           "--I", str(a.pinned_size), "--H", str(a.pinned_size), "--layers", "1",
           "--pinned-reps", str(a.pinned_reps), "--pinned-budget", str(a.pinned_budget)]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu)] + cmd
    else:
        cmd += ["--pin", str(cpu)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.pinned_threads))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"pinned child failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    setting = (f"CPU {cpu}, OMP_NUM_THREADS={a.pinned_threads}, T={a.pinned_T} "
               f"I=H={a.pinned_size}")
    r = row("pinned", setting, "ms/call", {k: res[k] for k in ("torch", "fused")}, False)
    r["child_threads"], r["child_affinity"] = res["threads"], res["affinity"]
    return [r]


def scenario_processes(a):
    cmd = [sys.executable, __file__, "--child", "worker"] + shape_args(a)
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(a.processes)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("worker child failed to start (see its stderr above)")

        def phase(impl):
            for p in procs:  # all children get the command within microseconds
                p.stdin.write(f"{impl} {a.seconds}\n")
                p.stdin.flush()
            res = [json.loads(p.stdout.readline()) for p in procs]
            if not all(r["finite"] for r in res):
                raise RuntimeError("non-finite output in a worker child")
            return sum(r["n"] / r["elapsed"] for r in res)

        rounds = alternate(phase, a.rounds)
    finally:
        for p in procs:  # end of stdin ends a worker; one that hangs is killed
            p.stdin.close()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    return [row("processes", f"{a.processes} processes x 1 caller", "req/s", rounds, True)]


def child_pinned(a):
    import torch
    modules, x, hx = build(a.T, a.B, a.I, a.H, a.layers)
    times = {"torch": [], "fused": []}
    with torch.inference_mode():
        for impl in times:  # warm-up
            modules[impl](x, hx)
        deadline = time.perf_counter() + a.pinned_budget
        for rep in range(a.pinned_reps):
            if rep and time.perf_counter() > deadline:
                break
            for impl in times:
                start = time.perf_counter()
                out, _ = modules[impl](x, hx)
                times[impl].append((time.perf_counter() - start) * 1e3)
                if not torch.isfinite(out).all():
                    sys.exit(f"non-finite output from {impl}")
    print(json.dumps({**times, "threads": torch.get_num_threads(),
                      "affinity": sorted(os.sched_getaffinity(0))}))


def child_worker(a):
    modules, x, hx = build(a.T, a.B, a.I, a.H, a.layers)
    for impl in modules:
        run_loop(modules[impl], x, hx, 0.2)  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:  # "<impl> <seconds>" per phase, until end of input
        impl, seconds = line.split()
        n, elapsed, finite = run_loop(modules[impl], x, hx, float(seconds))
        print(json.dumps({"n": n, "elapsed": elapsed, "finite": finite}), flush=True)


def environment():
    import torch
    import fusedrnn
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
    return {"cpu_model": model, "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "fusedrnn": fusedrnn.__version__}


def max_diff(a):
    """Largest |fused - torch| on the callers inputs: a check that the comparison is sane."""
    import torch
    modules, x, hx = build(a.T, a.B, a.I, a.H, a.layers)
    with torch.inference_mode():
        return (modules["fused"](x, hx)[0] - modules["torch"](x, hx)[0]).abs().max().item()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenarios", default="callers,pinned,processes")
    p.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    p.add_argument("--rounds", type=int, default=3, help="torch/fused alternations")
    p.add_argument("--threads", default="1,2,4", help="caller counts for 'callers'")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--I", type=int, default=64)
    p.add_argument("--H", type=int, default=128)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--pinned-T", type=int, default=2000)
    p.add_argument("--pinned-size", type=int, default=64, help="I = H for 'pinned'")
    p.add_argument("--pinned-threads", type=int, default=2, help="OMP_NUM_THREADS for 'pinned'")
    p.add_argument("--pinned-reps", type=int, default=7, help="timed calls per module")
    p.add_argument("--pinned-budget", type=float, default=40.0,
                   help="seconds after which 'pinned' stops repeating (at least one call each)")
    p.add_argument("--json", help="write all numbers to this file")
    p.add_argument("--child", choices=["pinned", "worker"], help=argparse.SUPPRESS)
    p.add_argument("--pin", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.pin is not None:
        os.sched_setaffinity(0, {a.pin})  # before torch starts its threads
    if a.child:
        return {"pinned": child_pinned, "worker": child_worker}[a.child](a)
    a.threads = [int(n) for n in a.threads.split(",")]

    env = environment()
    print(f"CPU: {env['cpu_model']}; os.cpu_count() = {env['cpu_count']}; affinity = "
          f"{env['affinity']} CPUs; torch.get_num_threads() = {env['torch_threads']}")
    print(f"torch {env['torch']}, fusedrnn {env['fusedrnn']}; LSTM T={a.T} B={a.B} I={a.I} "
          f"H={a.H} L={a.layers} float32 inference; {a.seconds} s x {a.rounds} rounds")
    env["max_abs_diff"] = max_diff(a)
    print(f"max |fused - torch| on the callers inputs: {env['max_abs_diff']:.2e}\n")

    rows, errors = [], {}
    scenarios = {"callers": scenario_callers, "pinned": scenario_pinned,
                 "processes": scenario_processes}
    for name in a.scenarios.split(","):
        try:
            rows += scenarios[name](a)
        except Exception as e:  # report and go on with the other scenarios
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"{name}: FAILED: {errors[name]}", file=sys.stderr)

    print(f"{'scenario':<10} {'setting':<44} {'unit':<8} {'torch.nn':>9} {'fusedrnn':>9} "
          f"{'ratio':>7}")
    for r in rows:
        print(f"{r['scenario']:<10} {r['setting']:<44} {r['unit']:<8} {r['torch']:>9.1f} "
              f"{r['fused']:>9.1f} {r['ratio']:>6.2f}x")
    print("ratio > 1: fusedrnn faster (throughput fused/torch; time torch/fused); medians")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"environment": env, "options": vars(a), "results": rows,
                       "errors": errors}, f, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
