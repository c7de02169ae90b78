#!/usr/bin/env bash
# The GPU run, sized for the device tool's limits (docs/GPU_RUN.md): 15 minutes of device time in all (the machine's
# start included), at most 10 minutes per command, 8 files back from $OUT, 64 MiB of tree + carried files.
#
#   phase 1 (~7 min, stops by itself at --budget, default 420 s): correctness.
#     unpack the carried .device-carry/engine-gpu.tar.xz (benchmarks/scripts/gpu_pack.sh: the self-contained test app
#     + engine CLI, the nvcc 11.8 fatbins, COMMIT) → find cuBLAS/NCCL in the machine's Python wheels (nvidia/cu13/lib
#     and nvidia/{cublas,nccl}/lib) and export them → build the kernels with this machine's nvcc (Ninja, --threads 0,
#     sm_<its compute capability>; again without -Werror if that fails; else the carried nvcc 11.8 fatbins — the
#     summary records which) → every GPU test class (*GpuTests) alone, each under its own timeout, with the sm_90a
#     wgmma forward off (ENGINE_ATTENTION_SM90=0) → the backend and training-step tests again on attention v2 →
#     the sm_90a forward built and tested alone.
#   phase 2 (run only with >= 5 minutes of device time left; --budget default 240 s): compute-sanitizer memcheck and
#     racecheck on small shapes (the H100's runtime supports it), the sm_90a forward under memcheck, the debug-build
#     spin-wait trap, Hugging Face and PEFT parity, the end-to-end and kernel benchmarks.
#
# With a GPU present a skipped test counts as a failure (a missing cuBLAS or fatbin shows up as skips). After every
# step $OUT/gpu_summary.json and $OUT/logs.tar.gz are rewritten (phase 2 adds $OUT/results.tar.gz: the bench and parity
# JSON), so a run killed at any point still returns what it did. Exit status 0 only when every step passed.
#
# usage: gpu_run.sh [--phase 1|2] [--budget SECONDS]
# Env: OUT (default out/gpu), ENGINE_GPU_CARRY (default .device-carry/engine-gpu.tar.xz).
# Dry mode for the CPU test (tests/Engine.Cuda.Tests/GpuRunScriptTests.cs; fakes of nvidia-smi, nvcc, cmake, python3
# and the test app on PATH): ENGINE_GPU_RUN_FAKE_CLOCK=FILE makes the clock the integer in FILE (the fakes advance it)
# and caps every real timeout at 2 s, charging a step that hits it its whole timeout on the fake clock;
# ENGINE_GPU_RUN_SNAPSHOTS=DIR keeps a copy of every summary written.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

PHASE=1; BUDGET=""
while [ $# -gt 0 ]; do
  case "$1" in
    --phase) PHASE=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    *) echo "gpu_run.sh: unknown argument '$1' (usage: gpu_run.sh [--phase 1|2] [--budget SECONDS])" >&2; exit 2 ;;
  esac
done
case "$PHASE" in 1) BUDGET=${BUDGET:-420} ;; 2) BUDGET=${BUDGET:-240} ;; *) echo "gpu_run.sh: --phase is 1 or 2" >&2; exit 2 ;; esac

OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CARRY=${ENGINE_GPU_CARRY:-.device-carry/engine-gpu.tar.xz}
UNPACKED=$ROOT/.device-carry/unpacked
WORK=$ROOT/.device-carry/work-phase$PHASE
LOGS=$WORK/logs
RESULTS=$WORK/results
rm -rf "$WORK"; mkdir -p "$LOGS" "$RESULTS"
BUILD=$ROOT/build/native-gpu
CHOICE=$ROOT/.device-carry/kernels-choice   # which kernels phase 1 chose (dir, then source), reused by phase 2
APP=$UNPACKED/app/Engine.Cuda.Tests
CLI=$UNPACKED/app/engine
RESERVE=15         # seconds kept back: a killed step's 5 s grace, the last summary and log archive
MIN_STEP=10        # a step that would get less than this is not started
[ -d /usr/local/cuda/bin ] && PATH=$PATH:/usr/local/cuda/bin
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 PYTHONUNBUFFERED=1

