#!/usr/bin/env bash
# Builds the one file a GPU run carries (docs/GPU_RUN.md), on a machine with the .NET SDK, NuGet and nvcc 11.8:
#   .device-carry/engine-gpu.tar.xz
#     app/               the self-contained Engine.Cuda.Tests (xunit v3 in-process runner) + the `engine` CLI, linux-x64
#                        (the GPU machine has neither the .NET runtime nor a network), Code Coverage's payload removed
#     kernels-nvcc11.8/  this machine's fatbins (sm_80, sm_90 + compute_90 PTX): gpu_run.sh's fallback when the GPU
#                        machine's nvcc cannot build the kernels
#     COMMIT             the commit the app and fatbins were built from (.git may not travel), "-dirty" with changes
# and checks the size against the device tool's 64 MiB limit for tree + carried files. Run it in the checkout the
# session was started in (that checkout is what travels), after committing.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=.device-carry
STAGE=$CARRY/stage
LIMIT=$((64 * 1024 * 1024))

rm -rf "$STAGE"
mkdir -p "$STAGE/app" "$STAGE/kernels-nvcc11.8"
dotnet publish tests/Engine.Cuda.Tests -c Release -r linux-x64 --self-contained -o "$STAGE/app" -v quiet -nologo
dotnet publish src/Engine.Cli -c Release -r linux-x64 --self-contained -o "$STAGE/app" -v quiet -nologo
# Microsoft.CodeCoverage's instrumentation payload (~24 MB, every OS): the in-process runner never loads it
rm -rf "$STAGE/app"/{CodeCoverage,alpine,arm64,macos,ubuntu,x64,x86}

cmake -S . -B build/native -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/native -j "${JOBS:-1}"
cp build/native/kernels/*.fatbin "$STAGE/kernels-nvcc11.8/"

commit=$(git rev-parse HEAD)
git diff --quiet HEAD -- . ':!.device-carry' || { commit="$commit-dirty"; echo "gpu_pack: warning: uncommitted changes (COMMIT $commit)" >&2; }
echo "$commit" >"$STAGE/COMMIT"

tar -C "$STAGE" -cf - . | xz -T0 -6 >"$CARRY/engine-gpu.tar.xz.tmp"
mv -f "$CARRY/engine-gpu.tar.xz.tmp" "$CARRY/engine-gpu.tar.xz"
rm -rf "$STAGE"

carry_bytes=$(stat -c %s "$CARRY/engine-gpu.tar.xz")
# what travels besides the carry: tracked and untracked-not-ignored files (shared/ inside the checkout included)
tree_bytes=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
total=$((carry_bytes + tree_bytes))
awk -v c="$carry_bytes" -v t="$tree_bytes" -v f="$CARRY/engine-gpu.tar.xz" -v k="$commit" 'BEGIN {
  printf "gpu_pack: %s = %.1f MiB (commit %s); tree %.1f MiB; together %.1f MiB of the 64 MiB limit\n", f, c / 1048576, k, t / 1048576, (c + t) / 1048576 }'
if [ "$total" -gt $((LIMIT - 4 * 1024 * 1024)) ]; then
  echo "gpu_pack: error: tree + carry leave less than 4 MiB under the limit; ignore or remove large untracked files" >&2
  exit 1
fi
