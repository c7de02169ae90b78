#!/usr/bin/env bash
# GPU-machine run: build the CUDA kernels with this machine's nvcc (sm_80, sm_90 and, with nvcc >= 12, sm_90a),
# run the CUDA test suite (a self-contained published app: the GPU machine has no network for NuGet), and write a
# JSON summary to $OUT/gpu_summary.json (plus the logs next to it). Documented in docs/KERNELS.md.
#
# Prepare on the build machine (needs the .NET SDK and NuGet):
#   dotnet publish tests/Engine.Cuda.Tests -c Release -r linux-x64 --self-contained -o .device-carry/cuda-tests
# then on the GPU machine, from the repository root:
#   OUT=/some/dir benchmarks/scripts/gpu_run.sh
# Env: OUT (default out/gpu), ENGINE_CUDA_TESTS_APP (default .device-carry/cuda-tests/Engine.Cuda.Tests),
#      ENGINE_CUDA_ARCHS (passed to CMake when set), JOBS (default nproc).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
JOBS=${JOBS:-$(nproc)}
APP=${ENGINE_CUDA_TESTS_APP:-.device-carry/cuda-tests/Engine.Cuda.Tests}

json_escape() { python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' 2>/dev/null || sed 's/["\\]/\\&/g; s/.*/"&"/' | head -1; }

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
nvcc_version=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
echo "[gpu_run] gpu: ${gpu:-none}; nvcc: ${nvcc_version:-missing}; commit $commit"

# 1. Kernels (ptxas register/spill report kept in the log).
arch_flag=()
[ -n "${ENGINE_CUDA_ARCHS:-}" ] && arch_flag=(-DENGINE_CUDA_ARCHS="$ENGINE_CUDA_ARCHS")
kernels_rc=1
if cmake -S . -B build/native -DCMAKE_BUILD_TYPE=Release -DENGINE_PTXAS_VERBOSE=ON "${arch_flag[@]}" >"$OUT/kernels_configure.log" 2>&1; then
  cmake --build build/native -j "$JOBS" >"$OUT/kernels_build.log" 2>&1
  kernels_rc=$?
fi
echo "[gpu_run] kernels build rc=$kernels_rc (log: $OUT/kernels_build.log)"
ls -la build/native/kernels >"$OUT/kernels_files.txt" 2>&1

# 2. Tests: the published app runs xunit v3's in-process console runner; -xml gives per-assembly counts.
tests_rc=1; total=0; passed=0; failed=0; skipped=0
if [ -x "$APP" ]; then
  "$APP" -xml "$OUT/cuda_tests.xml" >"$OUT/cuda_tests.log" 2>&1
  tests_rc=$?
  if [ -f "$OUT/cuda_tests.xml" ]; then
    attr() { grep -o "<assembly [^>]*" "$OUT/cuda_tests.xml" | head -1 | sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p"; }
    total=$(attr total); passed=$(attr passed); failed=$(attr failed); skipped=$(attr skipped)
  fi
elif command -v dotnet >/dev/null 2>&1; then
  dotnet test tests/Engine.Cuda.Tests -c Release >"$OUT/cuda_tests.log" 2>&1
  tests_rc=$?
  line=$(grep -E 'Failed: +[0-9]+, +Passed: +[0-9]+, +Skipped: +[0-9]+, +Total: +[0-9]+' "$OUT/cuda_tests.log" | tail -1)
  failed=$(sed -E 's/.*Failed: +([0-9]+).*/\1/' <<<"$line"); passed=$(sed -E 's/.*Passed: +([0-9]+).*/\1/' <<<"$line")
  skipped=$(sed -E 's/.*Skipped: +([0-9]+).*/\1/' <<<"$line"); total=$(sed -E 's/.*Total: +([0-9]+).*/\1/' <<<"$line")
else
  echo "[gpu_run] no test app at $APP and no dotnet SDK: publish it first (see the header)" | tee "$OUT/cuda_tests.log"
fi
echo "[gpu_run] tests rc=$tests_rc: $passed passed, $failed failed, $skipped skipped of $total"

# 3. Summary.
cat >"$OUT/gpu_summary.json" <<JSON
{
  "commit": "$commit",
  "gpu": $(printf '%s' "${gpu:-none}" | json_escape),
  "nvcc": "${nvcc_version:-missing}",
  "kernels_build_rc": $kernels_rc,
  "tests": {"rc": $tests_rc, "total": ${total:-0}, "passed": ${passed:-0}, "failed": ${failed:-0}, "skipped": ${skipped:-0}},
  "logs": ["kernels_configure.log", "kernels_build.log", "kernels_files.txt", "cuda_tests.log", "cuda_tests.xml"],
  "microbenchmarks": []
}
JSON
echo "[gpu_run] summary: $OUT/gpu_summary.json"
[ "$kernels_rc" = 0 ] && [ "$tests_rc" = 0 ]