# ---- clock and timeouts (the only dry-mode hooks) -----------------------------------------------------------------
FAKE_CLOCK=${ENGINE_GPU_RUN_FAKE_CLOCK:-}
now() { if [ -n "$FAKE_CLOCK" ]; then cat "$FAKE_CLOCK"; else date +%s; fi; }
START=$(now)
DEADLINE=$((START + BUDGET))
remaining() { echo $((DEADLINE - $(now) - RESERVE)); }

# run_timed SECONDS LOGFILE CMD...: CMD under `timeout` (SIGTERM, SIGKILL 5 s later, whole process group); rc 124/137
# on expiry. Dry mode: the real limit is 2 s and an expiry moves the fake clock to start + SECONDS.
run_timed() {
  local secs=$1 log=$2; shift 2
  local real=$secs t0; t0=$(now)
  [ -n "$FAKE_CLOCK" ] && [ "$real" -gt 2 ] && real=2
  timeout -k 5 "$real" "$@" >>"$log" 2>&1
  local rc=$?
  if [ -n "$FAKE_CLOCK" ] && { [ $rc = 124 ] || [ $rc = 137 ]; }; then echo $((t0 + secs)) >"$FAKE_CLOCK"; fi
  return $rc
}

# ---- summary -------------------------------------------------------------------------------------------------------
jstr() {
  local s; s=$(printf '%s' "$1" | tr -d '\000-\010\013\014\016-\037')
  s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/\\t}; s=${s//$'\r'/}
  printf '"%s"' "$s"
}
STEPS=()            # one JSON object per finished step, in order
T_TOTAL=0; T_PASSED=0; T_FAILED=0; T_SKIPPED=0; T_SKIPS_AS_FAILED=0
ANY_FAILED=0; ANY_NOT_RUN=0
COMMIT=unknown; COMMIT_SOURCE=none
GPU_NAME=none; GPU_DRIVER=""; GPU_MEMORY=""; GPU_CC=""; HAVE_GPU=0
NVCC_VERSION=missing; CMAKE_VERSION=missing; NINJA=missing; PYTHON=missing; SANITIZER=missing
LIB_CUBLAS=""; LIB_NCCL=""; KERNELS_SOURCE=none; KERNELS_DIR=""; SM90_FATBIN=0
SNAP_N=0

