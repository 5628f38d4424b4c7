#!/usr/bin/env bash
# Where the persistent kernel's step goes (issue 17). Its first GPU run measured 11.3 us a step
# for the float16 LSTM at B=16 H=768 where the model said 4.4, and 3.5 us for an LSTM with
# nothing to compute where it said 1.5 (benchmarks/NOTES.md, GPU 2026-11-30); no counters were
# read then. For the device machine (Firecracker runtime: ncu reads counters there), from the
# repo root:
#
#   bash benchmarks/persistent_profile.sh
#
# Builds as persistent_check.sh does, then Nsight Compute, clocks left alone, on the third call's
# loop_kernel launch (T=64) of three cases of persistent_timing.py: 0, the float16 LSTM at B=16
# H=768; 6, the float32 LSTM at B=1 H=512; 11, the LSTM at H=8 (the step's fixed chain alone).
# Each gives its stall reasons, memory traffic, occupancy and launch figures (profile_<i>.txt);
# case 0 also the SASS lines with the most stall samples (hot_sass_0.txt). About 4 minutes;
# every phase under its own timeout. Files back: build.log, env.txt, three profile_<i>.txt,
# hot_sass_0.txt. Written without a GPU: never run yet.
set -u -o pipefail
OUT="$(realpath -m "${OUT:-./gpu_out}")"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
REPORTS="$(mktemp -d)"  # the .ncu-rep files stay behind: only their text comes back

echo "== build"
[[ -x /usr/bin/g++ ]] && export CXX=/usr/bin/g++ CC=/usr/bin/gcc  # see gpu_check.sh
MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 \
    || { tail -n 20 "$OUT/build.log"; exit 1; }
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
    ncu --version
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

SECTIONS=(--section LaunchStats --section Occupancy --section SpeedOfLight
          --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis
          --section SourceCounters)
for index in 0 6 11; do
    echo "== profile case $index"
    timeout 120 ncu --clock-control none --target-processes all \
        --kernel-name regex:loop_kernel --launch-skip 2 --launch-count 1 "${SECTIONS[@]}" \
        -o "$REPORTS/case_$index" python3 benchmarks/persistent_profile_case.py "$index" \
        > "$OUT/profile_$index.txt" 2>&1
    echo "ncu exit $?" >> "$OUT/profile_$index.txt"
    if [[ -f "$REPORTS/case_$index.ncu-rep" ]]; then
        timeout 60 ncu --import "$REPORTS/case_$index.ncu-rep" --page details \
            >> "$OUT/profile_$index.txt" 2>&1
    fi
    grep -E "Duration|Warp Cycles Per Issued|Stall|L2 Hit|Achieved Occupancy|^ncu exit" \
        "$OUT/profile_$index.txt" | head -n 30
done

echo "== hot SASS, case 0"
if [[ -f "$REPORTS/case_0.ncu-rep" ]]; then
    timeout 60 ncu --import "$REPORTS/case_0.ncu-rep" --page source --csv --print-source sass \
        > "$REPORTS/source_0.csv" 2> "$OUT/hot_sass_0.txt"
    # The 80 lines with the most stall samples (the column's name varies between versions: the
    # first whose name mentions sampling), in program order beside their sample counts.
    python3 - "$REPORTS/source_0.csv" >> "$OUT/hot_sass_0.txt" 2>&1 <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
header = next((i for i, r in enumerate(rows) if any("Sampl" in c for c in r)), None)
if header is None:
    print("no stall-sampling column; first 120 lines as they came:")
    print("\n".join(",".join(r) for r in rows[:120]))
    sys.exit()
names = rows[header]
column = next(i for i, c in enumerate(names) if "Sampl" in c)
def samples(row):
    try:
        return float(row[column].replace(",", ""))
    except (ValueError, IndexError):
        return 0.0
body = [r for r in rows[header + 1:] if r]
total = sum(samples(r) for r in body) or 1.0
hot = sorted(range(len(body)), key=lambda i: -samples(body[i]))[:80]
print(f"column: {names[column]}; {len(body)} lines, {total:.0f} samples")
print(" | ".join(names))
for i in sorted(hot):
    print(f"{100 * samples(body[i]) / total:5.1f}% | " + " | ".join(body[i]))
PY
fi
tail -n 40 "$OUT/hot_sass_0.txt"
