"""Which BLAS a peer process runs, and with which kernels: imported by the peers (sgemm_openblas.py,
torch_llama_train.py) so every result file records it.

OpenBLAS built with DYNAMIC_ARCH (Debian's) picks its kernels for the CPU at load time unless OPENBLAS_CORETYPE
names others (e.g. Haswell = AVX2 on an AVX-512 machine); openblas_get_corename() says which it picked. The engine's
bench harness unsets such pins in the peer's environment (Engine.Training.Bench.MachineInfo.PeerPins) and stores
what this returns.
"""
import ctypes
import os


def mapped_libraries(words=("blas", "lapack")):
    """Shared objects this process has mapped whose path holds one of words (real paths, sorted)."""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            path = parts[-1] if len(parts) >= 6 else ""
            if path.startswith("/") and any(w in path for w in words):
                libs.add(os.path.realpath(path))
    return sorted(libs)


def openblas_kernel(libs):
    """{"library", "corename", "config", "threads"} of the first mapped OpenBLAS, or None when none answers."""
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
            corename, config = lib.openblas_get_corename, lib.openblas_get_config
        except (OSError, AttributeError):
            continue
        corename.restype = config.restype = ctypes.c_char_p
        return {"library": path, "corename": corename().decode(), "config": config().decode().strip(),
                "threads": lib.openblas_get_num_threads()}
    return None


def describe():
    """The peer's BLAS: mapped libraries, the OpenBLAS kernel, the pins it saw (OPENBLAS_* variables)."""
    libs = mapped_libraries()
    return {"mapped": libs, "openblas": openblas_kernel(libs),
            "environment": {k: v for k, v in sorted(os.environ.items())
                            if k.startswith("OPENBLAS_") or k in ("OMP_NUM_THREADS", "ATEN_CPU_CAPABILITY")}}