write_summary() {
  local verdict=$1 elapsed=$(( $(now) - START )) steps="" s
  for s in "${STEPS[@]+"${STEPS[@]}"}"; do steps+="${steps:+,}"$'\n    '"$s"; done
  cat >"$OUT/gpu_summary.json.tmp" <<JSON
{
  "schema": "engine.gpu_run/1",
  "phase": $PHASE,
  "verdict": $(jstr "$verdict"),
  "commit": $(jstr "$COMMIT"), "commit_source": $(jstr "$COMMIT_SOURCE"),
  "date": $(jstr "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),
  "elapsed_s": $elapsed, "budget_s": $BUDGET,
  "device": {"gpu": $(jstr "$GPU_NAME"), "driver": $(jstr "$GPU_DRIVER"), "memory": $(jstr "$GPU_MEMORY"), "compute_capability": $(jstr "$GPU_CC"), "present": $([ $HAVE_GPU = 1 ] && echo true || echo false)},
  "tools": {"nvcc": $(jstr "$NVCC_VERSION"), "cmake": $(jstr "$CMAKE_VERSION"), "ninja": $(jstr "$NINJA"), "python": $(jstr "$PYTHON"), "compute_sanitizer": $(jstr "$SANITIZER")},
  "libraries": {"cublas": $(jstr "$LIB_CUBLAS"), "nccl": $(jstr "$LIB_NCCL")},
  "kernels": {"source": $(jstr "$KERNELS_SOURCE"), "dir": $(jstr "${KERNELS_DIR#$ROOT/}"), "sm90a_fatbin": $([ $SM90_FATBIN = 1 ] && echo true || echo false)},
  "tests": {"total": $T_TOTAL, "passed": $T_PASSED, "failed": $T_FAILED, "skipped": $T_SKIPPED, "skips_counted_as_failures": $T_SKIPS_AS_FAILED},
  "steps": [$steps
  ]
}
JSON
  mv -f "$OUT/gpu_summary.json.tmp" "$OUT/gpu_summary.json"
  tar -C "$LOGS" -czf "$OUT/logs.tar.gz.tmp" . 2>/dev/null && mv -f "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
  if [ -n "$(ls -A "$RESULTS" 2>/dev/null)" ]; then
    tar -C "$RESULTS" -czf "$OUT/results.tar.gz.tmp" . 2>/dev/null && mv -f "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
  fi
  if [ -n "${ENGINE_GPU_RUN_SNAPSHOTS:-}" ]; then
    SNAP_N=$((SNAP_N + 1)); mkdir -p "$ENGINE_GPU_RUN_SNAPSHOTS"
    cp "$OUT/gpu_summary.json" "$ENGINE_GPU_RUN_SNAPSHOTS/summary-$(printf %03d $SNAP_N).json"
  fi
}

# record NAME STATUS RC SECONDS TIMEOUT NOTE [TESTS_JSON]: one finished step, then the summary is rewritten.
# A step run with SOFT=1 (a build that has a fallback) is recorded but does not fail the run.
record() {
  local name=$1 status=$2 rc=$3 secs=$4 to=$5 note=$6 tests=${7:-}
  if [ "${SOFT:-0}" = 1 ]; then
    [ "$status" != ok ] && note="${note:+$note; }has a fallback: does not fail the run"
  else
    case "$status" in failed|timeout) ANY_FAILED=1 ;; not_run) ANY_NOT_RUN=1 ;; esac
  fi
  local obj="{\"name\": $(jstr "$name"), \"status\": $(jstr "$status"), \"rc\": $(jstr "$rc"), \"seconds\": $secs, \"timeout_s\": $to"
  [ -n "$note" ] && obj+=", \"note\": $(jstr "$note")"
  [ -n "$tests" ] && obj+=", \"tests\": $tests"
  STEPS+=("$obj}")
  echo "[gpu_run] $name: $status (rc $rc, ${secs}s${note:+; $note})"
  write_summary running
}

# step NAME CAP LOG CMD...: runs CMD with timeout min(CAP, time left); records ok / failed / timeout / not_run.
# Sets STEP_RC (rc, or "not_run") for the caller.
step() {
  local name=$1 cap=$2 log=$3; shift 3
  local left; left=$(remaining)
  local to=$cap; [ "$left" -lt "$to" ] && to=$left
  if [ "$to" -lt $MIN_STEP ]; then
    STEP_RC=not_run; record "$name" not_run - 0 0 "time budget: ${left}s left of ${BUDGET}s"; return
  fi
  local t0; t0=$(now)
  echo "[gpu_run] $name (timeout ${to}s): $*" >>"$log"
  run_timed "$to" "$log" "$@"
  STEP_RC=$?
  local secs=$(( $(now) - t0 )) status=ok
  [ $STEP_RC != 0 ] && status=failed
  { [ $STEP_RC = 124 ] || [ $STEP_RC = 137 ]; } && status=timeout
  record "$name" $status $STEP_RC $secs $to ""
}

# xml_counts FILE -> "total passed failed skipped" of the <assembly> element (0s when absent).
xml_counts() {
  local a; a=$(grep -o '<assembly [^>]*' "$1" 2>/dev/null | head -1)
  local k v out=""
  for k in total passed failed skipped; do v=$(sed -n "s/.* $k=\"\([0-9]*\)\".*/\1/p" <<<"$a"); out+="${v:-0} "; done
  echo "$out"
}
# names of failed / skipped tests (at most 5 each) with the first line of their reason
xml_names() {
  grep -o "<test [^>]*result=\"$2\"[^>]*>" "$1" 2>/dev/null | sed -n 's/.* name="\([^"]*\)".*/\1/p' | head -5 | sed 's/&quot;/"/g; s/&amp;/\&/g'
}

