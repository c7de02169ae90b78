#!/usr/bin/env bash
# One self-contained single-file `engine` for linux-x64: the .NET runtime and the CUDA kernels (build/native's
# fatbins, sm_80 + sm_90, built here first when nvcc is present) inside one executable, so a cluster node needs only
# the NVIDIA driver; cuBLAS and NCCL are found on the node's usual paths, in a pip wheel's nvidia/*/lib, or beside
# the binary (`engine doctor` shows what it found). Usage: bash tools/publish.sh [output folder, default dist/linux-x64]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist/linux-x64}
# Its own bin/obj (ENGINE_PUBLISH_ARTIFACTS, default build/publish): a RID-specific restore and a build without .pdb
# files must not rewrite the working tree's bin/obj while `dotnet build` or `dotnet test` uses them.
artifacts=${ENGINE_PUBLISH_ARTIFACTS:-build/publish}
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  cmake -S . -B build/native >/dev/null && cmake --build build/native -j"$(nproc)" >/dev/null
fi
ls build/native/kernels/*.fatbin >/dev/null 2>&1 || echo "warning: no kernels in build/native/kernels: this engine will run on the CPU only" >&2
dotnet publish src/Engine.Cli/Engine.Cli.csproj -c Release -r linux-x64 --self-contained true \
  -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true -p:EmbedKernels=true \
  -p:DebugType=none -p:GenerateDocumentationFile=false --artifacts-path "$artifacts" -o "$out" -v q
ls -l "$out/engine"
