#!/usr/bin/env bash
# The one-shot GPU check of the cuda-persistent backend (issue 17), for the device machine
# (H200; python3 with torch 2.11 + CUDA 13.0, nvcc, pytest; no network). From the repo root:
#
#   bash benchmarks/persistent_check.sh
#
# Phases, in order of what they prove, each under its own timeout so that the whole run ends
# within DEADLINE seconds (default 420):
#   build     the extension in place for sm_90 with 16 jobs                     build.log
#   selftest  benchmarks/persistent_selftest.py: every cell and dtype forced     selftest.txt
#             onto cuda-persistent against torch.nn, bitwise repeatability
#   timing    benchmarks/persistent_timing.py: cuDNN vs step vs persistent       timing.md, timing.json
#   sanitize  compute-sanitizer memcheck and racecheck on a tiny forced run      sanitize.log
#   tests     the CUDA cases of the suite, forced onto cuda-persistent first,    tests.log
#             then every other CUDA case (the per-step path since the restructure)
# At most 8 files come back: the six above and env.txt.
set -u -o pipefail
OUT="$(realpath -m "${OUT:-./gpu_out}")"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
DEADLINE="${DEADLINE:-420}"
left() { echo $((DEADLINE - SECONDS)); }
# box CAP RESERVE: seconds for a phase, at most CAP, leaving RESERVE for the phases after it
box() {
    local l=$(($(left) - $2))
    echo $((l < $1 ? (l > 20 ? l : 20) : $1))
}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

echo "== build"
[[ -x /usr/bin/g++ ]] && export CXX=/usr/bin/g++ CC=/usr/bin/gcc  # see gpu_check.sh
MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1
build_rc=$?
tail -n 3 "$OUT/build.log"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
    python3 -c "import torch, fusedrnn; print('torch', torch.__version__, 'CUDA', torch.version.cuda, \
'cuDNN', torch.backends.cudnn.version(), torch.cuda.get_device_name()); \
print(fusedrnn.backends.explain_call('cuda', torch.float16, 1024, cell='LSTM', hidden=768, batch=16))"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
[[ $build_rc == 0 ]] || { echo "build failed: exit $build_rc"; exit 1; }

echo "== selftest"
timeout "$(box 70 300)" python3 benchmarks/persistent_selftest.py > "$OUT/selftest.txt" 2>&1
selftest_rc=$?
tail -n 60 "$OUT/selftest.txt"

echo "== timing"
timeout "$(box 110 150)" python3 benchmarks/persistent_timing.py --budget 2.5 \
    --out "$OUT/timing.json" > "$OUT/timing.md" 2>&1
timing_rc=$?

echo "== sanitize"
{
    for tool in memcheck racecheck; do
        echo "-- $tool"
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 FUSEDRNN_BACKEND=cuda-persistent \
            timeout "$(box 40 90)" compute-sanitizer --tool "$tool" --print-limit 20 \
            --error-exitcode 99 python3 benchmarks/sanitize_small.py 2>&1 | tail -n 25
        echo "exit ${PIPESTATUS[0]}"
    done
} > "$OUT/sanitize.log" 2>&1
grep -E "^-- |ERROR SUMMARY|^exit" "$OUT/sanitize.log"

echo "== tests"
{
    echo "-- forced onto cuda-persistent"
    timeout "$(box 120 40)" python3 -m pytest tests -q -rf -p no:cacheprovider -x \
        -k "cuda and persistent" 2>&1 | tail -n 40
    echo "exit ${PIPESTATUS[0]}"
    echo "-- every other CUDA case"
    timeout "$(box 600 5)" python3 -m pytest tests -q -rf -p no:cacheprovider \
        -k "cuda and not persistent" 2>&1 | tail -n 40
    echo "exit ${PIPESTATUS[0]}"
} > "$OUT/tests.log" 2>&1
grep -E "^-- |passed|failed|^exit" "$OUT/tests.log"

echo "== timing table"
cat "$OUT/timing.md"
echo "== summary: selftest exit $selftest_rc, timing exit $timing_rc"
[[ $selftest_rc == 0 && $timing_rc == 0 ]] || status=1
exit $status
