"""fusedrnn.bench end to end on a tiny shape: the report's columns, ONNX Runtime's included."""
import importlib.util
import json
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from fusedrnn import bench
from fusedrnn.bench_report import run_cases, save_cpu_rows


def test_bench_reports_every_baseline(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    code = bench.main(["--device", "cpu", "--shapes", "T=3,B=2,I=5,H=4", "--cells", "lstm,gru",
                       "--budget", "0.05", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["cpu_isa"] and report["onnxruntime"]
    for result in report["results"]:
        expected = {"torch", "onnxruntime"} if result["mode"] == "inference" else {"torch"}
        assert set(result["speedup"]) == expected, result
        assert set(result["speedup_quartiles"]) == expected, result
        assert all(q1 <= q3 for q1, q3 in result["speedup_quartiles"].values()), result
        assert all(ms > 0 for ms in result["median_ms"].values())
        assert set(result["minor_faults_per_call"]) == set(result["median_ms"]), result
        assert all(count >= 0 for count in result["minor_faults_per_call"].values())
    table = capsys.readouterr().out
    assert "speedup vs ONNX Runtime" in table and "CPU instruction set" in table
    first = report["results"][0]
    assert bench.speedup_text(first, "torch") in table


def test_speedup_quartiles_pair_each_round():
    # Rounds alternate between a fast and a slow machine; each round's ratio is 1/10 or 10,
    # which quartiles of the two sides' times taken apart would call 1.
    baseline, fused = [1.0, 10.0] * 4, [10.0, 1.0] * 4
    assert bench.round_speedup_quartiles(baseline, fused) == [0.1, 10.0]
    assert bench.round_speedup_quartiles([2.0] * 5, [1.0] * 5) == [2.0, 2.0]
    with pytest.raises(ValueError):
        bench.round_speedup_quartiles([1.0, 2.0, 3.0], [1.0, 2.0])


def test_speedup_text_reads_reports_without_quartiles():
    result = {"speedup": {"torch": 1.234}, "speedup_quartiles": {"torch": [1.1, 1.3]}}
    assert bench.speedup_text(result, "torch") == "1.23x (1.10-1.30)"
    assert bench.speedup_text({"speedup": {"torch": 1.234}}, "torch") == "1.23x"


def test_bench_threads_option_sets_and_restores_torch_threads(tmp_path):
    threads = torch.get_num_threads()
    code = bench.main(["--device", "cpu", "--shapes", "T=2,B=1,I=3,H=4", "--cells", "gru",
                       "--modes", "inference", "--budget", "0.02", "--no-onnxruntime",
                       "--threads", "1", "--out", str(tmp_path)])
    assert code == 0
    assert json.loads((tmp_path / "bench.json").read_text())["threads"] == 1
    assert torch.get_num_threads() == threads
    with pytest.raises(SystemExit):
        bench.main(["--threads", "0"])


def test_settled_malloc_spares_a_training_step_its_page_faults():
    """settle_malloc spares the steady state of a step that allocates many blocks over 128 KiB
    the page faults it takes in a process that has freed no such block (torch.nn's bidirectional
    LSTM in training: thousands a step, none or a few dozen settled). Each in a fresh process,
    whose malloc no test before has settled."""
    script = """
import statistics, sys, torch
from fusedrnn import bench
if sys.argv[1] == "settle":
    bench.settle_malloc()
torch.manual_seed(0)
lstm = torch.nn.LSTM(128, 128, 2, bidirectional=True)
x = torch.randn(50, 16, 128, requires_grad=True)
faults = []
for _ in range(12):
    before = bench.minor_faults()
    out, (h, c) = lstm(x)
    (out.sum() + h.sum()).backward()
    faults.append(bench.minor_faults() - before)
print(statistics.median(faults[4:]))
"""
    settled, unsettled = (
        float(subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parent.parent).stdout)
        for mode in ("settle", "none"))
    assert settled * 10 <= unsettled, (settled, unsettled)


def test_onnxruntime_step_matches_torch_nn_or_raises():
    pytest.importorskip("onnxruntime")
    case = bench.Case("lstm", T=4, B=3, I=5, H=6)
    reference, _ = bench.build_modules(case, torch.device("cpu"))
    inputs = bench.make_inputs(case, torch.device("cpu"))
    step = bench.OnnxRuntimeStep(reference, inputs)
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(step()), reference(*inputs)[0])
    with torch.no_grad():  # the module changes; the exported model no longer matches it
        reference.weight_hh_l0.add_(1)
    with pytest.raises(RuntimeError, match="differs from torch.nn"):
        step.check(reference, inputs)


def test_against_int8_compares_the_three_layers():
    """benchmarks/against_int8.py's case, tiny: torch's int8 module is made from the reverted
    fused module, and fusedrnn's float32 output stays at float32 rounding."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "against_int8.py"
    spec = importlib.util.spec_from_file_location("against_int8", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notes
        row = script.measure("lstm", 3, 2, 5, 8, seconds=0.0)
    assert set(row["ms"]) == {"torch_f32", "torch_int8", "fused_f32"}
    assert all(ms > 0 for ms in row["ms"].values())
    errors = row["rel_err_vs_float64"]
    assert errors["fused_f32"] < 1e-5 and errors["torch_f32"] < 1e-5
    assert 1e-5 < errors["torch_int8"] < 0.2  # quantized, but not garbage


def _script(name):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize("cell", ["LSTMCell", "GRU"])
def test_cell_loops_times_the_node_and_the_function(cell):
    """benchmarks/cell_loops.py's case, tiny: training times torch.nn, the C++ node, the
    Function and (a module) the node from the Python layer loop, and leaves the direct calls
    switched back on."""
    from fusedrnn._extension import _C
    nodes = (_C.direct_cell_step, _C.direct_layer_node, _C.direct_module_forward)
    script = _script("cell_loops")
    row = script.measure(cell, 3, 2, 4, "training", seconds=0.0)
    variants = {"torch", "fused", "fused_function"} | (set() if "Cell" in cell else {"fused_loop"})
    assert set(row["ms"]) == variants
    assert all(ms > 0 for ms in row["ms"].values())
    assert len(row["torch_over_fused_function_quartiles"]) == 2
    assert (_C.direct_cell_step, _C.direct_layer_node, _C.direct_module_forward) == nodes
    assert set(script.measure(cell, 3, 2, 4, "inference", seconds=0.0)["ms"]) == {"torch",
                                                                                 "fused"}
    assert script.describe(row).startswith(f"{cell} T=3 B=2 H=4 training: torch ")


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "pair"])
@pytest.mark.parametrize("step, packed, proj_size", [("training", False, 0), ("penalty", False, 0),
                                                     ("training", True, 0),
                                                     ("training", False, 2)],
                         ids=["training", "penalty", "training-packed", "training-projected"])
def test_layer_node_times_the_node_and_the_function(step, packed, proj_size, bidirectional,
                                                    tmp_path):
    """benchmarks/layer_node.py's case, tiny: torch.nn, the module's one C++ call, its Python
    layer loop and the Function, the direct calls switched back on afterwards; the rows saved
    with their environment."""
    from fusedrnn._extension import _C
    names = ("direct_layer_node", "direct_layer_pair_node", "direct_module_forward",
             "direct_packed_forward")
    calls = [getattr(_C, name) for name in names]
    script = _script("layer_node")
    row = script.measure("lstm" if proj_size else "gru", 1, 4, 2, 3, step, seconds=0.0,
                         bidirectional=bidirectional, packed=packed, proj_size=proj_size)
    assert set(row["ms"]) == {"torch", "fused", "fused_function", "fused_loop"}
    assert all(ms > 0 for ms in row["ms"].values())
    assert len(row["function_over_node_quartiles"]) == len(row["loop_over_call_quartiles"]) == 2
    assert [getattr(_C, name) for name in names] == calls
    assert "Python loop / one call" in script.describe(row)
    save_cpu_rows(tmp_path / "rows.json", [row])
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert saved["rows"] == [row] and saved["environment"]["cpu_isa"]


def test_panel_sharing_times_shared_and_own_panels():
    """benchmarks/panel_sharing.py's case, tiny: torch.nn, fusedrnn with the team's panels
    shared and not."""
    script = _script("panel_sharing")
    row = script.measure("lstm", 4, 2, 3, "training", seconds=0.0)
    assert set(row["ms"]) == {"torch", "shared", "own"}
    assert all(ms > 0 for ms in row["ms"].values())
    assert len(row["own_over_shared_quartiles"]) == 2
    assert row["panels_taken_over_per_call"] >= 0
    assert "panels taken over a call" in script.describe(row)


def test_packed_inference_times_the_direct_and_the_general_path():
    """benchmarks/packed_inference.py's case, tiny: torch.nn, fusedrnn's direct packed call and
    its general path, the direct call switched back on afterwards."""
    from fusedrnn import modules
    direct = modules._C.direct_packed_forward
    script = _script("packed_inference")
    row = script.measure("lstm", 1, 4, 2, 3, True, seconds=0.0)
    assert set(row["ms"]) == {"torch", "direct", "general"}
    assert all(ms > 0 for ms in row["ms"].values())
    assert len(row["general_over_direct_quartiles"]) == 2
    assert modules._C.direct_packed_forward is direct
    assert "general / direct" in script.describe(row)


def test_call_checks_times_cut_and_all_checks():
    """benchmarks/call_checks.py's cases, tiny: torch.nn, the module's or cell's call with the
    checks cut and with all of them, the cut ones switched back afterwards."""
    from fusedrnn import modules
    cut = modules.direct_call_may_apply
    script = _script("call_checks")
    for cell in ("gru", "LSTMCell"):
        row = script.measure(cell, 1, 3, 1, seconds=0.0, onnxruntime=False)
        assert set(row["ms"]) == {"torch", "fused", "fused_all_checks"}
        assert all(ms > 0 for ms in row["ms"].values())
        assert len(row["all_over_cut_quartiles"]) == 2
        assert "all / cut" in script.describe(row)
    assert modules.direct_call_may_apply is cut


def test_cpp_serving_times_both_packages_from_cpp(tmp_path):
    """benchmarks/cpp_serving.py's case, tiny: torch.nn's and fusedrnn's packages, served by
    its C++ program (which checks them against each other), each timed."""
    script = _script("cpp_serving")
    row = script.measure("lstm", 2, 4, 3, 0.0, tmp_path, script.build_server(tmp_path))
    assert set(row["us"]) == {"torch_package", "fused_package"}
    assert all(us > 0 for us in row["us"].values())
    assert row["rounds"] >= 3 and len(row["speedup_quartiles"]) == 2
    assert "served from C++" in script.describe(row)


def test_run_cases_prints_each_row_and_saves_them(tmp_path, capsys):
    """The benchmark scripts' main: a row per case, printed as it comes, saved where asked."""
    rows = run_cases([1, 2], lambda case, seconds: {"case": case, "seconds": seconds},
                     lambda row: f"case {row['case']}", ["0.5", str(tmp_path / "rows.json")])
    assert rows == [{"case": 1, "seconds": 0.5}, {"case": 2, "seconds": 0.5}]
    assert capsys.readouterr().out == "case 1\ncase 2\n"
    assert json.loads((tmp_path / "rows.json").read_text())["rows"] == rows
    assert run_cases([3], lambda case, seconds: {"seconds": seconds}, str, []) == [
        {"seconds": 6.0}]


def test_patched_step_replaces_attributes_for_its_length_only():
    """bench.Patched: the step sees the replaced attributes; they are put back after it, also
    when it raises; reset reaches the step."""
    import types
    target = types.SimpleNamespace(a=1, b=2)
    seen, resets = [], []

    class Step:
        def reset(self):
            resets.append(True)

        def __call__(self):
            seen.append((target.a, target.b))
            if len(seen) == 2:
                raise ValueError("the step failed")

    patched = bench.Patched(Step(), target, a=10, b=20)
    patched.reset()
    patched()
    assert seen == [(10, 20)] and (target.a, target.b) == (1, 2) and resets == [True]
    with pytest.raises(ValueError, match="the step failed"):
        patched()
    assert (target.a, target.b) == (1, 2)


def test_measure_in_shuffled_order_times_every_step_each_round():
    """With `shuffle`, each round runs every step once, in orders that differ between rounds."""
    order = []
    steps = {name: _Called(lambda name=name: order.append(name)) for name in "abc"}
    samples = bench.measure(steps, lambda step: step() or 1.0, 0.0, 0,
                            shuffle=random.Random(0))
    rounds = [order[i:i + 3] for i in range(0, len(order), 3)]
    assert len(rounds) >= bench.MIN_REPS
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1
    assert all(len(ms) == len(rounds) for ms in samples.values())


class _Called:
    """A step for bench.measure around a plain function."""

    def __init__(self, function):
        self.function = function

    def reset(self):
        pass

    def __call__(self):
        self.function()
