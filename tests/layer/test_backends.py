"""The backend choice (csrc/layer/backend.h, fusedrnn.backends): each refusal says why, a forced
backend never falls back, forward and backward pair across backends, and the environment
switches work."""
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedrnn
from conftest import CELLS, make_pair, random_state, rel_err, run_and_grad

ROOT = Path(__file__).parents[2]
explain_call = fusedrnn.backends.explain_call


@pytest.mark.parametrize("device, dtype, steps, projection, refusal", [
    ("cuda", torch.float32, 10, False, "runs on the CPU only; this call is on cuda"),
    ("cpu", torch.float32, 1, False, r"a single step \(T=1, a cell\)"),
    ("cpu", torch.float64, 10, True, "LSTM with proj_size"),
    ("cpu", torch.int32, 10, False, "no kernels for Int"),
])
def test_each_refusal_says_why(device, dtype, steps, projection, refusal):
    report = explain_call(device, dtype, steps, projection)
    assert report.backend == "step"
    assert report.refusals["step"] is None
    assert re.search(refusal, report.refusals["cpu-fused"])


def test_cpu_layers_take_the_fused_recurrence_where_the_isa_has_vectors():
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        report = explain_call("cpu", dtype, 5)
        fused = fusedrnn.backends.cpu_isa()[1] != "scalar"
        assert report.backend == ("cpu-fused" if fused else "step"), report
    with fusedrnn.backends.force_cpu_isa("scalar"):
        assert "needs AVX2 and FMA" in explain_call("cpu", torch.float32, 5).refusals["cpu-fused"]


def test_explain_reads_modules_cells_and_packed_input():
    lstm = fusedrnn.LSTM(4, 6, proj_size=3, batch_first=True)
    report = fusedrnn.backends.explain(lstm, torch.randn(2, 7, 4))
    assert "proj_size" in report.refusals["cpu-fused"]
    assert "T=1" in fusedrnn.backends.explain(fusedrnn.GRU(4, 6), torch.randn(1, 2, 4)) \
        .refusals["cpu-fused"]
    cell = fusedrnn.GRUCell(4, 6)
    assert fusedrnn.backends.explain(cell, torch.randn(2, 4)).backend == "step"
    packed = torch.nn.utils.rnn.pack_sequence([torch.randn(5, 4), torch.randn(3, 4)])
    report = fusedrnn.backends.explain(fusedrnn.RNN(4, 6), packed)
    assert report.refusals["step"] is None and "accepts" in str(report)
    with pytest.raises(TypeError, match="fusedrnn.convert"):
        fusedrnn.backends.explain(torch.nn.GRU(4, 6), torch.randn(3, 2, 4))


def test_a_forced_backend_never_falls_back():
    cell = fusedrnn.GRUCell(4, 6)
    with fusedrnn.backends.force("cpu-fused"):
        assert fusedrnn.backends.forced() == "cpu-fused"
        with pytest.raises(RuntimeError, match="'cpu-fused' is forced .* cannot run this call: "
                                               r"a single step \(T=1"):
            cell(torch.randn(2, 4))
        report = fusedrnn.backends.explain(cell, torch.randn(2, 4))
        assert report.backend is None and "refuses this call" in str(report)
    assert fusedrnn.backends.forced() is None
    cell(torch.randn(2, 4))
    with pytest.raises(ValueError, match="unknown fusedrnn backend 'fast'; choose from "
                                         "cuda-persistent, cpu-fused, step"):
        with fusedrnn.backends.force("fast"):
            pass


@pytest.mark.filterwarnings("ignore:Complex modules")
def test_complex_calls_name_torch_nn_and_a_forced_backend_refuses_them():
    """No backend has complex kernels: explain names torch.nn's implementation, which a module or
    cell given complex input runs, and a forced backend raises for them, saying why."""
    x = torch.randn(3, 2, 4, dtype=torch.complex64)
    for model, data in [(fusedrnn.LSTM(4, 6).to(torch.complex64), x),
                        (fusedrnn.GRUCell(4, 6).to(torch.complex64), x[0])]:
        report = fusedrnn.backends.explain(model, data)
        assert report.backend == fusedrnn.backends.TORCH_NN and "torch.nn's implementation" \
            in str(report)
        assert set(report.refusals.values()) == {"no kernels for complex64"}
        with fusedrnn.backends.force("step"):
            assert fusedrnn.backends.explain(model, data).backend is None
            with pytest.raises(RuntimeError, match="'step' is forced .* no kernels for "
                                                   "torch.complex64; with no backend forced, "
                                                   "torch.nn's implementation runs"):
                model(data)


