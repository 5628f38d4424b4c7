"""fusedrnn against torch.nn, case by case: `python -m fusedrnn.bench` (what `make bench` runs).

Each case builds a torch.nn module and a fusedrnn module with identical weights, draws one set
of random inputs and initial states (fixed seed, never zero), and times the two modules
interleaved in one process (torch, fused, torch, fused, ...), the same number of times each,
so that a noisy machine slows both alike. The table reports medians and their ratio, and
beside it the middle half of the single rounds' ratios: how far the ratio moved within the run.

Modes: `inference` is a forward under torch.no_grad(); `training` is a forward and the
backward of out.float().sum() + h_n.float().sum() (input, initial states and weights all
need gradients; gradients are dropped, untimed, before every step).

Timing: warm-up rounds first (WARMUP_ROUNDS); then on CUDA, CUDA events around each call
followed by a synchronize, on CPU time.perf_counter. Rounds repeat until the case has taken
about --budget seconds, and at least MIN_REPS times. Before the first round, settle_malloc
puts glibc's allocator where a long-running process has it, so that a case times the same
whether it runs alone or after others; the report keeps each side's page faults per call.

Baselines: torch.nn as it runs by default (cuDNN on CUDA, oneDNN for the LSTM on CPU); on
CUDA also torch.nn with cuDNN disabled, whose native path launches a few kernels per time step
as fusedrnn does today; on the CPU, for float32 inference on padded batches, also ONNX Runtime
running the torch.nn module as torch.onnx.export exports it (OnnxRuntimeStep: same threads,
spinning off, outputs checked against torch.nn's), where onnxruntime and onnx are installed.
float32 means IEEE float32 on both sides: TF32 is off for cuBLAS and cuDNN (cuDNN would use it
for torch's RNNs by default) unless --tf32 turns it on for both.
torch.nn keeps bfloat16 weights out of cuDNN's flat buffer (flatten_parameters skips that
dtype), so its bfloat16 cuDNN calls copy the weights every time, with a warning; that is what
its users get, and the baseline keeps it.
FlashRNN is not compared: its API takes a precomputed input projection in its own
[B, T, gates, heads, D] layout and gate order, so a like-for-like adapter is a task of its own.
Packed cases feed both modules the same PackedSequence of mixed lengths.

Letters: T time steps, B batch, I input size, H hidden size, L layers, D directions.
"""
import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

try:
    import resource
except ImportError:  # Windows
    resource = None

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from . import GRU, LSTM, RNN, WITH_CUDA, info
from .bench_cases import (CELLS, DEFAULT_BUDGET_S, DTYPES, FLOP_NOTE, GRIDS, MAX_REPS,  # noqa: F401
                          MIN_REPS, MODES, PEAK_MATMUL_N, PEAK_MATMUL_REPS, QUICK_BUDGET_S, SEED,
                          WARMUP_ROUNDS, Case, case_flops)
from .bench_report import environment, format_ms, markdown_table, save_plot, speedup_text

def build_modules(case: Case, device):
    """-> (torch.nn module, fusedrnn module) with the same weights (torch.nn's init, SEED)."""
    reference_class, fused_class = {"lstm": (nn.LSTM, LSTM), "gru": (nn.GRU, GRU)}.get(
        case.cell, (nn.RNN, RNN))
    options = dict(num_layers=case.layers, bidirectional=case.bidirectional, device=device,
                   dtype=DTYPES[case.dtype])
    if case.cell.startswith("rnn_"):
        options["nonlinearity"] = case.cell.removeprefix("rnn_")
    torch.manual_seed(SEED)
    reference = reference_class(case.I, case.H, **options)
    fused = fused_class(case.I, case.H, **options)
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def make_inputs(case: Case, device):
    """-> (x [T, B, I], or a PackedSequence of it, hx): hx is h0, or (h0, c0) for the LSTM, each
    [L*D, B, H].

    Random initial states, not zeros, so that no code path can skip work on a zero state.
    They need gradients in training mode, as the input does.
    """
    generator = torch.Generator().manual_seed(SEED + 1)

    def draw(*shape):
        drawn = torch.randn(*shape, generator=generator)
        return drawn.to(device, DTYPES[case.dtype]).requires_grad_(case.mode == "training")

    states = case.layers * (2 if case.bidirectional else 1)
    x = draw(case.T, case.B, case.I)
    if case.packed:  # packed data as the leaf that takes the input gradient
        data, *packing = pack_padded_sequence(x.detach(), torch.tensor(case.lengths()),
                                              enforce_sorted=False)
        x = PackedSequence(data.requires_grad_(case.mode == "training"), *packing)
    if case.cell == "lstm":
        return x, (draw(states, case.B, case.H), draw(states, case.B, case.H))
    return x, draw(states, case.B, case.H)


