#!/usr/bin/env bash
# The GPU protocol, for the device machine (H100; python3 holds torch 2.11 + CUDA 13.0, nvcc,
# pytest, pytest-benchmark, matplotlib; no network). From the repo root:
#
#   bash benchmarks/gpu_check.sh [STEP...]     steps: build env tests memcheck bench (default),
#                                              and anatomy, double (on request)
#
# build: the extension in place, against python3's torch. env: GPU, driver and versions.
# tests: the whole suite with CUDA. memcheck: compute-sanitizer on benchmarks/sanitize_small.py.
# bench: python3 -m fusedrnn.bench $BENCH_ARGS (e.g. "--grid quick"), table and versions into
# results.md. anatomy: benchmarks/gpu_anatomy.py (host, GPU and graph-replay time of a few
# cases; about 30 s) into anatomy.txt. double: benchmarks/double_backward.py --device cuda (the
# penalty steps against torch.nn, recomputing and by the second-order pass's kernels; about
# 60 s) into double_backward.txt. TESTS chooses and orders the test files (default: tests).
# Exit status: 1 if a step failed (the steps after a failed test run still run).
# Everything goes under $OUT (default ./gpu_out). The device tool brings back at most 8 files,
# 2 folders deep, so this writes only: build.log env.txt tests.log memcheck.log results.md
# bench/bench.json bench/speedups.png and one of anatomy.txt, double_backward.txt. Steps after
# the build are time-boxed so that the whole run ends within DEADLINE seconds (default 480),
# under the device tool's 10-minute limit.
set -u -o pipefail
OUT="$(realpath -m "${OUT:-./gpu_out}")"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
DEADLINE="${DEADLINE:-480}"
STEPS=" ${*:-build env tests memcheck bench} "
wants() { [[ "$STEPS" == *" $1 "* ]]; }
# limit CAP RESERVE: seconds for a step, at most CAP, leaving RESERVE for the steps after it
limit() {
    local left=$((DEADLINE - SECONDS - $2))
    echo $((left < $1 ? (left > 30 ? left : 30) : $1))
}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, for plain scripts too

build_rc=skipped tests_rc=skipped memcheck_rc=skipped bench_rc=skipped
memcheck_summary="(not run)"

if wants build; then
    echo "== build"
    # The image's CXX is a separately installed GCC whose runtime files don't match the
    # system's libgcc_s: a C++ exception thrown by the extension then crashes in the unwinder.
    # The system compiler builds an extension whose errors raise as they should.
    [[ -x /usr/bin/g++ ]] && export CXX=/usr/bin/g++ CC=/usr/bin/gcc
    MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 setup.py build_ext --inplace 2>&1 \
        | tee "$OUT/build.log"
    build_rc=${PIPESTATUS[0]}
fi

versions() {
    python3 -c "
import torch
gpu = 'none seen by torch'
if torch.cuda.is_available():
    major, minor = torch.cuda.get_device_capability()
    gpu = f'{torch.cuda.get_device_name()} (sm_{major}{minor})'
print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, '
      f'cuDNN {torch.backends.cudnn.version()}, GPU {gpu}')"
}

if wants env; then
    echo "== env"
    {
        date -u
        nvidia-smi
        versions
        nvcc --version | tail -n 2
        python3 -c "import fusedrnn; print('fusedrnn', fusedrnn.__version__, 'built for torch', \
fusedrnn.TORCH_VERSION, 'with CUDA' if fusedrnn.WITH_CUDA else 'WITHOUT CUDA')"
    } > "$OUT/env.txt" 2>&1
    cat "$OUT/env.txt"
fi

if [[ "$build_rc" != skipped && "$build_rc" != 0 ]]; then
    echo "build failed (exit $build_rc): see $OUT/build.log; skipping tests, memcheck, bench"
    exit 1
fi

if wants tests; then
    echo "== tests"
    # TESTS: the test files, in the order to run them (default: all of tests/).
    timeout "$(limit 300 180)" python3 -m pytest ${TESTS:-tests} -q -rs -p no:cacheprovider \
        --durations=10 2>&1 | tee "$OUT/tests.log"
    tests_rc=${PIPESTATUS[0]}
fi

if wants memcheck; then
    echo "== memcheck"
    # No caching allocator: every tensor is its own allocation, so memcheck sees overruns
    # that would otherwise land in a neighbour inside one cached block.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(limit 90 150)" compute-sanitizer \
        --tool memcheck --print-limit 50 --error-exitcode 99 \
        python3 benchmarks/sanitize_small.py > "$OUT/memcheck.log" 2>&1
    memcheck_rc=$?
    memcheck_summary=$(grep -m 1 "ERROR SUMMARY" "$OUT/memcheck.log" \
        || echo "no ERROR SUMMARY line (exit $memcheck_rc): see memcheck.log")
    tail -n 12 "$OUT/memcheck.log"
fi

if wants bench; then
    echo "== bench"
    table=$(mktemp)
    timeout "$(limit 240 0)" python3 -m fusedrnn.bench --out "$OUT/bench" ${BENCH_ARGS:-} > "$table"
    bench_rc=$?
    {
        echo "# fusedrnn on the GPU machine"
        echo
        echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "- GPU, driver: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
        echo "- $(versions)"
        echo "- tests: exit $tests_rc; memcheck: $memcheck_summary; bench: exit $bench_rc"
        echo
        cat "$table"
    } > "$OUT/results.md"
    rm -f "$table"
fi

if wants anatomy; then
    echo "== anatomy"
    timeout "$(limit 120 0)" python3 benchmarks/gpu_anatomy.py > "$OUT/anatomy.txt" 2>&1
    tail -n 20 "$OUT/anatomy.txt"
fi

if wants double; then
    echo "== double"
    timeout "$(limit 150 0)" python3 benchmarks/double_backward.py --device cuda --rounds 5 \
        > "$OUT/double_backward.txt" 2>&1
    cat "$OUT/double_backward.txt"
fi

echo
echo "== summary"
echo "build: exit $build_rc"
echo "tests: exit $tests_rc"
echo "memcheck: exit $memcheck_rc; $memcheck_summary"
echo "bench: exit $bench_rc"
if [[ -f "$OUT/results.md" ]]; then
    cat "$OUT/results.md"
fi
for rc in "$tests_rc" "$memcheck_rc" "$bench_rc"; do
    [[ "$rc" == skipped || "$rc" == 0 ]] || exit 1
done
