"""What fusedrnn.bench reports: the environment of a run, the markdown table and the plot."""
import contextlib
import dataclasses
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from . import __version__, backends
from .bench_cases import BASELINES, FLOP_NOTE, Case

def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(device) -> dict:
    """Where the numbers come from: device, versions, threads, date (UTC)."""
    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "fusedrnn": __version__,
        # The CPU's instruction sets as each side uses them: fusedrnn's kernels, torch's ATen.
        "cpu_isa": backends.cpu_isa()[1],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "tf32": cuda and torch.backends.cudnn.allow_tf32,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_cpu_rows(path, rows):
    """A CPU benchmark script's rows as JSON at `path`, with the environment they ran in."""
    Path(path).write_text(json.dumps(dict(environment=environment(torch.device("cpu")),
                                          threads=torch.get_num_threads(), rows=rows),
                                     indent=1))


def run_cases(cases, measure, describe, argv):
    """A CPU benchmark script's main: argv is [SECONDS_PER_CASE [OUT.json]]; one row per case,
    measure(case, seconds), each printed as describe(row) as it comes, and the rows saved at
    OUT.json (save_cpu_rows) where given. -> the rows."""
    seconds = float(argv[0]) if argv else 6.0
    rows = []
    for case in cases:
        rows.append(measure(case, seconds))
        print(describe(rows[-1]), flush=True)
    if len(argv) > 1:
        save_cpu_rows(argv[1], rows)
    return rows


def format_ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.3f}"