class Step:
    """One timed unit of work of one module on fixed inputs; reset() before each (untimed)."""

    def __init__(self, module, inputs, mode, cudnn=True):
        self.module, self.mode = module, mode
        self.x, self.hx = inputs
        states = self.hx if isinstance(self.hx, tuple) else (self.hx,)
        self._leaves = [self.x.data if isinstance(self.x, PackedSequence) else self.x, *states]
        self._context = (contextlib.nullcontext if cudnn
                         else lambda: torch.backends.cudnn.flags(enabled=False))

    def reset(self):
        """Drops the gradients of the last step, so that no step pays for accumulating."""
        self.module.zero_grad(set_to_none=True)
        for leaf in self._leaves:
            leaf.grad = None

    def __call__(self):
        with self._context():
            if self.mode == "inference":
                with torch.no_grad():
                    self.module(self.x, self.hx)
                return
            output, h_n = self.module(self.x, self.hx)
            if isinstance(output, PackedSequence):
                output = output.data
            if isinstance(h_n, tuple):  # LSTM: (h_n, c_n)
                h_n = h_n[0]
            (output.float().sum() + h_n.float().sum()).backward()


class Patched:
    """A step run with attributes of `target` replaced (`values`, by name) for the step's length
    and put back after it: a benchmark's variant of fusedrnn with a direct call declined or a
    check swapped, timed beside the unpatched step in the same rounds."""

    def __init__(self, step, target, **values):
        self.step, self.target, self.values = step, target, values

    def reset(self):
        self.step.reset()

    def __call__(self):
        saved = {name: getattr(self.target, name) for name in self.values}
        for name, value in self.values.items():
            setattr(self.target, name, value)
        try:
            self.step()
        finally:
            for name, value in saved.items():
                setattr(self.target, name, value)


class OnnxRuntimeStep:
    """The torch.nn module exported to ONNX (torch.onnx.export's TorchScript exporter, which writes
    ONNX's own LSTM/GRU/RNN operators; torch.export's exporter unrolls them), run by ONNX
    Runtime's CPU provider: as many intra-op threads as torch uses, one inter-op thread,
    sequential execution, spinning off (a spinning pool would steal the cores from the other
    side of the interleaved timing). Inputs are converted to numpy once,
    untimed, as a server holding numpy arrays would feed them. Raises if ONNX Runtime's outputs
    differ from torch.nn's (relative error above 1e-4)."""

    def __init__(self, reference, inputs):
        import io

        import onnxruntime

        x, hx = inputs
        states = hx if isinstance(hx, tuple) else (hx,)
        names = ["x", "h0", "c0"][:1 + len(states)]
        exported = io.BytesIO()
        with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notes
            warnings.simplefilter("ignore")
            torch.onnx.export(reference, (x, hx), exported, input_names=names, dynamo=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(exported.getvalue(), options,
                                                    providers=["CPUExecutionProvider"])
        self.feeds = {name: tensor.detach().numpy() for name, tensor in zip(names, (x, *states))}
        self.check(reference, inputs)

    def check(self, reference, inputs):
        """Raises unless the session's output is torch.nn's to a relative error of 1e-4."""
        with torch.no_grad():
            output = reference(*inputs)[0]
        theirs = torch.from_numpy(self()).to(output.dtype)
        error = float((theirs - output).norm() / output.norm())
        if not error <= 1e-4:
            raise RuntimeError(f"ONNX Runtime's output differs from torch.nn's by {error:.1e}")

    def reset(self):
        """Nothing to drop: inference only."""

    def __call__(self):
        return self.session.run(None, self.feeds)[0]


def onnxruntime_version():
    """ONNX Runtime's version, or None where it (or the onnx package the export needs) is
    missing."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def runs_on_onnxruntime(case: Case, device) -> bool:
    """ONNX Runtime's column: CPU float32 inference on padded batches (a PackedSequence does not
    export as one ONNX LSTM)."""
    return (device.type == "cpu" and case.mode == "inference" and case.dtype == "float32"
            and not case.packed)


class Timer:
    """Milliseconds of one call: CUDA events and a synchronize on CUDA, perf_counter on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        torch.cuda.synchronize()  # start on an idle GPU
        self._start.record()
        fn()
        self._end.record()
        torch.cuda.synchronize()
        return self._start.elapsed_time(self._end)


