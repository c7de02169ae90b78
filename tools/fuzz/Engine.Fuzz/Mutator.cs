using System.Buffers.Binary;
using System.Text;

namespace Engine.Fuzz;

/*
 * Deterministic input mutation (AFL's havoc stage, without coverage feedback): input i of a run is a seed chosen by
 * the generator of (run seed, i), changed by 1-4 stacked operations drawn from the same generator, so any single input
 * can be rebuilt from (target, run seed, i) alone: `engine-fuzz mutate TARGET --seed S --from I --count 1 --keep DIR`.
 *
 *   bit flips (1-8)            interesting bytes (0, 0x7F, 0x80, 0xFF, JSON/TOML punctuation)
 *   interesting integers       1/2/4/8-byte little-endian 0, -1, 2^31, 2^32, 2^40, 2^63, … (often 8-aligned: length fields)
 *   text numbers               a digit run replaced by 1e12, 1e308, NaN, inf, -1, 2^63, "7", 1e-400, …
 *   text tokens                null, [], {}, "", deep nesting, = and # (TOML), \u escapes incl. a lone surrogate
 *   truncation, chunk delete, chunk duplicate, splice from another seed, random bytes, invalid UTF-8, NUL bytes
 *   (1 in 50 inputs is random bytes from scratch)
 * and, for a third of the operations, a structure-aware change that keeps the syntax (StructuredMutation): a JSON value,
 * a JSON line, a TOML value or line, or a safetensors header, so the input gets past the parser to the checks behind it.
 */
public sealed class Mutator
{
    readonly IReadOnlyList<byte[]> seeds;
    readonly int maxLength;

    public Mutator(IReadOnlyList<byte[]> seeds)
    {
        if (seeds.Count == 0) throw new ArgumentException("a mutator needs at least one seed");
        this.seeds = seeds;
        maxLength = seeds.Max(s => s.Length) * 2 + 4096;
    }

    /// <summary>Input <paramref name="iteration"/> of the run seeded <paramref name="runSeed"/>, with a one-line account of how it was made.</summary>
    public (byte[] Data, string How) Mutate(ulong runSeed, long iteration)
    {
        var rng = new SplitMix(runSeed ^ (0x9E3779B97F4A7C15UL * (ulong)(iteration + 1)));
        if (rng.Below(50) == 0)
        {
            var random = new byte[rng.Below(512)];
            rng.Fill(random);
            return (random, $"random {random.Length} bytes");
        }
        int seedIndex = rng.Below(seeds.Count);
        var data = new List<byte>(seeds[seedIndex]);
        var how = new StringBuilder($"seed {seedIndex}");
        int ops = 1 + (rng.Below(2) == 0 ? 0 : rng.Below(4));
        for (int k = 0; k < ops; k++) how.Append(", ").Append(Apply(data, rng));
        if (data.Count > maxLength) data.RemoveRange(maxLength, data.Count - maxLength);
        return (data.ToArray(), how.ToString());
    }

    static readonly byte[] InterestingBytes = [0, 1, 0x7F, 0x80, 0xFF, (byte)'"', (byte)'{', (byte)'}', (byte)'[', (byte)']', (byte)',',
        (byte)':', (byte)'\n', (byte)'=', (byte)'0', (byte)'9', (byte)'-', (byte)'.', (byte)'\\', (byte)'e'];

    static readonly ulong[] InterestingInts = [0, 1, 2, 7, 8, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
        0x100000000, 1UL << 40, 1UL << 53, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, ulong.MaxValue, ulong.MaxValue - 7, 100_000_001];

    static readonly string[] TextNumbers = ["0", "-1", "-0", "1e12", "2e9", "1e30", "1e308", "1e309", "-1e308", "1e-400", "NaN", "nan", "inf", "-inf",
        "Infinity", "9223372036854775807", "9223372036854775808", "18446744073709551616", "2147483647", "2147483648", "4294967296",
        "1048576", "1.5", "0.0", "\"7\"", "true", "null", "0x10", "1_000", "99999999999999999999999999999999"];

    static readonly string[] TextTokens = ["null", "true", "[]", "{}", "\"\"", "\"a\"", ",", ":", "=", "#", "[[x]]", "[x]", "\n", "\"\\u0000\"",
        "\"\\ud800\"", "\"\\udc00x\"", "\\", "'", "\"\"\"", "{\"a\":1,\"a\":2}", "a = 1\na = 2\n", new string('[', 100), new string('{', 40),
        string.Concat(Enumerable.Repeat("{\"a\":", 70)), "1979-05-27T07:32:00Z", "(a+)+$"];

