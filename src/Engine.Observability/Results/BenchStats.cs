namespace Engine.Observability.Results;

/// <summary>Median and spread of timed repeats (warm-up already dropped by the caller).</summary>
public readonly record struct BenchStats(double Median, double Min, double Max, int Repeats)
{
    /// <summary>Median (mean of the middle two for an even count), min and max of <paramref name="samples"/>.</summary>
    public static BenchStats Of(IEnumerable<double> samples)
    {
        var s = samples.ToArray();
        if (s.Length == 0) throw new ArgumentException("no samples: a benchmark needs at least one timed repeat", nameof(samples));
        foreach (double v in s)
            if (!double.IsFinite(v)) throw new ArgumentException($"sample {v} is not finite", nameof(samples));
        Array.Sort(s);
        double median = s.Length % 2 == 1 ? s[s.Length / 2] : 0.5 * (s[s.Length / 2 - 1] + s[s.Length / 2]);
        return new BenchStats(median, s[0], s[^1], s.Length);
    }

    /// <summary>Our speed over the peer's: peer/ours when lower is better, ours/peer when higher is; null if either is not positive.</summary>
    public static double? Ratio(string better, double ours, double peer)
    {
        if (!(ours > 0 && peer > 0)) return null;
        return better switch
        {
            BenchSchema.Lower => peer / ours,
            BenchSchema.Higher => ours / peer,
            _ => throw new ArgumentException($"better must be '{BenchSchema.Lower}' or '{BenchSchema.Higher}', got '{better}'", nameof(better)),
        };
    }
}

/// <summary>The calls a benchmark runner makes to build its entries (then BenchResultIO.Write).</summary>
public static class BenchEntries
{
    /// <summary>
    /// An entry from timed samples (warm-up excluded; <paramref name="warmup"/> records how many were dropped).
    /// Samples are kept in the file when there are at most <paramref name="keepSamplesUpTo"/> of them.
    /// </summary>
    public static BenchEntry FromSamples(string name, string device, string unit, string better, IReadOnlyList<double> samples,
        int warmup = 0, int keepSamplesUpTo = 64)
    {
        if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException("benchmark name is empty", nameof(name));
        var st = BenchStats.Of(samples);
        BenchStats.Ratio(better, 1, 1); // validates better
        return new BenchEntry
        {
            Name = name,
            Device = device,
            Unit = unit,
            Better = better,
            Median = st.Median,
            Min = st.Min,
            Max = st.Max,
            Repeats = st.Repeats,
            Warmup = warmup,
            Samples = samples.Count <= keepSamplesUpTo ? samples.ToArray() : null,
        };
    }

    /// <summary>The peer's figure from its timed samples.</summary>
    public static PeerFigure Peer(string name, IReadOnlyList<double> samples, string? version = null)
    {
        var st = BenchStats.Of(samples);
        return new PeerFigure { Name = name, Version = version, Median = st.Median, Min = st.Min, Max = st.Max, Repeats = st.Repeats };
    }

    /// <summary>This entry with the peer attached and the ratio computed from the two medians.</summary>
    public static BenchEntry WithPeer(this BenchEntry e, PeerFigure peer) =>
        e with { Peer = peer, Ratio = BenchStats.Ratio(e.Better, e.Median, peer.Median) };

    /// <summary>A benchmark that could not be measured: recorded with its reason, never plotted.</summary>
    public static BenchEntry Failed(string name, string device, string unit, string better, string error) =>
        new() { Name = name, Device = device, Unit = unit, Better = better, Median = 0, Error = error };
}