# glibc's malloc serves a block of 128 KiB or more by mmap and returns it to the system when it is
# freed, until a process frees such a block: then blocks up to that size (at most 32 MiB) stay in
# the heap. A process that has run for a while has freed one; one that has not page-faults in
# every large block it allocates, on every call (torch.nn's bidirectional LSTM at T=50 B=16
# H=128 in training: 4,447 faults and a quarter of its time a step, fusedrnn's none, whose
# buffers are pooled). Freeing a block just under 32 MiB once takes every case to the first
# state, whatever ran before it.
SETTLE_BYTES = (32 << 20) - (64 << 10)


def settle_malloc():
    """Allocates and frees one SETTLE_BYTES block, untouched: see SETTLE_BYTES."""
    torch.empty(SETTLE_BYTES, dtype=torch.uint8)  # freed as soon as it is made


def minor_faults() -> int:
    """The process's minor page faults so far (0 where the resource module is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def measure(steps, timer, budget_s, warmup_rounds, faults=None, shuffle=None):
    """Times the steps interleaved, round after round, until budget_s has passed (warm-up
    included) and at least MIN_REPS rounds are done, malloc settled first (settle_malloc).

    steps: {name: Step}. -> {name: [ms per repetition]}, the same count for each name. With a
    dict `faults`, faults[name] gets each timed repetition's minor page faults (the whole
    process's: any thread's). With `shuffle` (a random.Random), each round runs the steps in an
    order of its own, so that no step always follows the same one (a step run right after a
    heavy one can read slower; with two steps each always follows the other).
    """
    def timed(step, faulted=None):
        step.reset()
        before = minor_faults()
        ms = timer(step)
        if faulted is not None:
            faulted.append(minor_faults() - before)
        return ms

    settle_malloc()
    began = time.perf_counter()
    for _ in range(warmup_rounds):
        for step in steps.values():
            timed(step)
    samples = {name: [] for name in steps}
    if faults is not None:
        faults.update({name: [] for name in steps})
    for reps in range(MAX_REPS):
        if reps >= MIN_REPS and time.perf_counter() - began >= budget_s:
            break
        names = list(steps)
        if shuffle is not None:
            shuffle.shuffle(names)
        for name in names:
            samples[name].append(timed(steps[name], None if faults is None else faults[name]))
    return samples


def measure_peak_flops(device, dtype, timer) -> float:
    """FLOP/s of a large square matmul in dtype (median of several): the '% of peak' yardstick."""
    n = PEAK_MATMUL_N[device.type]
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        torch.mm(a, b)
    ms = statistics.median(timer(lambda: torch.mm(a, b)) for _ in range(PEAK_MATMUL_REPS))
    return 2 * n ** 3 / (ms * 1e-3)


def round_speedup_quartiles(baseline_ms, fused_ms) -> list:
    """[first, third] quartile of the speedups of single rounds (baseline / fused, the two timed
    back to back in the same round): how far the ratio moved within the run, which the ratio of
    the medians does not show."""
    return statistics.quantiles([b / f for b, f in zip(baseline_ms, fused_ms, strict=True)],
                                n=4)[::2]


def run_case(case: Case, device, timer, budget_s, peak_flop_per_s, onnxruntime=False) -> dict:
    """Builds, times and summarises one case; with `onnxruntime`, ONNX Runtime too where
    runs_on_onnxruntime. -> a JSON-ready result."""
    reference, fused = build_modules(case, device)
    inputs = make_inputs(case, device)
    steps = {"torch": Step(reference, inputs, case.mode), "fused": Step(fused, inputs, case.mode)}
    if device.type == "cuda":
        steps["torch_no_cudnn"] = Step(reference, inputs, case.mode, cudnn=False)
    notes = {}
    if onnxruntime and runs_on_onnxruntime(case, device):
        try:
            steps["onnxruntime"] = OnnxRuntimeStep(reference, inputs)
        except Exception as error:  # reported beside the row; torch.nn and fused still run
            notes["onnxruntime_error"] = f"{type(error).__name__}: {error}"
    faults = {}
    samples = measure(steps, timer, budget_s, WARMUP_ROUNDS[device.type], faults)
    median = {name: statistics.median(ms) for name, ms in samples.items()}
    flop = case_flops(case)
    fused_flop_per_s = flop / (median["fused"] * 1e-3)
    return {
        **dataclasses.asdict(case),
        "flop": flop,
        "reps": len(samples["fused"]),
        "median_ms": median,
        "quartiles_ms": {name: statistics.quantiles(ms, n=4)[::2] for name, ms in samples.items()},
        "speedup": {name: median[name] / median["fused"] for name in median if name != "fused"},
        "speedup_quartiles": {name: round_speedup_quartiles(ms, samples["fused"])
                              for name, ms in samples.items() if name != "fused"},
        "fused_flop_per_s": fused_flop_per_s,
        "fused_pct_of_peak": 100 * fused_flop_per_s / peak_flop_per_s,
        "minor_faults_per_call": {name: statistics.median(count)
                                  for name, count in faults.items()},
        **notes,
    }


def default_device() -> torch.device:
    """CUDA when torch sees a GPU and fusedrnn was built with CUDA, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() and WITH_CUDA else "cpu")


