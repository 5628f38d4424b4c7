"""The forward ops' C entry points (csrc/layer/aoti_shims.cpp, fusedrnn/aoti.py): C++ that
Inductor writes (AOTInductor packages, torch.compile's cpp_wrapper) calls every fused forward op
through them rather than AOTInductor's proxy executor, with torch.nn's results and the proxy's
to the bit; the package loads in a new process that imports fusedrnn, and in a C++ program
without Python that loads fusedrnn's library; FUSEDRNN_AOTI_SHIMS=0 turns them off. Each
compile with g++ takes 20-40 s on a 2-core machine, so one model holds all six ops and one
package serves most tests."""
import os
import struct
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
from torch import nn
from torch.export import Dim

import fusedrnn
from conftest import CELLS

# (cell, options, fused op it calls): every forward op, with and without a projection.
LAYERS = [
    ("lstm", {"proj_size": 3}, "lstm_forward"),
    ("lstm", {"bidirectional": True}, "lstm_forward_pair"),
    ("gru", {}, "gru_forward"),
    ("gru", {"bidirectional": True, "bias": False}, "gru_forward_pair"),
    ("rnn_relu", {}, "rnn_forward"),
    ("rnn_tanh", {"bidirectional": True}, "rnn_forward_pair"),
]
INPUT_SIZE, HIDDEN_SIZE = 4, 6
_HERE = os.path.dirname(os.path.abspath(__file__))


class EveryOp(nn.Module):
    """Each layer of LAYERS on the same input; their outputs and final states, flat."""

    def __init__(self, fused):
        super().__init__()
        self.layers = nn.ModuleList(
            CELLS[cell][1 if fused else 0](INPUT_SIZE, HIDDEN_SIZE, **CELLS[cell][2], **options)
            for cell, options, _ in LAYERS)

    def forward(self, x):
        results = []
        for layer in self.layers:
            output, state = layer(x)
            results += [output, *(state if isinstance(state, tuple) else (state,))]
        return tuple(results)


def _models():
    torch.manual_seed(0)
    ref = EveryOp(fused=False).double().eval()
    fused = EveryOp(fused=True).double().eval()
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def _inputs(T, B, seed):
    return torch.randn(T, B, INPUT_SIZE, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


def _wrapper_source(package_path):
    with zipfile.ZipFile(package_path) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".wrapper.cpp")]
        return archive.read(name).decode()


def _relative_error(got, expected):
    return ((got - expected).norm() / expected.norm().clamp_min(1e-300)).item()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """fusedrnn's model, exported with dynamic time and batch dims and packaged: (path, torch.nn
    model)."""
    from torch._inductor import aoti_compile_and_package

    ref, fused = _models()
    program = torch.export.export(fused, (_inputs(5, 3, 0),),
                                  dynamic_shapes=({0: Dim("time", max=512),
                                                   1: Dim("batch", max=512)},))
    path = tmp_path_factory.mktemp("aoti") / "every_op.pt2"
    return aoti_compile_and_package(program, package_path=str(path)), ref


def test_package_calls_every_op_through_its_entry_point(package):
    source = _wrapper_source(package[0])
    for _, _, op in LAYERS:  # declared, and called with the model's handles
        assert f"aoti_torch_cpu_{op}(AtenTensorHandle" in source
        assert source.count(f"aoti_torch_cpu_{op}(") == 2
    assert "call_function" not in source  # the proxy executor's entry


@pytest.mark.parametrize("T, B", [(1, 1), (7, 4), (2, 9)])
def test_package_matches_torch_nn(package, T, B):
    from torch._inductor import aoti_load_package

    path, ref = package
    runner = aoti_load_package(path)
    x = _inputs(T, B, seed=T * 10 + B)
    with torch.no_grad():
        got, expected = runner(x), ref(x)
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape, i
        assert _relative_error(a, b) < 1e-10, i


