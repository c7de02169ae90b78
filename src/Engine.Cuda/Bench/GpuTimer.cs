namespace Engine.Cuda.Bench;

/// <summary>Per-call milliseconds of one measurement: the median over the timed groups, with the fastest and slowest
/// group as the spread, and how many calls each group held.</summary>
public readonly record struct TimingResult(double MedianMs, double MinMs, double MaxMs, int Iters, int Repeats);

/// <summary>
/// Times GPU work with CUDA events (METHOD.md): warm-up calls (module load, first-touch, handle creation stay out),
/// one timed call to size the groups, then <see cref="TimingOptions.Repeats"/> groups of N back-to-back calls, each
/// group between two events on the stream; per-call time = group time / N; the median group is reported.
/// The launches go through the caller's stream, so work timed here must be enqueued on <see cref="Stream"/>.
/// </summary>
public sealed class GpuTimer : IDisposable
{
    private readonly CudaEvent _start, _end;
    private readonly TimingOptions _options;

    public CudaStream Stream { get; }

    public GpuTimer(CudaStream stream, TimingOptions options)
    {
        options.Validate();
        Stream = stream;
        _options = options;
        _start = new CudaEvent();
        _end = new CudaEvent();
    }

    public TimingResult Time(Action call)
    {
        for (int i = 0; i < _options.Warmup; i++) call();
        Stream.Synchronize();
        double estimate = Group(call, 1);
        int iters = ItersFor(estimate, _options.TargetMsPerRepeat, _options.MinIters, _options.MaxIters);
        var samples = new double[_options.Repeats];
        for (int r = 0; r < samples.Length; r++) samples[r] = Group(call, iters) / iters;
        return new TimingResult(Median(samples), samples.Min(), samples.Max(), iters, samples.Length);
    }

    private double Group(Action call, int iters)
    {
        _start.Record(Stream);
        for (int i = 0; i < iters; i++) call();
        _end.Record(Stream);
        _end.Synchronize();   // surfaces an asynchronous launch failure as a CudaException here
        return _end.ElapsedSince(_start);
    }

    /// <summary>Calls per group so that a group lasts about <paramref name="targetMs"/>, within [min, max].</summary>
    public static int ItersFor(double estimateMs, double targetMs, int min, int max)
    {
        if (!(estimateMs > 0)) return max;   // below the event resolution (or NaN): as many as allowed
        double n = Math.Ceiling(targetMs / estimateMs);
        return (int)Math.Clamp(n, min, max);
    }

    /// <summary>Median (mean of the two middle values for an even count).</summary>
    public static double Median(ReadOnlySpan<double> values)
    {
        if (values.IsEmpty) throw new ArgumentException("median of no values", nameof(values));
        var sorted = values.ToArray();
        Array.Sort(sorted);
        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : 0.5 * (sorted[mid - 1] + sorted[mid]);
    }

    public void Dispose()
    {
        _start.Dispose();
        _end.Dispose();
    }
}
