using System.Runtime.Intrinsics.X86;

namespace Engine.Cpu.GemmKernels;

/// <summary>Which micro-kernel this process runs; fixed at start-up from the CPU's instruction sets.</summary>
internal enum GemmIsa { Scalar, Avx2, Avx512 }

/// <summary>
/// Tile sizes, in one place (like flash-attention's kernel_traits.h). Row-major C is vectorised along n:
/// the micro-kernel holds an MR x NR tile of C in registers, loads NR floats of a packed B row and broadcasts
/// MR floats of a packed A column per k step.
///
/// Loop nest (GotoBLAS/BLIS, written for row-major C = A·B), one thread (GemmDriver.Run):
///   pc over k in KC blocks          (alpha·acc + beta·C on the first block, + C after)
///     ic over m in MC blocks        pack A[ic:ic+MC, pc:pc+KC] as MR-row panels      (L3 resident)
///       jc over n in NC blocks      pack B[pc:pc+KC, jc:jc+NC] as NR-column panels   (L2 resident)
///         ir over MC step MR        one A micro-panel MR·KC floats                   (L1 resident)
///           jr over NC step NR      micro-kernel: B micro-panel streams from L2
/// Several threads (GemmDriver.RunShared): each owns whole MR-row panels (split m) or NR-column panels (split n)
/// of C, packs its own operand privately per k block, and all pack the other operand's NC (or MC) block
/// together into a double-buffered shared buffer, one barrier per block.
///
/// Measured on AMD EPYC Zen 4 (2 cores, 32 KiB L1d, 1 MiB L2 per core, AVX-512 double-pumped, 1 zmm FMA/cycle),
/// one thread, best of 9 (the box is shared with builds, medians drift ±10%):
///   12x32 (24 zmm accumulators, 2 B loads + 12 broadcasts per 24 FMAs): 102-106 GFLOP/s on 1024³ and 2048³,
///     OpenBLAS 0.3.21 one thread ~97-100 on the same runs; the JIT keeps all 24 accumulators in zmm2-25.
///   AVX2 6x16 (DOTNET_EnableAVX512=0): ~99-101 GFLOP/s on 1024³ too (Zen 4 executes zmm FMAs as two ymm halves),
///     so the fallback is not a slow path on this CPU; AVX-512 kept for half the instructions per flop.
///   KC x NC sweep on 1024³, KC in {192, 256, 320, 384, 512}, NC in {256, 384, 512, 768}: all within 99.7-106.1,
///     i.e. flat. KC 384 chosen so the model's k = 384 GEMMs run as one k block (C read/written once), worth
///     ~5-10% on 2048x384x384 in two noisy runs. A micro-panel 12·384·4 = 18 KiB (L1), B block KC·NC·4 =
///     576 KiB (L2).
/// </summary>
internal static class GemmTraits
{
    /// <summary>Must agree with the dispatch in <see cref="GemmMicroKernels.Run"/>.</summary>
    public static readonly GemmIsa Isa =
        Avx512F.IsSupported ? GemmIsa.Avx512 : Fma.IsSupported && Avx2.IsSupported ? GemmIsa.Avx2 : GemmIsa.Scalar;

    /// <summary>Rows of the register tile (broadcast operand, A).</summary>
    public static readonly int MR = Isa switch { GemmIsa.Avx512 => 12, GemmIsa.Avx2 => 6, _ => 4 };

    /// <summary>Columns of the register tile (vector operand, B): 2 vectors.</summary>
    public static readonly int NR = Isa switch { GemmIsa.Avx512 => 32, GemmIsa.Avx2 => 16, _ => 4 };

    /// <summary>Largest k block; k is split into equal blocks no larger than this.</summary>
    public const int KC = 384;

    /// <summary>Largest m block (rows of packed A); a multiple of every MR.</summary>
    public const int MC = 1152;

    /// <summary>Largest n block (columns of packed B); a multiple of every NR.</summary>
    public const int NC = 384;

    /// <summary>
    /// Multithreaded runs pack a thread's own rows (split m) or columns (split n) for a whole k block, in pieces
    /// of at most this many (4608·384·4 B = 7 MiB, an L3-resident block per core), so buffers stay bounded.
    /// </summary>
    public const int MaxPrivateRows = 4 * MC, MaxPrivateCols = 12 * NC;

    /// <summary>Problems with 2·m·n·k below this run on one thread (fork/join costs ~10-30 µs).</summary>
    public const long MinFlopsPerThread = 4_000_000;
}
