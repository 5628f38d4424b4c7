"""Under load: a team with more threads than CPUs (a pinned process), and several threads
serving requests at once, finish and give torch.nn's results; a team whose threads share out
a step's panels gives the same results as one whose threads each run their own. (How fast they
are is for benchmarks/concurrency.py.)"""
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import fusedrnn
from conftest import CELLS, TOLERANCE, make_pair, random_state, rel_err, run_and_grad

_PINNED = textwrap.dedent("""
    import json, os, sys, time
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one CPU, before torch starts
    import torch, fusedrnn
    from torch import nn
    torch.manual_seed(0)
    classes = {"lstm": (nn.LSTM, fusedrnn.LSTM), "gru": (nn.GRU, fusedrnn.GRU)}
    results = {}
    for cell, (ref_cls, fused_cls) in classes.items():
        ref, fused = ref_cls(64, 64), fused_cls(64, 64)
        fused.load_state_dict(ref.state_dict())
        x = torch.randn(2000, 1, 64, requires_grad=True)
        start = time.perf_counter()
        out, _ = fused(x)
        (grad,) = torch.autograd.grad(out.sum(), x)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            fused(x)
        ref_out, _ = ref(x)
        (ref_grad,) = torch.autograd.grad(ref_out.sum(), x)
        results[cell] = [((out - ref_out).norm() / ref_out.norm()).item(),
                         ((grad - ref_grad).norm() / ref_grad.norm()).item(), seconds]
    print(json.dumps({"threads": torch.get_num_threads(), "results": results}))
""")


def test_pinned_to_one_cpu_with_two_threads():
    """OMP_NUM_THREADS=2 on one CPU: a team of two would wait at every step for a thread that
    is not running (40x torch.nn's time before). The loops finish, forward and backward, and
    match torch.nn."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _PINNED], env=env, capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["threads"] == 2
    for cell, (out_err, grad_err, _) in report["results"].items():
        assert out_err <= 1e-5 and grad_err <= 1e-5, (cell, out_err, grad_err)


@pytest.mark.parametrize("callers", [2, 4])
@pytest.mark.parametrize("cell", list(CELLS))
def test_threads_serving_at_once(cell, callers):
    """Several Python threads each run training steps on their own inputs at the same time (the
    fused loops of all of them in flight together, in teams sized for the CPUs they share):
    every result matches torch.nn's, and is bitwise the result of the same call made alone."""
    T, B, H = 40, 4, 96  # a loop large enough to take a team of threads
    ref, fused = make_pair(cell, H, H, "cpu", torch.float32, num_layers=2, bidirectional=True)
    inputs, expected, alone = [], [], []
    for caller in range(callers):
        gen = torch.Generator().manual_seed(caller)
        x = torch.randn(T, B, H, generator=gen)
        hx = random_state(cell, ref, B, "cpu", torch.float32, gen)
        inputs.append((x, hx))
        expected.append(run_and_grad(ref, x, hx))
        alone.append(run_and_grad(fused, x, hx))
    results, errors = [None] * callers, []
    start = threading.Barrier(callers)

    def serve(caller):
        try:
            start.wait()
            for _ in range(3):
                results[caller] = run_and_grad(fused, *inputs[caller])
        except Exception as err:  # noqa: BLE001  (reported below)
            errors.append(err)

    threads = [threading.Thread(target=serve, args=(c,)) for c in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    assert errors == []
    for caller in range(callers):
        errs = {k: rel_err(results[caller][k], expected[caller][k]) for k in expected[caller]}
        assert max(errs.values()) <= 1e-5, errs
        assert [k for k, v in alone[caller].items() if not torch.equal(results[caller][k], v)] \
            == []


@pytest.fixture
def panel_sharing():
    """Yields _C.set_panel_sharing, and turns sharing back on afterwards."""
    yield fusedrnn._C.set_panel_sharing
    fusedrnn._C.set_panel_sharing(True)


# (T, B, H): a loop's steps with 8 to 64 panels of at least 32K multiply-adds each, where a
# team's threads share out the panels; H=200 ends in a panel of fewer units than the others.
_SHARED_SHAPES = [(48, 32, 128), (20, 8, 256), (12, 16, 200), (6, 64, 512)]


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="a team needs two threads")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell", list(CELLS))
def test_shared_panels_give_each_threads_own_results(cell, dtype, panel_sharing):
    """With the panels shared out (a thread done with its own takes the others' left), every
    output and gradient is bitwise what each thread computing its own slice gives, and torch.nn's.
    (Which panels change hands varies from call to call: three calls each.)"""
    for T, B, H in _SHARED_SHAPES:
        ref, fused = make_pair(cell, H, H, "cpu", dtype, seed=T)
        gen = torch.Generator().manual_seed(B)
        x = torch.randn(T, B, H, generator=gen).to(dtype)
        hx = random_state(cell, ref, B, "cpu", dtype, gen)
        panel_sharing(False)
        own = run_and_grad(fused, x, hx)
        panel_sharing(True)
        for _ in range(3):
            shared = run_and_grad(fused, x, hx)
            assert [k for k, v in own.items() if not torch.equal(shared[k], v)] == [], (T, B, H)
        expected = run_and_grad(ref, x, hx)
        errs = {k: rel_err(shared[k], expected[k]) for k in expected}
        assert max(errs.values()) <= TOLERANCE[dtype], (T, B, H, errs)


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="a team needs two threads")
def test_threads_take_over_panels_and_not_when_sharing_is_off(panel_sharing):
    """The LSTM's loop at T=48 B=32 H=128 (16 panels a step): within 100 calls some thread takes
    over a panel of another's (5-15 a call on the development machine: the planner's work alone
    leaves the other thread done first), and none with sharing off."""
    model, x = fusedrnn.LSTM(128, 128), torch.randn(48, 32, 128)

    def taken_over_in(calls):
        before = fusedrnn._C.panels_taken_over()
        with torch.no_grad():
            for _ in range(calls):
                model(x)
                if fusedrnn._C.panels_taken_over() > before:
                    break
        return fusedrnn._C.panels_taken_over() - before

    panel_sharing(False)
    assert taken_over_in(20) == 0
    panel_sharing(True)
    assert taken_over_in(100) > 0
