"""The pool of CPU temporaries kept between calls (csrc/scratch.h): bounded by its limit however
many threads call, emptied on request, and invisible in the results."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedrnn
from conftest import make_pair, random_state, run_and_grad

MB = 1 << 20
ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "benchmarks" / "threads_memory.py"


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


def test_what_training_keeps_returns_to_the_pool_when_freed(limit):
    """A training forward's kept activations (the GRU's, 16 x 32 x 2048 float32: 4 MB) come
    from the pool and stay out of it while autograd holds them; once the graph is freed, their
    block is back in the pool, and the next forward takes it again rather than new memory."""
    _, fused = make_pair("gru", 512, 512, "cpu", torch.float32, seed=1)
    x = torch.randn(16, 32, 512, requires_grad=True)
    saved_bytes = 16 * 32 * 4 * 512 * 4
    fusedrnn.empty_cache()
    output, hn = fused(x)
    held_with_graph = fusedrnn.scratch_memory()["held"]
    del output, hn
    held_after = fusedrnn.scratch_memory()["held"]
    assert held_after - held_with_graph >= saved_bytes
    output, hn = fused(x)
    assert fusedrnn.scratch_memory()["held"] == held_with_graph
    output.sum().backward()  # the kept tensors serve the backward


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


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_half_precision_calls_widen_into_the_pool(cell, limit):
    """A bfloat16 call widens its arguments, and computes its results, in blocks of the pool
    (layer/prepare.h: temporary, result_like): the blocks go back to it, and what the call
    returned are rounded copies, which neither the next call nor a call on other data changes."""
    def step(seed):
        _, fused = make_pair(cell, 256, 256, "cpu", torch.bfloat16, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(64, 16, 256, generator=gen).to(torch.bfloat16)  # 1 MB as float32
        hx = random_state(cell, fused, 16, "cpu", torch.bfloat16, gen)
        return lambda: run_and_grad(fused, x, hx)

    first, other = step(1), step(2)
    fusedrnn.empty_cache()
    expected = first()
    kept = {k: v.clone() for k, v in expected.items()}
    assert fusedrnn.scratch_memory()["held"] >= 2 * MB  # the widened input and output, at least
    other()
    again = first()
    assert [k for k in kept if not torch.equal(expected[k], kept[k])] == []
    assert [k for k in kept if not torch.equal(again[k], kept[k])] == []


def test_eight_threads_keep_no_more_than_the_limit():
    """One long request on each of 8 threads that then stay alive and idle, as in a server's
    pool (benchmarks/threads_memory.py): fusedrnn's pool keeps at most its limit (64 MB here),
    not a block per thread (8 x 52 MB before), and empty_cache frees it. The threads themselves
    keep memory too (glibc's per-thread arenas: ~300 MB here), for torch.nn alike, so the bar is
    torch.nn's growth in the same run."""
    def grown(kind):  # LSTM(512, 512), T=100, B=64: the gates' temporary is 52 MB
        env = dict(os.environ, FUSEDRNN_SCRATCH_LIMIT_MB="64", OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.getenv("PYTHONPATH")])))
        out = subprocess.run([sys.executable, str(SCRIPT), kind, "infer", "100"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    ours, theirs = grown("fused"), grown("torch")
    assert 0 < ours["held"] <= 64 * MB
    slack = 16 * MB
    assert ours["grown"] <= theirs["grown"] + ours["held"] + slack, (ours, theirs)
    assert ours["emptied"] <= theirs["grown"] + slack, (ours, theirs)