# test_step NAME CAP LOG XML ENV... -- APP_ARGS...: the test app under step(), then its counts. With a GPU present
# every skip counts as a failure; no XML means the app died (a crash or a timeout): the step fails.
test_step() {
  local name=$1 cap=$2 log=$3 xml=$4; shift 4
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  local left; left=$(remaining)
  local to=$cap; [ "$left" -lt "$to" ] && to=$left
  if [ "$to" -lt $MIN_STEP ]; then
    record "$name" not_run - 0 0 "time budget: ${left}s left of ${BUDGET}s"; return
  fi
  local t0; t0=$(now)
  echo "[gpu_run] $name (timeout ${to}s)" >>"$log"
  run_timed "$to" "$log" env "${envs[@]+"${envs[@]}"}" "$APP" "$@" -noColor -noLogo -xml "$xml"
  local rc=$? secs status
  secs=$(( $(now) - t0 ))
  read -r total passed failed skipped <<<"$(xml_counts "$xml")"
  local counted=$failed
  [ $HAVE_GPU = 1 ] && counted=$((failed + skipped))
  T_TOTAL=$((T_TOTAL + total)); T_PASSED=$((T_PASSED + passed)); T_FAILED=$((T_FAILED + failed)); T_SKIPPED=$((T_SKIPPED + skipped))
  [ $HAVE_GPU = 1 ] && T_SKIPS_AS_FAILED=$((T_SKIPS_AS_FAILED + skipped))
  status=ok; note=""
  if [ $rc = 124 ] || [ $rc = 137 ]; then status=timeout; note="killed after ${to}s"
  elif [ ! -s "$xml" ]; then status=failed; note="no results (the test app crashed; see the log)"
  elif [ "$counted" -gt 0 ] || [ $rc != 0 ]; then status=failed
  elif [ "$total" = 0 ]; then status=failed; note="no tests selected"
  fi
  local names="" n
  while IFS= read -r n; do [ -n "$n" ] && names+="${names:+, }$(jstr "$n")"; done < <(xml_names "$xml" Fail)
  local skips=""
  while IFS= read -r n; do [ -n "$n" ] && skips+="${skips:+, }$(jstr "$n")"; done < <(xml_names "$xml" Skip)
  record "$name" $status $rc $secs $to "$note" \
    "{\"total\": $total, \"passed\": $passed, \"failed\": $failed, \"skipped\": $skipped, \"failed_tests\": [$names], \"skipped_tests\": [$skips]}"
}

# verdict: fail (a step failed or timed out) > incomplete (the budget ran out) > no_device (nothing ran on a GPU) > pass
finish() {
  local verdict=pass
  [ $HAVE_GPU = 0 ] && verdict=no_device
  [ $ANY_NOT_RUN = 1 ] && verdict=incomplete
  [ $ANY_FAILED = 1 ] && verdict=fail
  write_summary $verdict
  echo "[gpu_run] phase $PHASE: $verdict in $(( $(now) - START ))s of ${BUDGET}s; tests $T_PASSED passed, $T_FAILED failed," \
    "$T_SKIPPED skipped ($T_SKIPS_AS_FAILED counted as failures); kernels: $KERNELS_SOURCE; summary $OUT/gpu_summary.json"
  [ $verdict = pass ]
  exit $?
}

# ---- 1. unpack -----------------------------------------------------------------------------------------------------
unpack() {
  local log=$LOGS/unpack.log
  if [ -f "$CARRY" ] && [ -x "$APP" ] && [ "$(cat "$UNPACKED/.from" 2>/dev/null)" = "$(cksum <"$CARRY")" ]; then
    record unpack ok 0 0 0 "already unpacked (same carry)"
  elif [ ! -f "$CARRY" ]; then
    record unpack failed - 0 0 "no $CARRY: run benchmarks/scripts/gpu_pack.sh and name it in the run's carry list"
  else
    rm -rf "$UNPACKED" "$CHOICE"; mkdir -p "$UNPACKED"
    if command -v xz >/dev/null 2>&1; then
      step unpack 120 "$log" tar -C "$UNPACKED" -xJf "$CARRY"
    else
      step unpack 120 "$log" python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$CARRY" "$UNPACKED"
    fi
    [ "$STEP_RC" = 0 ] && cksum <"$CARRY" >"$UNPACKED/.from"
  fi
  if [ -s "$UNPACKED/COMMIT" ]; then COMMIT=$(head -1 "$UNPACKED/COMMIT"); COMMIT_SOURCE=carry
  elif c=$(git rev-parse HEAD 2>/dev/null); then COMMIT=$c; COMMIT_SOURCE=git
  fi
}

