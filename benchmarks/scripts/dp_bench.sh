#!/usr/bin/env bash
# Data parallelism / ZeRO benchmark on CPU ranks (Open MPI): 1 rank, then 2 and 4 ranks through `engine launch`, MPI
# restricted to TCP on loopback so /proc/net/dev measures the bytes on the wire. Writes engine.bench/1 files
# (suite "dp") to benchmarks/results/. Usage: bash benchmarks/scripts/dp_bench.sh [bucket_mb] [steps]
set -euo pipefail
cd "$(dirname "$0")/../.."
bucket=${1:-25}; steps=${2:-10}
dotnet build src/Engine.Cli -c Release -v q >/dev/null
E=$PWD/src/Engine.Cli/bin/Release/net10.0/engine
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
out=benchmarks/results
before=$(ls -t $out/dp-*.json 2>/dev/null | head -1 || true)
"$E" bench dp --stages 0 --steps "$steps" --bucket-mb "$bucket" --out "$out"
baseline=$(ls -t $out/dp-*.json | head -1)
[ "$baseline" != "$before" ] || { echo "no one-rank result written"; exit 1; }
for n in 2 4; do
  OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include=lo "$E" launch --nproc-per-node "$n" -- \
    bench dp --steps "$steps" --bucket-mb "$bucket" --baseline "$baseline" --out "$out"
done