def test_package_loads_in_a_new_process_and_equals_the_proxy_executors(package, cpp_runner,
                                                                       tmp_path):
    """A new process that imports fusedrnn loads the package (its entry points resolve there),
    and builds the same model with FUSEDRNN_AOTI_SHIMS=0: that package goes through the proxy
    executor, and both give the same bits. The C++ runner serves the proxy's package too: the
    ops it names are registered by fusedrnn's library alone."""
    script = textwrap.dedent(f"""
        import sys, zipfile
        import torch, fusedrnn
        from torch._inductor import aoti_compile_and_package, aoti_load_package
        sys.path[:0] = {[_HERE, os.path.dirname(_HERE)]!r}
        from test_aoti_shims import _inputs, _models
        _, fused = _models()
        x = _inputs(6, 2, seed=1)
        proxy_path = aoti_compile_and_package(
            torch.export.export(fused, (x,)), package_path={str(tmp_path / "proxy.pt2")!r})
        with zipfile.ZipFile(proxy_path) as archive:
            source = archive.read([n for n in archive.namelist()
                                   if n.endswith(".wrapper.cpp")][0]).decode()
        assert "call_function" in source and "aoti_torch_cpu_gru_forward" not in source
        with torch.no_grad():
            through_entry_points = aoti_load_package({package[0]!r})(x)
            through_proxy = aoti_load_package(proxy_path)(x)
        assert all(torch.equal(a, b) for a, b in zip(through_entry_points, through_proxy))
        print("equal")
    """)
    env = dict(os.environ, FUSEDRNN_AOTI_SHIMS="0")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("equal")
    x = _inputs(6, 2, seed=1)
    got = _serve_from_cpp(cpp_runner, str(tmp_path / "proxy.pt2"), x, tmp_path)
    with torch.no_grad():
        expected = package[1](x)
    assert all(_relative_error(a, b) < 1e-10 for a, b in zip(got, expected, strict=True))


@pytest.fixture(scope="module")
def cpp_runner(tmp_path_factory):
    """aoti_runner.cpp built against torch's C++ libraries, as a C++ server is: no Python in
    it, and fusedrnn's library loaded at run time."""
    runner = tmp_path_factory.mktemp("cpp") / "aoti_runner"
    command = fusedrnn.aoti.cpp_program_command(os.path.join(_HERE, "aoti_runner.cpp"),
                                                str(runner))
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return str(runner)


