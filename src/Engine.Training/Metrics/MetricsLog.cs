using Engine.Core;
using Engine.Core.Distributed;
using Engine.Observability.TensorBoard;

namespace Engine.Training.Metrics;

/// <summary>
/// Turns each <see cref="StepMetrics"/> into the shared <see cref="StepRecord"/>: MFU, per-device tokens/s, ETA,
/// memory, skip count and, with several ranks, the per-rank step/compute time spread (one max all-reduce, so every
/// rank calls <see cref="Record"/>); the lead rank appends it to metrics.jsonl and, when asked, to a TensorBoard
/// event file (tags "train/…", or "&lt;stage&gt;/…" in a recipe).
/// </summary>
public sealed class MetricsLog : IDisposable
{
    readonly ICommunicator comm;
    readonly IBackend backend;
    readonly StreamWriter? jsonl;
    readonly string? jsonlPath;
    bool writeFailed;
    readonly TensorBoardWriter? tensorBoard;
    int? firstStep;
    int skipped;
    string? stage;
    readonly Queue<(long Tokens, double Seconds)> recent = new();
    long lastTokens;

    /// <summary>Steps the current tokens/s is measured over (TorchTitan reports per log interval; a short window
    /// shows a slowdown within a few steps without one step's noise).</summary>
    public const int CurrentWindow = 10;

    public Throughput Throughput { get; private set; }

    /// <summary>metrics.jsonl at <paramref name="jsonlPath"/> (lead rank; appended when resuming), TensorBoard
    /// events under <paramref name="tensorBoardDir"/> when not null.</summary>
    public MetricsLog(ICommunicator comm, IBackend backend, Throughput throughput, string? jsonlPath, bool append = false, string? tensorBoardDir = null)
    {
        this.comm = comm;
        this.backend = backend;
        Throughput = throughput;
        this.jsonlPath = jsonlPath;
        if (comm.Rank == 0 && jsonlPath != null) jsonl = Guarded(() => new StreamWriter(jsonlPath, append));
        if (comm.Rank == 0 && tensorBoardDir != null) tensorBoard = new TensorBoardWriter(tensorBoardDir);
    }

    /// <summary>The TensorBoard event file being written (null when off or not the lead rank).</summary>
    public string? TensorBoardFile => tensorBoard?.FilePath;

    /// <summary>Starts a recipe stage: its own MFU figures, ETA and skip count.</summary>
    public void BeginStage(string name, Throughput throughput)
    {
        stage = name;
        Throughput = throughput;
        firstStep = null;
        skipped = 0;
        recent.Clear();
    }

