namespace Engine.Cuda.Tests.Reference;

/// <summary>
/// A CPU model of the warp-level operations native/common/mma.cuh builds on, written from the PTX ISA (not from our
/// helpers), so the helpers' lane address expressions and fragment plumbing can be checked without a GPU:
/// <list type="bullet">
/// <item>ldmatrix .x4: lanes 8i..8i+7 give the row addresses of 8x8 matrix i; lane l receives from every matrix the
/// pair (row l/4, columns 2(l%4), 2(l%4)+1), or with .trans the pair (rows 2(l%4), 2(l%4)+1, column l/4).</item>
/// <item>mma.m16n8k16 (row.col): with g = l/4, q = l%4, A regs a0 = A[g][2q..], a1 = A[g+8][2q..], a2 = A[g][2q+8..],
/// a3 = A[g+8][2q+8..]; B regs b0 = B[2q..2q+1][g], b1 = B[2q+8..2q+9][g]; C c0,c1 = C[g][2q..], c2,c3 = C[g+8][2q..].</item>
/// </list>
/// A register is a pair of values (low half = the smaller column/k index). Shared memory is a float array indexed in
/// bf16 elements; values in the tests are small integers, so every product is exact.
/// </summary>
public static class WarpEmulator
{
    public readonly record struct Reg(float Lo, float Hi);

    /// <summary>ldmatrix .x4 over <paramref name="smem"/>: <paramref name="address"/> gives lane l's row start (an element index).</summary>
    public static Reg[][] Ldsm(float[] smem, Func<int, int> address, bool trans)
    {
        var r = new Reg[32][];
        for (int l = 0; l < 32; l++)
        {
            r[l] = new Reg[4];
            for (int i = 0; i < 4; i++)
            {
                int Row(int row) => address(8 * i + row);
                r[l][i] = trans
                    ? new Reg(smem[Row(2 * (l % 4)) + l / 4], smem[Row(2 * (l % 4) + 1) + l / 4])
                    : new Reg(smem[Row(l / 4) + 2 * (l % 4)], smem[Row(l / 4) + 2 * (l % 4) + 1]);
            }
        }
        return r;
    }

    /// <summary>One mma.sync.m16n8k16: c[lane][0..3] += A (from a[lane][0..3]) x B (from b0[lane], b1[lane]).</summary>
    public static void Mma(float[][] c, Reg[][] a, Func<int, Reg> b0, Func<int, Reg> b1)
    {
        var A = new float[16, 16];
        var B = new float[16, 8];
        for (int l = 0; l < 32; l++)
        {
            int g = l / 4, q = l % 4;
            void SetA(int row, int col, Reg v) { A[row, col] = v.Lo; A[row, col + 1] = v.Hi; }
            SetA(g, 2 * q, a[l][0]); SetA(g + 8, 2 * q, a[l][1]); SetA(g, 2 * q + 8, a[l][2]); SetA(g + 8, 2 * q + 8, a[l][3]);
            B[2 * q, g] = b0(l).Lo; B[2 * q + 1, g] = b0(l).Hi;
            B[2 * q + 8, g] = b1(l).Lo; B[2 * q + 9, g] = b1(l).Hi;
        }
        for (int l = 0; l < 32; l++)
        {
            int g = l / 4, q = l % 4;
            for (int e = 0; e < 4; e++)
            {
                int row = g + (e >> 1) * 8, col = 2 * q + (e & 1);
                float s = 0;
                for (int k = 0; k < 16; k++) s += A[row, k] * B[k, col];
                c[l][e] += s;
            }
        }
    }

    public static float[][] Zeros() => Enumerable.Range(0, 32).Select(_ => new float[4]).ToArray();

    /// <summary>The kernels' c_to_a: C tiles 2kt and 2kt+1 of a row of n-tiles, as the A fragment of k-step kt.</summary>
    public static Reg[][] CToA(float[][][] s, int kt) =>
        Enumerable.Range(0, 32).Select(l => new[]
        {
            new Reg(s[2 * kt][l][0], s[2 * kt][l][1]), new Reg(s[2 * kt][l][2], s[2 * kt][l][3]),
            new Reg(s[2 * kt + 1][l][0], s[2 * kt + 1][l][1]), new Reg(s[2 * kt + 1][l][2], s[2 * kt + 1][l][3]),
        }).ToArray();

    // ---- the lane address expressions of native/common/mma.cuh, copied verbatim (element offsets) ----------------
    public static int LdsmA(int pitch, int r0, int c0, int lane) => (r0 + (lane & 15)) * pitch + c0 + (lane >> 4) * 8;
    public static int LdsmBNk(int pitch, int r0, int c0, int lane) => (r0 + (lane & 7) + ((lane >> 4) << 3)) * pitch + c0 + ((lane >> 3) & 1) * 8;
    public static int LdsmATrans(int pitch, int m0, int k0, int lane) => (k0 + (lane & 7) + ((lane >> 4) << 3)) * pitch + m0 + ((lane >> 3) & 1) * 8;
    public static int LoadBKn(int pitch, int k0, int n0, int lane) => (k0 + (lane & 15)) * pitch + n0 + (lane >> 4) * 8;

    /// <summary>Shared-memory banks touched by each 8-lane phase of an ldmatrix (16 bytes per row): conflict-free when
    /// every phase covers the 32 banks once.</summary>
    public static bool ConflictFree(Func<int, int> address, int baseBytes = 0)
    {
        for (int phase = 0; phase < 4; phase++)
        {
            var banks = new HashSet<int>();
            for (int row = 0; row < 8; row++)
            {
                int bytes = baseBytes + address(8 * phase + row) * 2;
                for (int w = 0; w < 4; w++) banks.Add((bytes / 4 + w) % 32);
            }
            if (banks.Count != 32) return false;
        }
        return true;
    }
}