def _serve_from_cpp(runner, package_path, x, directory, device="cpu"):
    """The package's results from the C++ runner, on x (a CPU tensor) moved to device."""
    (directory / "input").write_bytes(x.numpy().tobytes())
    done = subprocess.run(
        [runner, fusedrnn.library_path(), package_path, str(directory / "input"),
         *map(str, x.shape), str(directory / "result"), device],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    count = int(done.stdout.split()[0])
    results = []
    for i in range(count):
        data = (directory / f"result{i}").read_bytes()
        values = struct.unpack(f"{len(data) // 8}d", data)
        rank = int(values[0])
        results.append(torch.tensor(values[1 + rank:], dtype=torch.float64).view(
            [int(size) for size in values[1:1 + rank]]))
    return results


def test_a_cpp_program_without_python_serves_the_package(package, cpp_runner, tmp_path):
    """fusedrnn's library (fusedrnn.library_path()) holds the ops and their entry points and no
    Python: a C++ program loads it, then the package, and gets torch.nn's results. (The Python
    module's file, which needs libtorch_python, would not load there.)"""
    path, ref = package
    x = _inputs(6, 3, seed=5)
    got = _serve_from_cpp(cpp_runner, path, x, tmp_path)
    with torch.no_grad():
        expected = ref(x)
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape, i
        assert _relative_error(a, b) < 1e-10, i


def test_the_python_module_needs_python_and_the_library_does_not(cpp_runner, tmp_path):
    """The test above can fail: the runner refuses a library that needs Python."""
    done = subprocess.run([cpp_runner, fusedrnn._extension._C.__file__, "-", "-", "1", "1", "1",
                           "-"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 3 and "libtorch_python" in done.stderr, done.stderr


def test_a_compiles_own_shim_dict_gets_fusedrnns_entries(tmp_path):
    """A compile that sets aot_inductor.custom_ops_to_c_shims itself (for ops of its own)
    still gets fusedrnn's entries, which the fake kernels add back."""
    from torch._inductor import aoti_compile_and_package
    from torch._inductor import config as inductor_config

    _, fused = _models()
    layer = fused.layers[2]  # gru_forward
    program = torch.export.export(layer, (_inputs(3, 2, seed=2),))
    with inductor_config.patch({"aot_inductor.custom_ops_to_c_shims": {}}):
        path = aoti_compile_and_package(program, package_path=str(tmp_path / "gru.pt2"))
        assert torch.ops.fusedrnn.gru_forward.default in (
            inductor_config.aot_inductor.custom_ops_to_c_shims)
    assert "aoti_torch_cpu_gru_forward(AtenTensorHandle" in _wrapper_source(path)


def test_cpp_wrapper_compile_calls_the_entry_points():
    """torch.compile's cpp_wrapper mode writes C++ as AOTInductor does, with the same entry
    points."""
    from torch._inductor.utils import run_and_get_cpp_code

    torch._dynamo.reset()
    ref, fused = _models()
    compiled = torch.compile(fused, options={"cpp_wrapper": True}, fullgraph=True)
    x = _inputs(4, 3, seed=3)
    with torch.no_grad():
        (got, source), expected = run_and_get_cpp_code(compiled, x), ref(x)
    for _, _, op in LAYERS:
        assert f"aoti_torch_cpu_{op}(AtenTensorHandle" in source
    assert "call_function" not in source
    for i, (a, b) in enumerate(zip(got, expected)):
        assert _relative_error(a, b) < 1e-10, i


def test_entry_point_declarations_name_each_forward_op():
    shims = fusedrnn.aoti.c_shims()
    assert {op.name() for op in shims} == {f"fusedrnn::{op}" for _, _, op in LAYERS}
    for op, declarations in shims.items():
        name = op.name().split("::")[1]
        assert [d.split("(")[0] for d in declarations] == [
            f"AOTITorchError aoti_torch_cpu_{name}", f"AOTITorchError aoti_torch_cuda_{name}"]


def test_cuda_calls_keep_the_proxy_executor_unless_switched_on(monkeypatch):
    """The CUDA entry points have not run on a GPU: a CUDA op's fake kernel takes fusedrnn's
    entries out of Inductor's config, and a CPU op's puts them back."""
    from torch._inductor import config as inductor_config

    def declared():
        return torch.ops.fusedrnn.gru_forward.default in (
            inductor_config.aot_inductor.custom_ops_to_c_shims)

    fusedrnn.aoti.offer_to_inductor(torch.device("cuda"))
    assert not declared()
    fusedrnn.aoti.offer_to_inductor(torch.device("meta"))  # a call on meta changes nothing
    assert not declared()
    fusedrnn.aoti.offer_to_inductor(torch.device("cpu"))
    assert declared()
    monkeypatch.setattr(fusedrnn.aoti, "_CUDA_ENABLED", True)
    fusedrnn.aoti.offer_to_inductor(torch.device("cuda"))
    assert declared()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_package_calls_the_cuda_entry_points(cpp_runner, tmp_path, monkeypatch):
    """Run by benchmarks/gpu_check.sh's tests step, with the switch on; served from Python,
    then from C++."""
    from torch._inductor import aoti_compile_and_package, aoti_load_package

    monkeypatch.setattr(fusedrnn.aoti, "_CUDA_ENABLED", True)

    ref, fused = _models()
    ref, fused = ref.cuda(), fused.cuda()
    x = _inputs(5, 3, seed=4).cuda()
    path = aoti_compile_and_package(torch.export.export(fused, (x,)),
                                    package_path=str(tmp_path / "every_op_cuda.pt2"))
    source = _wrapper_source(path)
    for _, _, op in LAYERS:
        assert source.count(f"aoti_torch_cuda_{op}(") == 2
    with torch.no_grad():
        got, expected = aoti_load_package(path)(x), ref(x)
    from_cpp = _serve_from_cpp(cpp_runner, path, x.cpu(), tmp_path, device="cuda")
    for i, (a, b, c) in enumerate(zip(got, expected, from_cpp, strict=True)):
        assert _relative_error(a, b) < 1e-10, i
        assert _relative_error(c, b.cpu()) < 1e-10, i
