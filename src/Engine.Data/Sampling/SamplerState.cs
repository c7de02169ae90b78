using System.Text.Json;

namespace Engine.Data;

/// <summary>
/// The saved position of a sample stream: its kind, integer values (cursor, epoch, RNG state, fingerprint of the
/// configuration) and the states of child streams. Serializes to JSON; loading checks kind and fingerprint.
/// </summary>
public sealed class SamplerState
{
    static readonly JsonSerializerOptions Options = new() { WriteIndented = true };

    public string Kind { get; set; } = "";
    public Dictionary<string, long> Values { get; set; } = [];
    public Dictionary<string, SamplerState> Children { get; set; } = [];

    public string ToJson() => JsonSerializer.Serialize(this, Options);

    public static SamplerState FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        try
        {
            return JsonSerializer.Deserialize<SamplerState>(json) ?? throw new InvalidDataException("sampler state: JSON is null");
        }
        catch (JsonException e) { throw new InvalidDataException($"sampler state: invalid JSON ({e.Message})", e); }
    }

    internal long Get(string key) => Values.TryGetValue(key, out long v) ? v
        : throw new InvalidDataException($"sampler state ({Kind}): missing value '{key}'");

    internal void Expect(string kind, params (string Key, long Value)[] fingerprint)
    {
        if (Kind != kind) throw new InvalidDataException($"sampler state is for a '{Kind}' stream, not '{kind}'");
        foreach (var (k, v) in fingerprint)
        {
            long got = Get(k);
            if (got != v) throw new InvalidDataException($"sampler state ({kind}): '{k}' is {got} but this stream has {v}; the state belongs to a different configuration");
        }
    }
}

/// <summary>SplitMix64: a tiny generator whose whole state is one 64-bit value, so it saves exactly.</summary>
public struct SplitMix64(ulong seed)
{
    public ulong State = seed;

    public ulong NextUInt64()
    {
        ulong z = State += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform in [0, n) without modulo bias.</summary>
    public int NextInt(int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n), n, "must be positive");
        ulong limit = ulong.MaxValue - ulong.MaxValue % (ulong)n;
        ulong r;
        do r = NextUInt64(); while (r >= limit);
        return (int)(r % (ulong)n);
    }

    /// <summary>A permutation of 0..n-1 (Fisher–Yates), fully determined by the seed.</summary>
    public static int[] Permutation(int n, ulong seed)
    {
        var p = new int[n];
        for (int i = 0; i < n; i++) p[i] = i;
        var rng = new SplitMix64(seed);
        for (int i = n - 1; i > 0; i--)
        {
            int j = rng.NextInt(i + 1);
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }

    /// <summary>Seed for epoch <paramref name="epoch"/> of a stream seeded with <paramref name="seed"/>.</summary>
    public static ulong Derive(ulong seed, long epoch)
    {
        var r = new SplitMix64(seed ^ (0xD1B54A32D192ED03UL * (ulong)(epoch + 1)));
        return r.NextUInt64();
    }
}