# ---- 2. the machine: GPU, tools, cuBLAS/NCCL from the Python wheels --------------------------------------------------
probe() {
  local log=$LOGS/probe.log line
  {
    nvidia-smi 2>&1 | head -20
    echo "--- PATH=$PATH"; uname -a; nproc; free -g 2>/dev/null
  } >>"$log" 2>&1
  line=$(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>/dev/null | head -1)
  if [ -n "$line" ]; then
    HAVE_GPU=1
    IFS=',' read -r GPU_NAME GPU_DRIVER GPU_MEMORY GPU_CC <<<"$line"
    GPU_NAME=$(echo $GPU_NAME); GPU_DRIVER=$(echo $GPU_DRIVER); GPU_MEMORY=$(echo $GPU_MEMORY); GPU_CC=$(echo $GPU_CC)
  fi
  NVCC_VERSION=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p'); NVCC_VERSION=${NVCC_VERSION:-missing}
  CMAKE_VERSION=$(cmake --version 2>/dev/null | sed -n '1s/cmake version //p'); CMAKE_VERSION=${CMAKE_VERSION:-missing}
  command -v ninja >/dev/null 2>&1 && NINJA=$(ninja --version 2>/dev/null || echo present)
  command -v python3 >/dev/null 2>&1 && PYTHON=$(python3 -c 'import sys; print(sys.executable, sys.version.split()[0])' 2>/dev/null || echo present)
  command -v compute-sanitizer >/dev/null 2>&1 && SANITIZER=$(command -v compute-sanitizer)

  # cuBLAS and NCCL: PyTorch's wheels. CUDA 13 wheels share nvidia/cu13/lib; CUDA 12 ones use nvidia/{cublas,nccl}/lib.
  local sites d f
  sites=$(python3 -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
  for d in $sites; do
    for f in "$d"/nvidia/cu13/lib/libcublas.so.* "$d"/nvidia/cublas/lib/libcublas.so.*; do
      [ -z "$LIB_CUBLAS" ] && [ -f "$f" ] && LIB_CUBLAS=$f
    done
    for f in "$d"/nvidia/cu13/lib/libnccl.so.* "$d"/nvidia/nccl/lib/libnccl.so.*; do
      [ -z "$LIB_NCCL" ] && [ -f "$f" ] && LIB_NCCL=$f
    done
  done
  [ -n "$LIB_CUBLAS" ] && export ENGINE_LIBCUBLAS=$LIB_CUBLAS LD_LIBRARY_PATH=$(dirname "$LIB_CUBLAS")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  [ -n "$LIB_NCCL" ] && export ENGINE_LIBNCCL=$LIB_NCCL LD_LIBRARY_PATH=$(dirname "$LIB_NCCL")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "site-packages: $sites; cuBLAS: ${LIB_CUBLAS:-not found}; NCCL: ${LIB_NCCL:-not found}" >>"$log"
  local status=ok note="gpu ${GPU_NAME}, cc ${GPU_CC:-?}, nvcc $NVCC_VERSION; cuBLAS ${LIB_CUBLAS:-not found in the wheels (the resolver searches on)}"
  [ $HAVE_GPU = 0 ] && note="no GPU (nvidia-smi lists none): tests will skip; $note"
  record probe $status 0 0 0 "$note"
}

# ---- 3. kernels ----------------------------------------------------------------------------------------------------
ARCH=90
build_kernels() {
  [ -n "$GPU_CC" ] && ARCH=${GPU_CC/./}
  local gen=(); [ "$NINJA" != missing ] && gen=(-G Ninja)
  if [ -f "$CHOICE" ]; then   # an earlier phase on this machine chose already
    { read -r KERNELS_DIR; read -r KERNELS_SOURCE; } <"$CHOICE"
    if [ -n "$(ls "$KERNELS_DIR"/*.fatbin 2>/dev/null)" ]; then
      record build_kernels ok 0 0 0 "reused the earlier phase's kernels: $KERNELS_SOURCE"
      return
    fi
    KERNELS_DIR=""; KERNELS_SOURCE=none
  fi
  if [ "$NVCC_VERSION" != missing ] && [ "$CMAKE_VERSION" != missing ]; then
    local werror
    for werror in ON OFF; do
      rm -rf "$BUILD"
      SOFT=1 step "build_kernels_werror_$werror" 240 "$LOGS/build_kernels.log" bash -c 'cmake_build "$@"' _ "$BUILD" engine_kernels \
        "${gen[@]+"${gen[@]}"}" -DCMAKE_BUILD_TYPE=Release -DENGINE_CUDA_ARCHS="$ARCH" -DENGINE_NVCC_THREADS=0 -DENGINE_PTXAS_VERBOSE=ON -DENGINE_WERROR=$werror
      if [ "$STEP_RC" = 0 ]; then
        KERNELS_SOURCE="built (nvcc $NVCC_VERSION, sm_$ARCH$([ $werror = OFF ] && echo ', without -Werror'))"
        KERNELS_DIR=$BUILD/kernels; printf '%s\n%s\n' "$KERNELS_DIR" "$KERNELS_SOURCE" >"$CHOICE"
        return
      fi
      { [ "$STEP_RC" = 124 ] || [ "$STEP_RC" = 137 ] || [ "$STEP_RC" = not_run ]; } && break   # no time for a retry
    done
  fi
  if [ -n "$(ls "$UNPACKED"/kernels-nvcc11.8/*.fatbin 2>/dev/null)" ]; then
    KERNELS_SOURCE="carried (nvcc 11.8, sm_80/sm_90 + compute_90 PTX)"; KERNELS_DIR=$UNPACKED/kernels-nvcc11.8
    printf '%s\n%s\n' "$KERNELS_DIR" "$KERNELS_SOURCE" >"$CHOICE"
    record kernels_fallback ok 0 0 0 "this machine's build failed or was impossible (nvcc $NVCC_VERSION, cmake $CMAKE_VERSION): using the carried fatbins"
  else
    record kernels_fallback failed - 0 0 "no kernels: the build failed and the carry has no kernels-nvcc11.8/"
  fi
}

# the sm_90a forward (attention_sm90.cu): nvcc >= 12 and compute capability 9.x only
build_sm90() {
  if [ "${NVCC_VERSION%%.*}" -ge 12 ] 2>/dev/null && [ "${GPU_CC%%.*}" = 9 ] && [ "$KERNELS_DIR" = "$BUILD/kernels" ]; then
    if [ -f "$BUILD/kernels/attention_sm90.fatbin" ]; then SM90_FATBIN=1; return; fi
    step build_sm90a 180 "$LOGS/build_sm90a.log" cmake --build "$BUILD" --target engine_kernels_sm90
    [ "$STEP_RC" = 0 ] && [ -f "$BUILD/kernels/attention_sm90.fatbin" ] && SM90_FATBIN=1
  else
    record build_sm90a skipped - 0 0 "needs nvcc >= 12 (here $NVCC_VERSION), compute capability 9.x (here ${GPU_CC:-none}) and this machine's own kernel build"
  fi
}

# ---- 4. tests ------------------------------------------------------------------------------------------------------
HOPPER_TEST=Engine.Cuda.Tests.Gpu.AttentionV2GpuTests.HopperForwardMatchesFp64Reference
# cheap kernels first, so a later hang costs the least; classes not named here run after these, in name order
ORDER="Gpu.ElementwiseGpuTests Gpu.SwiGluGpuTests Gpu.RmsNormGpuTests Gpu.RopeGpuTests Gpu.EmbeddingGpuTests
Gpu.CrossEntropyGpuTests Gpu.AdamWGpuTests Gpu.GemmGpuTests Gpu.AttentionGpuTests Gpu.AttentionV2GpuTests
Backend.BackendOpGpuTests Backend.TrainingStepGpuTests Nccl.NcclCommunicatorGpuTests Bench.KernelBenchGpuTests"
class_cap() {
  case "$1" in
    *AttentionV2GpuTests|*TrainingStepGpuTests|*BackendOpGpuTests) echo 150 ;;
    *AttentionGpuTests|*KernelBenchGpuTests) echo 120 ;;
    *) echo 90 ;;
  esac
}

