#!/usr/bin/env bash
# Coverage-guided fuzzing of the engine's file readers: afl++ (Debian) drives SharpFuzz-instrumented assemblies.
#   tools/fuzz/fuzz.sh TARGET|all [SECONDS]     SECONDS per target (default 300); `engine-fuzz list` names the targets
# Seeds come from the shipped files (engine-fuzz seeds); findings go to build/fuzz/findings/TARGET/default/{crashes,hangs}.
# A crash is an input whose reader threw something other than a one-line user error naming the file (see
# tools/fuzz/README.md); replay one with: dotnet build/fuzz/bin/engine-fuzz.dll repro TARGET FILE
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${1:?usage: tools/fuzz/fuzz.sh TARGET|all [SECONDS]}
secs=${2:-300}
out=build/fuzz
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

# 1. afl++ from Debian, the SharpFuzz instrumenter from NuGet (a dotnet tool, pinned like the package).
if ! command -v afl-fuzz >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "afl-fuzz missing: apt-get install afl++ (as root)"; exit 1; }
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends afl++ >/dev/null
fi
[ -x "$out/tools/sharpfuzz" ] || dotnet tool install --tool-path "$out/tools" SharpFuzz.CommandLine --version 2.3.0 >/dev/null

# 2. Publish the harness (a fresh copy each time: instrumenting is done in place).
rm -rf "$out/bin" "$out/work"
dotnet publish tools/fuzz/Engine.Fuzz/Engine.Fuzz.csproj -c Release -o "$out/bin" --nologo -v quiet
targets=$target
[ "$target" = all ] && targets=$(dotnet "$out/bin/engine-fuzz.dll" list | awk '{print $1}')

# 3. Seeds from the shipped data and configs, and each target's fixed files (the weights beside a fuzzed config.json, …),
#    made before instrumenting: instrumented code runs only under the fuzzer (SharpFuzz's trace map is set up there).
dotnet "$out/bin/engine-fuzz.dll" seeds "$out/seeds" >/dev/null
for t in $targets; do dotnet "$out/bin/engine-fuzz.dll" prepare "$t" "$out/work/$t" >/dev/null; done

# 4. Instrument the reader assemblies (and the TOML parser they use).
for asm in Engine.Data Engine.Model Engine.Training Engine.Core Tomlyn; do
  "$out/tools/sharpfuzz" "$out/bin/$asm.dll" >/dev/null
done

# 5. Fuzz each target for SECONDS. afl++ on a .NET target: no fork server binary check, no memory limit (the runtime
#    reserves address space), 10 s per input before it is a hang.
export AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
for t in $targets; do
  echo "[fuzz] $t for ${secs}s"
  mkdir -p "$out/findings"
  afl-fuzz -i "$out/seeds/$t" -o "$out/findings/$t" -t 10000 -m none -V "$secs" -- dotnet "$out/bin/engine-fuzz.dll" afl "$t" "$out/work/$t" >"$out/afl-$t.log" 2>&1 || true
  stats="$out/findings/$t/default/fuzzer_stats"
  if [ -f "$stats" ]; then
    execs=$(awk -F' : ' '/^execs_done/ {print $2}' "$stats"); paths=$(awk -F' : ' '/^corpus_count/ {print $2}' "$stats")
    crashes=$(find "$out/findings/$t/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
    hangs=$(find "$out/findings/$t/default/hangs" -type f -name 'id:*' 2>/dev/null | wc -l)
    echo "[fuzz] $t: $execs executions, corpus $paths, $crashes crashes, $hangs hangs"
  else
    echo "[fuzz] $t: afl-fuzz did not start (see $out/afl-$t.log)"; tail -5 "$out/afl-$t.log"
  fi
done