def set_tf32(enabled: bool):
    """TF32 for float32 GEMMs in both cuBLAS (fusedrnn's GEMMs) and cuDNN (torch.nn's RNNs)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def _comma_list(choices):
    def parse(text):
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a comma-separated list of {', '.join(choices)}")
        return items
    return parse


_SHAPE_KEYS = {"T": "T", "B": "B", "I": "I", "H": "H", "L": "layers", "bidir": "bidirectional"}


def parse_shape(text: str) -> dict:
    """'T=100,B=64,I=512,H=512,L=1,bidir=0' -> Case fields; I defaults to H, L to 1, bidir to 0."""
    fields = {}
    for item in text.split(","):
        key, _, value = (part.strip() for part in item.partition("="))
        if key not in _SHAPE_KEYS or not value.isdigit():
            raise argparse.ArgumentTypeError(
                f"{item!r} in {text!r}: expected KEY=INTEGER, KEY one of {', '.join(_SHAPE_KEYS)}")
        fields[_SHAPE_KEYS[key]] = int(value)
    missing = [key for key in ("T", "B", "H") if key not in fields]
    if missing:
        raise argparse.ArgumentTypeError(f"{text!r}: missing {', '.join(missing)}")
    fields.setdefault("I", fields["H"])
    fields["bidirectional"] = bool(fields.get("bidirectional", 0))
    return fields


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m fusedrnn.bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
            "With a grid, --cells/--dtypes/--modes keep only the matching cases. With --shapes, "
            "every shape runs for each chosen cell, dtype and mode (defaults: all cells, "
            "float32, both modes)."))
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device().type,
                        help="default: cuda if torch sees a GPU and fusedrnn has CUDA kernels")
    parser.add_argument("--grid", default="default", choices=("default", *GRIDS),
                        help="named set of cases; default: 'gpu' on CUDA, 'cpu' otherwise")
    parser.add_argument("--shapes", nargs="+", type=parse_shape, metavar="SHAPE",
                        help="custom shapes instead of a grid, "
                        "e.g. T=100,B=64,I=512,H=512,L=1,bidir=0")
    parser.add_argument("--cells", type=_comma_list(CELLS))
    parser.add_argument("--dtypes", type=_comma_list(tuple(DTYPES)))
    parser.add_argument("--modes", type=_comma_list(MODES))
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help=f"time per case; default {QUICK_BUDGET_S:g} for the quick grid, "
                        f"else {DEFAULT_BUDGET_S['cuda']:g} on CUDA, "
                        f"{DEFAULT_BUDGET_S['cpu']:g} on CPU")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 for float32 in cuBLAS and cuDNN (CUDA only; default off)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for every side (torch.set_num_threads; ONNX Runtime "
                        "takes as many), as a server of one-thread workers sets them; default: "
                        "torch's")
    parser.add_argument("--no-onnxruntime", dest="onnxruntime", action="store_false",
                        help="CPU: leave out the ONNX Runtime column (default: on where "
                        "onnxruntime and onnx are installed)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"),
                        help="folder for bench.json and speedups.png (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not (torch.cuda.is_available() and WITH_CUDA):
        parser.error("--device cuda: torch sees no CUDA device, or fusedrnn was built without "
                     "CUDA")
    if args.budget is not None and args.budget <= 0:
        parser.error("--budget must be positive")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def select_cases(args, device) -> list:
    """The cases to run: --shapes expanded, or the grid filtered by --cells/--dtypes/--modes."""
    if args.shapes:
        return [Case(cell, dtype=dtype, mode=mode, **shape) for shape in args.shapes
                for cell in args.cells or CELLS for dtype in args.dtypes or ("float32",)
                for mode in args.modes or MODES]
    grid = args.grid if args.grid != "default" else "gpu" if device.type == "cuda" else "cpu"
    return [case for case in GRIDS[grid]
            if (not args.cells or case.cell in args.cells)
            and (not args.dtypes or case.dtype in args.dtypes)
            and (not args.modes or case.mode in args.modes)]


def _progress(index, total, case, result, seconds):
    filled = round(20 * index / total)
    line = (f"[{index:>{len(str(total))}}/{total}] [{'#' * filled}{'.' * (20 - filled)}] "
            f"{case.label()}: ")
    if "error" in result:
        line += f"FAILED: {result['error']}"
    else:
        median = result["median_ms"]
        line += (f"torch {format_ms(median['torch'])} ms, fused {format_ms(median['fused'])} ms, "
                 f"{speedup_text(result, 'torch')}")
        if "onnxruntime" in median:
            line += (f"; ONNX Runtime {format_ms(median['onnxruntime'])} ms, "
                     f"{speedup_text(result, 'onnxruntime')}")
        line += f" ({result['reps']} reps, {seconds:.1f} s)"
    print(line, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    """Runs the cases; progress on stderr, the markdown table on stdout. -> 1 if a case failed.
    With --threads, torch's thread count is restored on return."""
    args = _parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> int:
    device = torch.device(args.device)
    cases = select_cases(args, device)
    if not cases:
        print("fusedrnn.bench: no case matches --cells/--dtypes/--modes", file=sys.stderr)
        return 2
    budget_s = args.budget or (QUICK_BUDGET_S if args.grid == "quick" and not args.shapes
                               else DEFAULT_BUDGET_S[device.type])
    set_tf32(args.tf32)
    timer = Timer(device)
    ort_version = onnxruntime_version() if args.onnxruntime and device.type == "cpu" else None
    onnxruntime = ort_version is not None
    report = {**environment(device), "budget_s": budget_s, "flop_count": FLOP_NOTE,
              "peak_matmul_n": PEAK_MATMUL_N[device.type], "onnxruntime": ort_version}
    print("\n".join(info.lines()[:5]) + "\n", flush=True)  # what runs here, above the table
    print(f"fusedrnn.bench: {len(cases)} cases on {report['device_name']} ({device.type}), "
          f"torch {report['torch']}, about {budget_s:g} s each", file=sys.stderr, flush=True)
    report["peak_flop_per_s"] = {dtype: measure_peak_flops(device, DTYPES[dtype], timer)
                                 for dtype in dict.fromkeys(case.dtype for case in cases)}
    results = []
    for index, case in enumerate(cases, 1):
        started = time.perf_counter()
        try:
            result = run_case(case, device, timer, budget_s, report["peak_flop_per_s"][case.dtype],
                              onnxruntime)
        except Exception as error:  # one unsupported case must not cost the rest of the grid
            result = {**dataclasses.asdict(case), "error": f"{type(error).__name__}: {error}"}
        results.append(result)
        _progress(index, len(cases), case, result, time.perf_counter() - started)
    report["results"] = results

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    plotted = save_plot(report, args.out / "speedups.png")
    print(f"wrote {args.out / 'bench.json'}"
          + (f" and {args.out / 'speedups.png'}" if plotted else " (no plot: matplotlib is not "
             "installed)"), file=sys.stderr)
    print(markdown_table(report))
    return 1 if any("error" in result for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