# classes that need phase 2's setup (a debug build of the kernels)
PHASE2_ONLY="Engine.Cuda.Tests.Gpu.AttentionV2DebugGpuTests"

gpu_classes() {
  local all c
  all=$(timeout 60 "$APP" -list classes -noColor 2>/dev/null | tr -d '\r' | grep -E '^Engine\.[A-Za-z0-9_.]+GpuTests$' \
    | grep -vxF -f <(tr ' ' '\n' <<<"$PHASE2_ONLY") | sort)
  for c in $ORDER; do grep -qx "Engine.Cuda.Tests.$c" <<<"$all" && echo "Engine.Cuda.Tests.$c"; done
  for c in $all; do grep -qwF "${c#Engine.Cuda.Tests.}" <<<"$ORDER" || echo "$c"; done
}

run_test_classes() {
  local classes c
  classes=$(gpu_classes)
  if [ -z "$classes" ]; then record tests failed - 0 0 "the test app lists no *GpuTests classes ($APP -list classes)"; return; fi
  for c in $classes; do
    local short=${c##*.}
    local excl=(); [ "$c" = "${HOPPER_TEST%.*}" ] && excl=(-method- "$HOPPER_TEST")
    test_step "test $short" "$(class_cap "$c")" "$LOGS/$short.log" "$LOGS/$short.xml" \
      ENGINE_KERNELS_DIR="$KERNELS_DIR" ENGINE_ATTENTION_SM90=0 -- -class "$c" "${excl[@]+"${excl[@]}"}"
  done
  # every attention call of the backend and of a training step on attention_v2.cu
  test_step "test backend on attention v2" 150 "$LOGS/backend_v2.log" "$LOGS/backend_v2.xml" \
    ENGINE_KERNELS_DIR="$KERNELS_DIR" ENGINE_ATTENTION_SM90=0 ENGINE_ATTENTION=v2 -- \
    -class Engine.Cuda.Tests.Backend.BackendOpGpuTests -class Engine.Cuda.Tests.Backend.TrainingStepGpuTests
}

run_sm90_test() {
  if [ $SM90_FATBIN = 1 ]; then
    test_step "test sm90a forward" 90 "$LOGS/sm90a_forward.log" "$LOGS/sm90a_forward.xml" \
      ENGINE_KERNELS_DIR="$KERNELS_DIR" ENGINE_ATTENTION_SM90=1 -- -method "$HOPPER_TEST"
  else
    record "test sm90a forward" skipped - 0 0 "no sm_90a fatbin (see build_sm90a)"
  fi
}

# ---- phase 2 -------------------------------------------------------------------------------------------------------
# with_sanitizer TOOL test_step ...: the test step with the app started by compute-sanitizer (a wrapper script as APP)
with_sanitizer() {
  local tool=$1 saved=$APP; shift
  APP=$WORK/sanitized-$tool
  printf '#!/usr/bin/env bash\nexec %q --tool %q --error-exitcode 99 --print-limit 20 %q "$@"\n' "$SANITIZER" "$tool" "$saved" >"$APP"
  chmod +x "$APP"
  "$@"
  APP=$saved
}

# cmake_build DIR TARGET CMAKE_ARGS...: configure and build one target (exported for `step ... bash -c`)
cmake_build() { local dir=$1 target=$2; shift 2; cmake -S "$ROOT" -B "$dir" "$@" && cmake --build "$dir" --target "$target"; }
export -f cmake_build
export ROOT

debug_trap() {   # the v2 dQ spin-wait bounded by __trap() in a debug build (ENGINE_DEBUG_KERNELS)
  local dbg=$ROOT/build/native-gpu-debug gen=() target=engine_kernels
  [ "$NINJA" != missing ] && { gen=(-G Ninja); target=kernels/attention_v2.fatbin; }
  if [ "$NVCC_VERSION" = missing ]; then record debug_trap not_run - 0 0 "no nvcc"; return; fi
  step build_debug_kernels 150 "$LOGS/build_debug.log" bash -c 'cmake_build "$@"' _ "$dbg" "$target" \
    "${gen[@]+"${gen[@]}"}" -DCMAKE_BUILD_TYPE=Release -DENGINE_CUDA_ARCHS="$ARCH" -DENGINE_WERROR=OFF -DENGINE_DEBUG_KERNELS=ON
  [ "$STEP_RC" = 0 ] || return
  test_step "test debug spin-wait trap" 90 "$LOGS/debug_trap.log" "$LOGS/debug_trap.xml" \
    ENGINE_KERNELS_DIR="$KERNELS_DIR" ENGINE_KERNELS_DEBUG_DIR="$dbg/kernels" -- -class Engine.Cuda.Tests.Gpu.AttentionV2DebugGpuTests
}

parity_and_bench() {
  if [ "$PYTHON" = missing ]; then record parity not_run - 0 0 "no python3"; else
    step hf_parity 120 "$LOGS/hf_parity.log" env OUT="$RESULTS" python3 benchmarks/scripts/hf_parity.py "$CLI"
    step peft_parity 120 "$LOGS/peft_parity.log" env OUT="$RESULTS" python3 benchmarks/scripts/peft_parity.py "$CLI"
    step sdpa_bench 90 "$LOGS/sdpa_bench.log" python3 benchmarks/scripts/sdpa_bench.py --out "$RESULTS/sdpa.json" \
      --tokens 256 --heads 4 --kv-heads 1,4 --seq-lens 128 --head-dims 64,128
  fi
  local sdpa=(); [ -s "$RESULTS/sdpa.json" ] && sdpa=(--sdpa "$RESULTS/sdpa.json")
  step bench_kernels 120 "$LOGS/bench_kernels.log" env ENGINE_KERNELS_DIR="$KERNELS_DIR" \
    "$CLI" bench kernels --preset tiny --out "$RESULTS" --commit "$COMMIT" "${sdpa[@]+"${sdpa[@]}"}"
  step bench_train 120 "$LOGS/bench_train.log" env ENGINE_KERNELS_DIR="$KERNELS_DIR" \
    "$CLI" bench train --device cuda --python none --steps 6 --profile --out "$RESULTS"
}

# ---- the run -------------------------------------------------------------------------------------------------------
echo "[gpu_run] phase $PHASE, budget ${BUDGET}s, out $OUT"
write_summary running
unpack
probe
if [ ! -x "$APP" ]; then record tests not_run - 0 0 "no test app at ${APP#$ROOT/}"; finish; fi
build_kernels
[ -z "$KERNELS_DIR" ] && finish
if [ "$PHASE" = 1 ]; then
  run_test_classes
  build_sm90
  run_sm90_test
else
  build_sm90
  if [ "$SANITIZER" = missing ]; then
    record sanitizer not_run - 0 0 "no compute-sanitizer on PATH"
  else   # small shapes only: the sanitizers slow kernels down 10-100x
    for tool in memcheck racecheck; do
      with_sanitizer $tool test_step "$tool small shapes" 90 "$LOGS/$tool.log" "$LOGS/$tool.xml" \
        ENGINE_KERNELS_DIR="$KERNELS_DIR" ENGINE_ATTENTION_SM90=0 -- -class Engine.Cuda.Tests.Gpu.SanitizerShapesGpuTests
    done
    if [ $SM90_FATBIN = 1 ]; then
      with_sanitizer memcheck test_step "memcheck sm90a forward" 90 "$LOGS/memcheck_sm90a.log" "$LOGS/memcheck_sm90a.xml" \
        ENGINE_KERNELS_DIR="$KERNELS_DIR" ENGINE_ATTENTION_SM90=1 -- -method "$HOPPER_TEST"
    fi
  fi
  debug_trap
  parity_and_bench
fi
finish