@pytest.mark.parametrize("cell", list(CELLS))
def test_forward_and_backward_pair_across_backends(cell):
    """Every backend saves the same tensors in the same layouts: a forward on one and the
    backward on the other give torch.nn's gradients."""
    T, B, I, H = 7, 3, 5, 24
    ref, fused = make_pair(cell, I, H, "cpu", torch.float64, num_layers=2)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64, requires_grad=True)
    hx = random_state(cell, ref, B, "cpu", torch.float64, gen)
    expected = run_and_grad(ref, x, hx)
    for first, second in (("cpu-fused", "step"), ("step", "cpu-fused")):
        with fusedrnn.backends.force(first):
            out, _ = fused(x, hx)
        with fusedrnn.backends.force(second):
            grad_x, grad_w = torch.autograd.grad(out.sum(), [x, fused.weight_hh_l0])
        ref_out, _ = ref(x, hx)
        ref_x, ref_w = torch.autograd.grad(ref_out.sum(), [x, ref.weight_hh_l0])
        assert rel_err(out, expected["output"]) <= 1e-10
        assert rel_err(grad_x, ref_x) <= 1e-10 and rel_err(grad_w, ref_w) <= 1e-10


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_environment_switches():
    code = ("import torch, fusedrnn; m = fusedrnn.GRU(4, 8); "
            "print(fusedrnn.backends.forced(), fusedrnn.backends.cpu_isa()[1], "
            "fusedrnn.backends.explain(m, torch.randn(5, 2, 4)).backend, "
            "bool(m(torch.randn(5, 2, 4))[0].isfinite().all()))")
    out = _run(code, FUSEDRNN_BACKEND="step", FUSEDRNN_CPU_ISA="scalar")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["step", "scalar", "step", "True"]
    out = _run(code, FUSEDRNN_BACKEND="fast")
    assert out.returncode != 0 and "FUSEDRNN_BACKEND=fast: unknown backend" in out.stderr
    for isa in fusedrnn.backends.cpu_isas():  # each ISA this CPU runs, by name
        out = _run(code, FUSEDRNN_CPU_ISA=isa)
        assert out.returncode == 0 and out.stdout.split()[1] == isa, out.stderr
    out = _run(code, FUSEDRNN_CPU_ISA="sse9")
    expected = "FUSEDRNN_CPU_ISA=sse9: expected scalar, avx2, avx512, avx512_bf16 or amx"
    assert out.returncode != 0 and expected in out.stderr


def test_info_reports_the_build_and_the_machine():
    out = subprocess.run([sys.executable, "-m", "fusedrnn.info"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for expected in (f"fusedrnn {fusedrnn.__version__}", f"torch {torch.__version__}", "CUDA:",
                     "GPUs:", f"fusedrnn's ISA: {fusedrnn.backends.cpu_isa()[1]}", "threads:",
                     "backends: cuda-persistent, cpu-fused, step", "a cell (T = 1): step",
                     "scratch pool",
                     f"library (what a C++ program loads): {fusedrnn.library_path()}"):
        assert expected in text, (expected, text)


def test_detected_isa_is_the_best_this_cpu_has():
    """The ISA picked at run time follows the CPU's flags (/proc/cpuinfo): AMX where it has
    AVX-512 F, BW, VL, DQ and BF16 and AMX's tiles for bfloat16 (AMX-TILE, AMX-BF16; Linux lets
    every process use them since 5.16), AVX-512 with bfloat16 dot products where it has the
    first five, AVX-512 where it has the first four, else AVX2 where it has AVX2 and FMA, else
    scalar."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next(line for line in cpuinfo if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags on this system")
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the vector kernels are built for x86-64")
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(flags)
    bf16 = avx512 and "avx512_bf16" in flags
    expected = ("amx" if bf16 and {"amx_tile", "amx_bf16"} <= set(flags) else
                "avx512_bf16" if bf16 else "avx512" if avx512
                else "avx2" if {"avx2", "fma"} <= set(flags) else "scalar")
    assert fusedrnn.backends.cpu_isa()[0] == expected
    assert fusedrnn.backends.cpu_isas()[-1] == expected
