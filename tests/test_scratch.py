"""The pool of CPU temporaries kept between calls (csrc/scratch.h): bounded by its limit however
many threads call, emptied on request, and invisible in the results."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fusedrnn
from conftest import make_pair, random_state, run_and_grad

MB = 1 << 20


@pytest.fixture
def limit():
    """Restores the limit and empties the pool after the test."""
    saved = fusedrnn.scratch_memory()["limit"]
    yield
    fusedrnn.set_scratch_limit(saved)
    fusedrnn.empty_cache()


def _gru_training_step(T=16, B=32, H=512):
    """A GRU training step whose temporaries are 1-2 MB each (so they come from the pool)."""
    _, fused = make_pair("gru", H, H, "cpu", torch.float32, seed=T)
    gen = torch.Generator().manual_seed(T)
    x = torch.randn(T, B, H, generator=gen)
    hx = random_state("gru", fused, B, "cpu", torch.float32, gen)
    return lambda: run_and_grad(fused, x, hx)


def test_default_limit_and_reporting(limit):
    assert fusedrnn.scratch_memory()["limit"] == 256 * MB
    step = _gru_training_step()
    fusedrnn.empty_cache()
    assert fusedrnn.scratch_memory()["held"] == 0
    step()
    held = fusedrnn.scratch_memory()["held"]
    assert 2 * MB <= held <= 256 * MB  # the projection and two gate gradients, kept
    fusedrnn.empty_cache()
    assert fusedrnn.scratch_memory()["held"] == 0


def test_limit_bounds_what_is_kept_and_results_do_not_change(limit):
    step = _gru_training_step()
    expected = step()
    for limit_bytes in (0, 3 * MB, 256 * MB):
        fusedrnn.set_scratch_limit(limit_bytes)
        for _ in range(2):
            got = step()
            assert [k for k in expected if not torch.equal(got[k], expected[k])] == []
            assert fusedrnn.scratch_memory()["held"] <= limit_bytes


def test_lowering_the_limit_frees_what_is_kept_beyond_it(limit):
    _gru_training_step()()
    assert fusedrnn.scratch_memory()["held"] > MB
    fusedrnn.set_scratch_limit(MB // 2)
    assert fusedrnn.scratch_memory()["held"] == 0
    with pytest.raises(RuntimeError, match="at least 0 bytes"):
        fusedrnn.set_scratch_limit(-1)


_EIGHT_THREADS = textwrap.dedent("""
    import json, sys, threading
    import torch, fusedrnn

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    torch.manual_seed(0)
    model = (fusedrnn.LSTM if sys.argv[1] == "fusedrnn" else torch.nn.LSTM)(256, 256)
    x = torch.randn(200, 64, 256)  # the gates' temporary: 52 MB, mapped and unmapped whole
    with torch.no_grad():
        model(x)
    fusedrnn.empty_cache()
    before = rss()

    served, finish = threading.Barrier(9), threading.Event()

    def worker():  # a server's pool thread: one long request, then idle but alive
        with torch.no_grad():
            assert model(x)[0].isfinite().all()
        served.wait()
        finish.wait()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    served.wait()
    after = rss()
    held = fusedrnn.scratch_memory()["held"]
    fusedrnn.empty_cache()
    emptied = rss()
    finish.set()
    for t in threads:
        t.join()
    print(json.dumps({"grown": after - before, "held": held, "emptied": emptied - before}))
""")


def test_eight_threads_keep_no_more_than_the_limit():
    """One long request on each of 8 threads that then stay alive and idle, as in a server's
    pool: fusedrnn's pool keeps at most its limit (64 MB here), not a block per thread (8 x 52
    MB before), and empty_cache frees it. The threads themselves keep memory too (glibc's
    per-thread arenas: ~300 MB here), for torch.nn alike, so the bar is torch.nn's growth in
    the same run."""
    def grown(module):
        env = dict(os.environ, FUSEDRNN_SCRATCH_LIMIT_MB="64", OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-c", _EIGHT_THREADS, module], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    ours, theirs = grown("fusedrnn"), grown("torch.nn")
    assert 0 < ours["held"] <= 64 * MB
    slack = 16 * MB
    assert ours["grown"] <= theirs["grown"] + ours["held"] + slack, (ours, theirs)
    assert ours["emptied"] <= theirs["grown"] + slack, (ours, theirs)