    string Apply(List<byte> d, SplitMix rng)
    {
        // a third of the operations keep the syntax and change the content (reaching the checks behind the parser)
        if (rng.Below(3) == 0 && StructuredMutation.Apply(d, rng) is { } structured) return structured;
        int n = d.Count;
        switch (rng.Below(13))
        {
            case 0 when n > 0:
                {
                    int flips = 1 + rng.Below(8);
                    for (int i = 0; i < flips; i++) { int p = rng.Below(n); d[p] ^= (byte)(1 << rng.Below(8)); }
                    return $"{flips} bit flips";
                }
            case 1 when n > 0:
                {
                    int p = rng.Below(n);
                    d[p] = InterestingBytes[rng.Below(InterestingBytes.Length)];
                    return $"byte {p} = 0x{d[p]:X2}";
                }
            case 2 when n > 0:
                {
                    ulong v = InterestingInts[rng.Below(InterestingInts.Length)];
                    if (rng.Below(2) == 0) v = unchecked(0 - v);
                    int width = 1 << rng.Below(4);
                    int p = rng.Below(Math.Max(1, n - width + 1));
                    if (rng.Below(2) == 0) p &= ~7;
                    Span<byte> b = stackalloc byte[8];
                    BinaryPrimitives.WriteUInt64LittleEndian(b, v);
                    for (int i = 0; i < width && p + i < n; i++) d[p + i] = b[i];
                    return $"int{width * 8} 0x{v:X} at {p}";
                }
            case 3:
                {
                    // a digit run (or a random place when there is none) becomes an extreme number
                    int start = -1, tries = 0;
                    while (tries++ < 16 && n > 0) { int p = rng.Below(n); if (d[p] is >= (byte)'0' and <= (byte)'9') { start = p; break; } }
                    string num = TextNumbers[rng.Below(TextNumbers.Length)];
                    if (start < 0) { int p = rng.Below(n + 1); d.InsertRange(p, Encoding.UTF8.GetBytes(num)); return $"insert {num} at {p}"; }
                    int s = start, e = start;
                    while (s > 0 && d[s - 1] is >= (byte)'0' and <= (byte)'9' or (byte)'.' or (byte)'e' or (byte)'-') s--;
                    while (e < n && d[e] is >= (byte)'0' and <= (byte)'9' or (byte)'.' or (byte)'e' or (byte)'-') e++;
                    d.RemoveRange(s, e - s);
                    d.InsertRange(s, Encoding.UTF8.GetBytes(num));
                    return $"number at {s} = {num}";
                }
            case 4:
                {
                    string tok = TextTokens[rng.Below(TextTokens.Length)];
                    int p = rng.Below(n + 1);
                    d.InsertRange(p, Encoding.UTF8.GetBytes(tok));
                    return $"insert token {(tok.Length > 12 ? tok[..12] + "…" : tok)} at {p}";
                }
            case 5 when n > 0:
                {
                    int keep = rng.Below(n);
                    d.RemoveRange(keep, n - keep);
                    return $"truncate to {keep}";
                }
            case 6 when n > 1:
                {
                    int p = rng.Below(n), len = 1 + rng.Below(Math.Min(n - p, 256));
                    d.RemoveRange(p, len);
                    return $"delete {len} at {p}";
                }
            case 7 when n > 1:
                {
                    int p = rng.Below(n), len = 1 + rng.Below(Math.Min(n - p, 256)), at = rng.Below(n + 1);
                    d.InsertRange(at, d.GetRange(p, len));
                    return $"duplicate {len} from {p} to {at}";
                }
            case 8:
                {
                    var other = seeds[rng.Below(seeds.Count)];
                    if (other.Length == 0) return "splice (empty)";
                    int p = rng.Below(other.Length), len = 1 + rng.Below(Math.Min(other.Length - p, 1024)), at = rng.Below(n + 1);
                    if (rng.Below(2) == 0 && at < n) d.RemoveRange(at, Math.Min(len, n - at));
                    d.InsertRange(at, other.AsSpan(p, len).ToArray());
                    return $"splice {len} at {at}";
                }
            case 9 when n > 0:
                {
                    int p = rng.Below(n), len = 1 + rng.Below(Math.Min(n - p, 64));
                    for (int i = 0; i < len; i++) d[p + i] = (byte)rng.Below(256);
                    return $"random {len} at {p}";
                }
            case 10:
                {
                    byte[][] bad = [[0xFF], [0xC3, 0x28], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82], [0xC0, 0xAF], [0]];
                    var b = bad[rng.Below(bad.Length)];
                    int p = rng.Below(n + 1);
                    d.InsertRange(p, b);
                    return $"bad UTF-8 {Convert.ToHexString(b)} at {p}";
                }
            case 11 when n > 0:
                {
                    // a line (text) or an 8-byte word (binary) repeated many times: long inputs, deep structures
                    int p = rng.Below(n), len = 1 + rng.Below(Math.Min(n - p, 32)), times = 2 + rng.Below(200);
                    var chunk = d.GetRange(p, len);
                    for (int i = 0; i < times; i++) d.InsertRange(p, chunk);
                    return $"repeat {len} bytes ×{times} at {p}";
                }
            default:
                {
                    int p = rng.Below(n + 1);
                    d.Insert(p, (byte)rng.Below(256));
                    return $"insert byte at {p}";
                }
        }
    }
}

/// <summary>SplitMix64: small, fast, and the same sequence on every platform and .NET version.</summary>
public sealed class SplitMix(ulong seed)
{
    ulong state = seed;

    public ulong Next()
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, n) (n ≥ 1).</summary>
    public int Below(int n) => n <= 1 ? 0 : (int)(Next() % (ulong)n);

    public void Fill(Span<byte> b)
    {
        for (int i = 0; i < b.Length; i++) b[i] = (byte)Next();
    }
}
