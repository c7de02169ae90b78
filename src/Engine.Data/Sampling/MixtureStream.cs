namespace Engine.Data;

/// <summary>
/// Source weights as a function of tokens consumed: constant, or a linear ramp of the normalized weights from
/// <see cref="Start"/> to <see cref="End"/> over <see cref="RampTokens"/> tokens (then held at <see cref="End"/>).
/// E.g. general:finance 9:1 → 4:1 is <c>Linear([9, 1], [4, 1], N)</c>: p(t) = (1 − t/N)·[0.9, 0.1] + t/N·[0.8, 0.2].
/// </summary>
public sealed class WeightSchedule
{
    public double[] Start { get; }
    public double[] End { get; }
    public long RampTokens { get; }

    WeightSchedule(double[] start, double[] end, long rampTokens)
    {
        Start = Normalize(start, nameof(start));
        End = Normalize(end, nameof(end));
        if (Start.Length != End.Length) throw new ArgumentException($"start has {Start.Length} weights but end has {End.Length}", nameof(end));
        ArgumentOutOfRangeException.ThrowIfNegative(rampTokens);
        RampTokens = rampTokens;
    }

    public static WeightSchedule Constant(params double[] weights) => new(weights, weights, 0);

    public static WeightSchedule Linear(double[] from, double[] to, long overTokens)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(overTokens, 1);
        return new(from, to, overTokens);
    }

    public int Count => Start.Length;

    /// <summary>Normalized weights after <paramref name="consumedTokens"/> tokens.</summary>
    public double[] At(long consumedTokens)
    {
        double a = RampTokens == 0 ? 1.0 : Math.Clamp((double)consumedTokens / RampTokens, 0.0, 1.0);
        var w = new double[Start.Length];
        for (int i = 0; i < w.Length; i++) w[i] = (1 - a) * Start[i] + a * End[i];
        return w;
    }

    static double[] Normalize(double[] w, string name)
    {
        ArgumentNullException.ThrowIfNull(w, name);
        if (w.Length == 0) throw new ArgumentException("no weights", name);
        double sum = 0;
        foreach (double x in w)
        {
            if (!(x >= 0) || double.IsInfinity(x)) throw new ArgumentException($"weights must be finite and >= 0 (got {x})", name);
            sum += x;
        }
        if (sum <= 0) throw new ArgumentException("weights sum to zero", name);
        return w.Select(x => x / sum).ToArray();
    }
}

/// <summary>
/// Mixes named child streams: before each sample a child is drawn with probability equal to its scheduled weight
/// at the tokens consumed so far (a sample consumes T tokens), from a seeded SplitMix64 generator. The sample's
/// <see cref="TrainingSample.Source"/> is the child's name. The state holds the generator, the token count and
/// every child's state, so a restored stream continues exactly as an uninterrupted one.
/// </summary>
public sealed class MixtureStream : ISampleStream
{
    const string Kind = "mixture";
    readonly (string Name, ISampleStream Stream)[] _children;
    readonly WeightSchedule _schedule;
    readonly ulong _seed;
    SplitMix64 _rng;
    readonly long[] _samples, _tokens;

    public MixtureStream(IReadOnlyList<(string Name, ISampleStream Stream)> children, WeightSchedule schedule, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(children);
        ArgumentNullException.ThrowIfNull(schedule);
        if (children.Count == 0) throw new ArgumentException("no child streams", nameof(children));
        if (schedule.Count != children.Count) throw new ArgumentException($"schedule has {schedule.Count} weights for {children.Count} streams", nameof(schedule));
        var names = new HashSet<string>();
        foreach (var (name, stream) in children)
        {
            if (string.IsNullOrEmpty(name) || !names.Add(name)) throw new ArgumentException($"child stream names must be unique and non-empty (got '{name}')", nameof(children));
            ArgumentNullException.ThrowIfNull(stream, nameof(children));
        }
        _children = [.. children];
        _schedule = schedule;
        _seed = seed;
        _rng = new SplitMix64(seed);
        _samples = new long[children.Count];
        _tokens = new long[children.Count];
    }

    public long ConsumedTokens { get; private set; }
    public IReadOnlyList<string> Names => _children.Select(c => c.Name).ToArray();
    /// <summary>Samples drawn from each child so far.</summary>
    public IReadOnlyList<long> SamplesPerSource => _samples;
    /// <summary>The weights the next draw will use.</summary>
    public double[] CurrentWeights => _schedule.At(ConsumedTokens);

    public TrainingSample Next()
    {
        var w = _schedule.At(ConsumedTokens);
        double u = _rng.NextDouble(), acc = 0;
        int pick = w.Length - 1;
        for (int i = 0; i < w.Length; i++)
        {
            acc += w[i];
            if (u < acc && w[i] > 0) { pick = i; break; }
        }
        while (w[pick] == 0) pick--;
        var s = _children[pick].Stream.Next();
        _samples[pick]++;
        _tokens[pick] += s.Length;
        ConsumedTokens += s.Length;
        return s.Source == _children[pick].Name ? s : s with { Source = _children[pick].Name };
    }

    public SamplerState SaveState()
    {
        var st = new SamplerState
        {
            Kind = Kind,
            Values = new()
            {
                ["rng"] = unchecked((long)_rng.State),
                ["consumed_tokens"] = ConsumedTokens,
                ["seed"] = unchecked((long)_seed),
                ["children"] = _children.Length,
            },
        };
        for (int i = 0; i < _children.Length; i++)
        {
            st.Values[$"samples.{_children[i].Name}"] = _samples[i];
            st.Values[$"tokens.{_children[i].Name}"] = _tokens[i];
            st.Children[_children[i].Name] = _children[i].Stream.SaveState();
        }
        return st;
    }

    public void LoadState(SamplerState s)
    {
        ArgumentNullException.ThrowIfNull(s);
        s.Expect(Kind, ("seed", unchecked((long)_seed)), ("children", _children.Length));
        for (int i = 0; i < _children.Length; i++)
            if (!s.Children.ContainsKey(_children[i].Name)) throw new InvalidDataException($"sampler state ({Kind}): no state for child '{_children[i].Name}'");
        for (int i = 0; i < _children.Length; i++)
        {
            _children[i].Stream.LoadState(s.Children[_children[i].Name]);
            _samples[i] = s.Get($"samples.{_children[i].Name}");
            _tokens[i] = s.Get($"tokens.{_children[i].Name}");
        }
        _rng = new SplitMix64(unchecked((ulong)s.Get("rng")));
        ConsumedTokens = s.Get("consumed_tokens");
    }
}
