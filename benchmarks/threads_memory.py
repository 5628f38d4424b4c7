"""Memory a process keeps after one long request on each of 8 threads that stay alive, as in a
server's thread pool: resident growth over the process's own after a warm-up request.

    PYTHONPATH=. python benchmarks/threads_memory.py {torch,fused} {infer,train,bi} [T]

LSTM(512, 512) (bidirectional for `bi`), batch 64, T=1000 by default, float32 on the CPU.
Run each library in its own process (the numbers are per process). The last line is JSON:
grown (bytes, with the threads alive), held (fusedrnn's pool then) and emptied (the growth
left after fusedrnn.empty_cache()); tests/test_scratch.py reads it.
"""
import json
import sys
import threading

import torch

import fusedrnn


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main(kind, mode, T=1000):
    torch.manual_seed(0)
    cls = fusedrnn.LSTM if kind == "fused" else torch.nn.LSTM
    model = cls(512, 512, bidirectional=mode == "bi")
    x = torch.randn(T, 64, 512)

    def request():
        if mode == "train":
            out, _ = model(x.clone().requires_grad_())
            out.sum().backward()
        else:
            with torch.no_grad():
                model(x)

    request()
    fusedrnn.empty_cache()
    before = resident_bytes()
    served, finish = threading.Barrier(9), threading.Event()

    def worker():
        request()
        served.wait()
        finish.wait()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    served.wait()
    grown = resident_bytes() - before
    held = fusedrnn.scratch_memory()["held"]
    fusedrnn.empty_cache()
    emptied = resident_bytes() - before
    finish.set()
    for t in threads:
        t.join()
    print(f"{kind} {mode} T={T}: +{grown / 2**30:.2f} GB held after 8 threads' requests")
    print(json.dumps({"grown": grown, "held": held, "emptied": emptied}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
