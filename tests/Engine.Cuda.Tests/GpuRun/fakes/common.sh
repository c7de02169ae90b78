# Shared by the fakes of benchmarks/scripts/gpu_run.sh's dry run (GpuRunScriptTests). FAKE_PLAN: lines
# "KEY ACTION SECONDS [N]"; a key without a line is "ok 1". Every fake logs its call to FAKE_CALLS and moves the fake
# clock (ENGINE_GPU_RUN_FAKE_CLOCK) on by its SECONDS; "hang" sleeps until gpu_run.sh's timeout kills it.
plan() {
  local line
  line=$(awk -v k="$1" '$1 == k { print; exit }' "$FAKE_PLAN" 2>/dev/null)
  [ -n "$line" ] || line="$1 ok 1"
  set -- $line
  ACTION=$2; SECONDS_=${3:-1}; COUNT=${4:-1}
}
advance() { echo $(( $(cat "$ENGINE_GPU_RUN_FAKE_CLOCK") + $1 )) >"$ENGINE_GPU_RUN_FAKE_CLOCK"; }
logcall() { printf '%s\n' "$*" >>"$FAKE_CALLS"; }
hang() { exec sleep 3600; }