def markdown_table(report: dict) -> str:
    """The report as markdown: where it was measured, how to read it, one row per case."""
    cuda = report["device"] == "cuda"
    unit, scale = ("TFLOP/s", 1e12) if cuda else ("GFLOP/s", 1e9)
    versions = f"torch {report['torch']}"
    if cuda:
        versions += f", CUDA {report['cuda']}, cuDNN {report['cudnn']}"
    peaks = ", ".join(f"{dtype} {flop_per_s / scale:.1f} {unit}"
                      for dtype, flop_per_s in report["peak_flop_per_s"].items())
    if report.get("onnxruntime"):
        versions += f", ONNX Runtime {report['onnxruntime']}"
    lines = [
        f"### fusedrnn {report['fusedrnn']} vs torch.nn on {report['device_name']} "
        f"({report['device']}, {report['threads']} threads)",
        "",
        f"- {versions}; {report['date']}; about {report['budget_s']:g} s per case"
        + (f"; TF32 {'on' if report['tf32'] else 'off'}" if cuda else "") + ".",
        f"- CPU instruction set: fusedrnn's kernels {report.get('cpu_isa', '?')}, torch's "
        f"{report.get('torch_cpu_capability', '?')}.",
        "- Medians over `reps` interleaved repetitions. speedup = baseline ms / fused ms "
        "(> 1: fused is faster); in brackets the first and third quartiles of the single "
        "rounds' speedups (both sides timed back to back), how far it moved within the run.",
        f"- FLOP count: {FLOP_NOTE}",
        f"- Peak: median of {report['peak_matmul_n']}^3 matmuls: {peaks}.",
        "- Packed cases: a PackedSequence of B sequences of mixed lengths (1 to T, unsorted); "
        "their FLOPs count the real tokens. Not covered: FlashRNN (no adapter).",
        "- Memory: malloc settled before each case (bench.settle_malloc), so that a case times "
        "the same alone or in a grid; calls that page-fault are listed under the table.",
        "",
    ]
    columns = ["cell", "L", "bidir", "T", "B", "I", "H", "dtype", "mode", "torch ms",
               "fused ms", "speedup"]
    if cuda:
        columns += ["no-cuDNN ms", "speedup vs no-cuDNN"]
    onnxruntime = any("onnxruntime" in result.get("median_ms", {}) for result in report["results"])
    if onnxruntime:
        columns += ["ONNX Runtime ms", "speedup vs ONNX Runtime"]
    columns += [f"fused {unit}", "% of peak", "reps"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    failures = []
    for result in report["results"]:
        steps = f"<={result['T']} packed" if result.get("packed") else result["T"]
        row = [result["cell"], result["layers"], "yes" if result["bidirectional"] else "no",
               steps, result["B"], result["I"], result["H"], result["dtype"],
               result["mode"]]
        if "error" in result:
            failures.append(f"- {Case(**_case_fields(result)).label()}: {result['error']}")
            row += ["failed"] * (len(columns) - len(row))
        else:
            median = result["median_ms"]
            row += [format_ms(median["torch"]), format_ms(median["fused"]),
                    speedup_text(result, "torch")]
            if cuda:
                row += [format_ms(median["torch_no_cudnn"]),
                        speedup_text(result, "torch_no_cudnn")]
            if onnxruntime:
                row += ([format_ms(median["onnxruntime"]), speedup_text(result, "onnxruntime")]
                        if "onnxruntime" in median else ["-", "-"])
            if "onnxruntime_error" in result:
                failures.append(f"- {Case(**_case_fields(result)).label()}: no ONNX Runtime "
                                f"time: {result['onnxruntime_error']}")
            row += [f"{result['fused_flop_per_s'] / scale:.2f}",
                    f"{result['fused_pct_of_peak']:.1f}", result["reps"]]
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    faulting = [f"- {Case(**_case_fields(result)).label()}: " + ", ".join(
        f"{name} {count:g}" for name, count in result["minor_faults_per_call"].items())
        for result in report["results"]
        if any(result.get("minor_faults_per_call", {}).values())]
    if faulting:
        lines += ["", "Minor page faults per call (median):", *faulting]
    if failures:
        lines += ["", "Failed cases and missing baselines:", *failures]
    return "\n".join(lines)


def speedup_text(result: dict, baseline: str) -> str:
    """'1.23x (1.15-1.31)': the speedup over `baseline`, and the quartiles of its single rounds
    where the result has them (reports written before they were kept have none)."""
    text = f"{result['speedup'][baseline]:.2f}x"
    quartiles = result.get("speedup_quartiles", {}).get(baseline)
    return text + (f" ({quartiles[0]:.2f}-{quartiles[1]:.2f})" if quartiles else "")


def _case_fields(result: dict) -> dict:
    return {field.name: result[field.name] for field in dataclasses.fields(Case)}


def save_plot(report: dict, path: Path) -> bool:
    """A bar chart of the speedups, if matplotlib is installed. -> whether it was written."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FormatStrFormatter
    except ImportError:
        return False
    results = [result for result in report["results"] if "error" not in result]
    if not results:
        return False
    baselines = list(dict.fromkeys(name for result in results for name in result["speedup"]))
    bar = 0.8 / len(baselines)
    figure, axes = plt.subplots(figsize=(10, 1.5 + 0.3 * len(results) * len(baselines)))
    for index, baseline in enumerate(baselines):
        rows = [row for row, result in enumerate(results) if baseline in result["speedup"]]
        speedups = [results[row]["speedup"][baseline] for row in rows]
        # The single rounds' quartiles as whiskers, where the results have them.
        quartiles = [results[row].get("speedup_quartiles", {}).get(baseline) for row in rows]
        whiskers = None if None in quartiles else [
            [max(0.0, s - q[0]) for s, q in zip(speedups, quartiles)],
            [max(0.0, q[1] - s) for s, q in zip(speedups, quartiles)]]
        axes.barh([row + index * bar for row in rows], speedups, height=bar, xerr=whiskers,
                  error_kw={"elinewidth": 0.8}, label=f"vs {BASELINES[baseline]}")
    axes.set_yticks([row + bar * (len(baselines) - 1) / 2 for row in range(len(results))],
                    [Case(**_case_fields(result)).label() for result in results], fontsize=7)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(FormatStrFormatter("%gx"))
    axes.xaxis.set_minor_formatter(FormatStrFormatter("%gx"))
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("speedup of fusedrnn (baseline ms / fused ms; > 1 is faster)")
    axes.set_title(f"fusedrnn on {report['device_name']}, torch {report['torch']}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True