    /// <summary>Builds, writes and returns the record of step <paramref name="m"/>; call on every rank.</summary>
    public StepRecord Record(StepMetrics m)
    {
        // current tokens/s: the steps' own wall times (validation, checkpoints and logging between steps excluded) over
        // the last CurrentWindow steps; the first record of a run or stage has only the average
        if (firstStep == null) firstStep = m.Step;
        else if (m.StepSeconds > 0) recent.Enqueue((m.Tokens - lastTokens, m.StepSeconds));   // a skipped-batches step trained nothing
        lastTokens = m.Tokens;
        while (recent.Count > CurrentWindow) recent.Dequeue();
        double windowSeconds = recent.Sum(x => x.Seconds);
        double current = windowSeconds > 0 ? recent.Sum(x => x.Tokens) / windowSeconds : m.TokensPerSecond;
        if (m.Skipped || !double.IsFinite(m.GradNorm)) skipped++;
        skipped = Math.Max(skipped, m.SkippedSteps);       // the loop's count includes the steps before a resume
        double? stepMin = null, stepMax = null, computeMin = null, computeMax = null;
        if (comm.WorldSize > 1)
        {
            Span<double> v = [m.StepSeconds, -m.StepSeconds, m.ComputeSeconds, -m.ComputeSeconds];
            comm.AllReduce(v, ReduceOp.Max);
            (stepMax, stepMin, computeMax, computeMin) = (v[0], -v[1], v[2], -v[3]);
        }
        int done = m.Step - firstStep.Value + 1;
        var stats = backend as IDeviceStats;
        var r = new StepRecord
        {
            Stage = stage,
            Step = m.Step,
            TotalSteps = m.TotalSteps,
            Loss = m.Loss,
            GradNorm = m.GradNorm,
            Lr = m.Lr,
            Tokens = m.Tokens,
            TokensPerS = m.TokensPerSecond,
            TokensPerSPerDevice = m.TokensPerSecond / comm.WorldSize,
            TokensPerSCurrent = current,
            Mfu = Throughput.Mfu(m.TokensPerSecond),
            MfuCurrent = Throughput.Mfu(current),
            MfuPeakFlops = Throughput.PeakFlops,
            MfuPeak = m.Step == firstStep ? Throughput.PeakSource : null,   // the description once per run or stage
            ElapsedS = m.ElapsedSeconds,
            EtaS = m.ElapsedSeconds / done * (m.TotalSteps - m.Step),
            StepS = m.StepSeconds,
            StepSMin = stepMin,
            StepSMax = stepMax,
            ComputeSMin = computeMin,
            ComputeSMax = computeMax,
            HostMemBytes = Environment.WorkingSet,
            DeviceMemBytes = stats?.DeviceBytesInUse,
            DeviceMemPeakBytes = stats?.DevicePeakBytes,
            SkippedSteps = skipped,
            Skipped = m.Skipped ? true : null,
            ValidLoss = m.ValidLoss,
            SourceLoss = m.SourceLosses is { Count: > 0 } s ? s : null,
            EwcPenalty = m.EwcPenalty != 0 ? m.EwcPenalty : null,
        };
        if (jsonl != null)
            Guarded(() =>
            {
                SafeIo.Inject(jsonlPath!);
                jsonl.WriteLine(r.ToJson());
                jsonl.Flush();
                return 0;
            });
        tensorBoard?.AddScalars(m.Step, Scalars(r));
        return r;
    }

    /// <summary>The TensorBoard scalars of a record: "train/loss", …, or "&lt;stage&gt;/loss" in a recipe.</summary>
    public static List<KeyValuePair<string, double>> Scalars(StepRecord r)
    {
        string p = (r.Stage ?? "train") + "/";
        var list = new List<KeyValuePair<string, double>>
        {
            new(p + "loss", r.Loss), new(p + "grad_norm", r.GradNorm), new(p + "lr", r.Lr),
            new(p + "tokens_per_s", r.TokensPerS), new(p + "tokens_per_s_per_device", r.TokensPerSPerDevice), new(p + "tokens_per_s_current", r.TokensPerSCurrent),
            new(p + "tokens", r.Tokens), new(p + "host_mem_gib", r.HostMemBytes / (double)(1 << 30)), new(p + "skipped_steps", r.SkippedSteps),
        };
        if (r.Mfu is { } mfu) list.Add(new(p + "mfu", mfu));
        if (r.MfuCurrent is { } mc) list.Add(new(p + "mfu_current", mc));
        if (r.DeviceMemBytes is { } dm) list.Add(new(p + "device_mem_gib", dm / (double)(1 << 30)));
        if (r.StepSMax is { } sm) list.Add(new(p + "step_s_max", sm));
        if (r.StepSMin is { } sn) list.Add(new(p + "step_s_min", sn));
        if (r.ValidLoss is { } vl) list.Add(new(p + "valid_loss", vl));
        if (r.SourceLoss is { } sl) foreach (var (k, v) in sl) list.Add(new(p + "loss_" + k, v));
        return list;
    }

    /// <summary>A write of metrics.jsonl: an I/O failure is one line (SafeIo) naming the last good checkpoint.</summary>
    T Guarded<T>(Func<T> write)
    {
        try { return SafeIo.Writing("the metrics", jsonlPath!, SafeIo.LastCheckpoint(Path.GetDirectoryName(Path.GetFullPath(jsonlPath!))!), write); }
        catch (StorageException) { writeFailed = true; throw; }
    }

    public void Dispose()
    {
        try { jsonl?.Dispose(); }
        catch (IOException) when (writeFailed) { }   // the failure was reported; the buffered line cannot be written either
        tensorBoard?.Dispose();
    }
}
