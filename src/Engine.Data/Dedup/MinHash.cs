using System.Numerics;
using System.Runtime.InteropServices;

namespace Engine.Data.Dedup;

/// <summary>
/// MinHash over character k-gram shingles of the normalized text (lower-cased, whitespace runs collapsed to one
/// space — works for English and Chinese alike). Each shingle is hashed once to 32 bits (FNV-1a + avalanche), then
/// permutation i is <c>h_i(x) = mix(x ⊕ s_i)·a_i</c> with a final xor-shift; the signature keeps each minimum.
/// The permutations run as SIMD lanes (<see cref="Vector{T}"/> of uint).
/// </summary>
public sealed class MinHasher
{
    readonly uint[] _salt, _mul;

    public MinHasher(int shingleSize, int permutations, ulong seed)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(shingleSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(permutations, 1);
        ShingleSize = shingleSize;
        Permutations = permutations;
        var rng = new SplitMix64(seed);
        _salt = new uint[permutations];
        _mul = new uint[permutations];
        for (int i = 0; i < permutations; i++)
        {
            _salt[i] = (uint)rng.NextUInt64();
            _mul[i] = (uint)rng.NextUInt64() | 1u;
        }
    }

    public int ShingleSize { get; }
    public int Permutations { get; }

    /// <summary>Lower-cases and collapses whitespace runs to single spaces, trimming the ends.</summary>
    public static string Normalize(string text)
    {
        var sb = new System.Text.StringBuilder(text.Length);
        bool space = false;
        foreach (char c in text)
        {
            if (char.IsWhiteSpace(c)) { space = sb.Length > 0; continue; }
            if (space) { sb.Append(' '); space = false; }
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }

    /// <summary>Distinct shingle hashes of <paramref name="text"/> (one shingle when the text is shorter than k).</summary>
    public HashSet<uint> Shingles(string text)
    {
        string n = Normalize(text);
        var set = new HashSet<uint>();
        if (n.Length == 0) return set;
        int k = Math.Min(ShingleSize, n.Length);
        for (int i = 0; i + k <= n.Length; i++) set.Add(Hash(n.AsSpan(i, k)));
        return set;
    }

    static uint Hash(ReadOnlySpan<char> s)
    {
        uint h = 2166136261;
        foreach (char c in s) { h = (h ^ c) * 16777619; }
        h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13; h *= 0xC2B2AE35; h ^= h >> 16;
        return h;
    }

    public uint[] Signature(string text) => Signature(Shingles(text));

    public uint[] Signature(HashSet<uint> shingles)
    {
        var sig = new uint[Permutations];
        Array.Fill(sig, uint.MaxValue);
        var salt = MemoryMarshal.Cast<uint, Vector<uint>>(_salt.AsSpan());
        var mul = MemoryMarshal.Cast<uint, Vector<uint>>(_mul.AsSpan());
        var min = MemoryMarshal.Cast<uint, Vector<uint>>(sig.AsSpan());
        int vecEnd = min.Length * Vector<uint>.Count;
        foreach (uint x in shingles)
        {
            var vx = new Vector<uint>(x);
            for (int j = 0; j < min.Length; j++)
            {
                var h = (vx ^ salt[j]) * mul[j];
                h ^= h >>> 15;
                h *= mul[j];
                h ^= h >>> 13;
                min[j] = Vector.Min(min[j], h);
            }
            for (int i = vecEnd; i < sig.Length; i++)
            {
                uint h = (x ^ _salt[i]) * _mul[i];
                h ^= h >> 15;
                h *= _mul[i];
                h ^= h >> 13;
                if (h < sig[i]) sig[i] = h;
            }
        }
        return sig;
    }

    /// <summary>Fraction of equal signature entries: an unbiased estimate of the Jaccard similarity.</summary>
    public static double EstimateJaccard(uint[] a, uint[] b)
    {
        if (a.Length != b.Length) throw new ArgumentException("signatures differ in length");
        int eq = 0;
        for (int i = 0; i < a.Length; i++) if (a[i] == b[i]) eq++;
        return a.Length == 0 ? 0 : eq / (double)a.Length;
    }

    public static double ExactJaccard(HashSet<uint> a, HashSet<uint> b)
    {
        if (a.Count == 0 && b.Count == 0) return 1;
        int inter = 0;
        var (small, large) = a.Count <= b.Count ? (a, b) : (b, a);
        foreach (var x in small) if (large.Contains(x)) inter++;
        return inter / (double)(a.Count + b.Count - inter);
    }
}
