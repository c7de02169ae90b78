using System.Diagnostics;
using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Core.Distributed;
using Engine.Model;
using Engine.Observability.Results;
using Engine.Parallel;
using Engine.Training.Parallel;

namespace Engine.Training.Bench;

/// <summary>Shape of the data-parallel benchmark: a ~3M-parameter Llama, per-rank batch fixed (weak scaling).</summary>
public sealed record DataParallelBenchOptions
{
    public int Hidden { get; init; } = 256;
    public int Layers { get; init; } = 4;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 2;
    public int Ffn { get; init; } = 688;
    public int Vocab { get; init; } = 4096;
    public int Seq { get; init; } = 128;
    /// <summary>Micro-batch rows per rank.</summary>
    public int Batch { get; init; } = 4;
    /// <summary>Micro-batches per rank per step.</summary>
    public int GradAccum { get; init; } = 2;
    public int Steps { get; init; } = 6;
    public int Warmup { get; init; } = 2;
    public double BucketMb { get; init; } = 25;
    public int[] Stages { get; init; } = [0, 1, 2, 3];
}

/// <summary>
/// Data parallelism and ZeRO on this process's world (start it with `engine launch --nproc-per-node N -- bench dp`):
/// per ZeRO stage, the step time (slowest rank, median over timed steps after warm-up), global tokens/s, the bytes each
/// rank communicated per step — as counted by the communicator (bus bytes: what one rank sends in the
/// bandwidth-optimal algorithm; payload bytes) and, when Open MPI runs over TCP on loopback
/// (OMPI_MCA_btl=tcp,self), as measured on the wire (/proc/net/dev "lo" transmit bytes ÷ ranks) — against the
/// analytic figure for the stage, and the scaling efficiency against a one-rank baseline file of the same shape.
/// <para>
/// Overlap: the seconds the compute thread waited for collectives during the timed steps (DataParallel's exposed
/// communication: gradient reductions, ZeRO-3's gathers) against the seconds the same collectives take alone, issued
/// back to back on buffers of the same sizes after the timed steps (<see cref="CommOnlySeconds"/>): overlap = 1 −
/// exposed / alone, the share of the communication hidden behind compute.
/// </para>
/// </summary>
public static class DataParallelBenchmark
{
    public const string Suite = "dp";

    /// <summary>Analytic bytes one rank sends per step: all-reduce 2(N−1)/N·P, reduce-scatter and all-gather (N−1)/N·P
    /// each (P = fp32 gradient/weight bytes); ZeRO-2 reduce-scatters every micro-batch; ZeRO-3 gathers the weights
    /// twice and reduce-scatters the gradients once per micro-batch: 3 × (N−1)/N·P each (the weights in the working
    /// dtype: <paramref name="weightBytes"/>, P by default).</summary>
    public static double AnalyticBytes(int stage, int ranks, int accum, double bytes, double? weightBytes = null)
    {
        if (ranks <= 1) return 0;
        double part = (ranks - 1.0) / ranks * bytes, weights = (ranks - 1.0) / ranks * (weightBytes ?? bytes);
        return stage switch
        {
            0 => 2 * part,
            1 => 2 * part + part,
            2 => accum * part + part,
            _ => accum * (2 * weights + part),
        };
    }

    /// <summary>
    /// The seconds one step's collectives of <paramref name="dp"/> take alone: issued back to back, as the step issues
    /// them, on scratch buffers of the same sizes — stage 0/1: each bucket all-reduced once (stage 1: its slices
    /// all-gathered); stage 2: each bucket reduce-scattered per micro-batch and all-gathered once; stage 3, per
    /// micro-batch: each unit all-gathered twice (the forward's last once: it stays for its backward) in the working
    /// dtype and reduce-scattered once. Collective.
    /// </summary>
    public static double CommOnlySeconds(DataParallel dp, int accum)
    {
        var be = dp.Store.Backend;
        var comm = dp.Comm;
        var buckets = dp.Layout.Buckets;
        var wdt = dp.Units?.WorkingDType ?? DType.F32;
        var scratch = buckets.Select(b => be.Empty([checked((int)b.Length)]).Keep()).ToList();
        var weights = dp.Stage == 3 ? buckets.Select(b => be.Empty([checked((int)b.Length)], wdt).Keep()).ToList() : [];
        var shards = buckets.Select(b => be.Empty([checked((int)(b.Length / comm.WorldSize))]).Keep()).ToList();
        try
        {
            comm.Barrier();
            var sw = Stopwatch.StartNew();
            var works = new List<ICommWork>();
            long Share(GradBucket b) => b.Length / comm.WorldSize;
            switch (dp.Stage)
            {
                case 0 or 1:
                    foreach (var b in buckets.Reverse()) works.Add(comm.AllReduce(scratch[b.Index]));
                    if (dp.Stage == 1)
                        foreach (var b in buckets) works.Add(comm.AllGather(scratch[b.Index].Range(comm.Rank * Share(b), Share(b)), scratch[b.Index]));
                    break;
                case 2:
                    for (int m = 0; m < accum; m++)
                        foreach (var b in buckets.Reverse()) works.Add(comm.ReduceScatter(scratch[b.Index], shards[b.Index]));
                    foreach (var b in buckets) works.Add(comm.AllGather(scratch[b.Index].Range(comm.Rank * Share(b), Share(b)), scratch[b.Index]));
                    break;
                default:
                    for (int m = 0; m < accum; m++)
                    {
                        foreach (var b in buckets) works.Add(comm.AllGather(weights[b.Index].Range(comm.Rank * Share(b), Share(b)), weights[b.Index]));
                        foreach (var b in buckets.Reverse())
                        {
                            if (b.Index != buckets.Count - 1) works.Add(comm.AllGather(weights[b.Index].Range(comm.Rank * Share(b), Share(b)), weights[b.Index]));
                            works.Add(comm.ReduceScatter(scratch[b.Index], shards[b.Index]));
                        }
                    }
                    break;
            }
            foreach (var w in works) w.Wait();
            Span<double> slowest = [sw.Elapsed.TotalSeconds];
            comm.AllReduce(slowest, ReduceOp.Max);
            return slowest[0];
        }
        finally
        {
            foreach (var t in scratch.Concat(weights).Concat(shards)) t.Dispose();
        }
    }

    sealed class RandomTokens(int vocab, ulong seed) : IBatchSource
    {
        readonly Rng rng = new(seed);

        public Batch Next(int batch, int seqLen)
        {
            var ids = new int[batch * seqLen];
            var tg = new int[batch * seqLen];
            for (int i = 0; i < ids.Length; i++) { ids[i] = rng.NextInt(vocab); tg[i] = rng.NextInt(vocab); }
            return new Batch(ids, tg, Enumerable.Repeat("train", batch).ToArray());
        }
    }

    /// <summary>Bytes transmitted on the loopback interface so far (null when /proc/net/dev has no "lo").</summary>
    public static long? LoopbackTxBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/net/dev"))
            {
                var t = line.Trim();
                if (!t.StartsWith("lo:", StringComparison.Ordinal)) continue;
                var f = t[3..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return long.Parse(f[8], System.Globalization.CultureInfo.InvariantCulture);
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }

    /// <summary>Whether this job's MPI traffic goes over TCP loopback, so lo's counters measure it.</summary>
    public static bool WireMeasurable(ICommunicator comm) =>
        comm.Kind == "mpi" && (Environment.GetEnvironmentVariable("OMPI_MCA_btl") ?? "").Replace(" ", "", StringComparison.Ordinal) is "tcp,self" or "self,tcp";

    public static BenchResult? Run(IBackend backend, ICommunicator comm, DataParallelBenchOptions o, string? baselinePath, Action<string>? log = null)
    {
        var start = DateTimeOffset.UtcNow;
        int world = comm.WorldSize;
        var cfg = new LlamaConfig
        {
            VocabSize = o.Vocab,
            HiddenSize = o.Hidden,
            IntermediateSize = o.Ffn,
            NumLayers = o.Layers,
            NumHeads = o.Heads,
            NumKvHeads = o.KvHeads,
            MaxPositionEmbeddings = o.Seq,
        }.Validate();
        var baseline = baselinePath != null ? BenchResultIO.Read(baselinePath) : null;
        bool wire = WireMeasurable(comm);
        var entries = new List<BenchEntry>();
        long parameters = 0;
        foreach (int stage in o.Stages)
        {
            using var model = new LlamaModel(cfg, backend);
            model.InitializeWeights(0);
            parameters = model.ParameterCount;
            using var dp = DataParallel.Create(model.Store, comm, stage, o.BucketMb);
            var optim = new AdamWOptions { Lr = 1e-4 };
            using var opt = new AdamW(model, optim, dp);
            var data = new RandomTokens(o.Vocab, 1);
            var loop = new LoopOptions { BatchSize = o.Batch, SeqLen = o.Seq, GradAccum = o.GradAccum, Optim = optim };
            var times = new List<double>();
            long bus = 0, payload = 0, wireBytes = 0;
            double exposed = 0;
            for (int step = 0; step < o.Warmup + o.Steps; step++)
            {
                comm.Barrier();
                var before = comm.Stats.Snapshot();
                long? lo0 = comm.Rank == 0 && wire ? LoopbackTxBytes() : null;
                dp.ResetWaits();
                var sw = Stopwatch.StartNew();
                TrainingLoop.Run(model, data, loop with { Steps = step + 1, StartStep = step }, opt);
                double seconds = sw.Elapsed.TotalSeconds;
                Span<double> waited = [dp.ExposedCommSeconds];
                comm.AllReduce(waited, ReduceOp.Max);
                Span<double> slowest = [seconds];
                comm.AllReduce(slowest, ReduceOp.Max);
                long? lo1 = comm.Rank == 0 && wire ? LoopbackTxBytes() : null;
                if (step < o.Warmup) continue;
                times.Add(slowest[0]);
                exposed += waited[0];
                var after = comm.Stats.Snapshot();
                bus += after.Sum(kv => kv.Value.BusBytes) - before.Sum(kv => kv.Value.BusBytes);
                payload += after.Sum(kv => kv.Value.PayloadBytes) - before.Sum(kv => kv.Value.PayloadBytes);
                if (lo0 is { } a && lo1 is { } b) wireBytes += b - a;
            }
            double tokensPerStep = (double)world * o.GradAccum * o.Batch * o.Seq;
            var rates = times.Select(t => tokensPerStep / t).ToList();
            double flatBytes = dp.Store.Capacity * 4.0, paramBytes = parameters * 4.0;
            double? weightBytes = dp.Units != null ? parameters * (double)dp.Units.WorkingDType.Size() : null;
            double alone = world > 1 ? CommOnlySeconds(dp, o.GradAccum) : 0;
            double exposedPerStep = exposed / o.Steps;
            var p = new JsonObject
            {
                ["ranks"] = world,
                ["zero"] = stage,
                ["communicator"] = comm.Kind,
                ["oversubscribed"] = world > Environment.ProcessorCount,
                ["step_ms_median"] = BenchStats.Of(times).Median * 1e3,
                ["bus_bytes_per_rank_per_step"] = bus / (double)o.Steps,
                ["payload_bytes_per_rank_per_step"] = payload / (double)o.Steps,
                ["wire_bytes_per_rank_per_step"] = wire ? wireBytes / (double)o.Steps / world : null,
                ["analytic_bytes_per_rank_per_step"] = AnalyticBytes(stage, world, o.GradAccum, paramBytes, weightBytes),
                ["analytic_bytes_padded"] = AnalyticBytes(stage, world, o.GradAccum, flatBytes, weightBytes * flatBytes / paramBytes),
                ["exposed_comm_ms_per_step"] = exposedPerStep * 1e3,
                ["comm_alone_ms_per_step"] = alone * 1e3,
                ["overlap"] = alone > 0 ? Math.Max(0, 1 - exposedPerStep / alone) : null,
                ["gathered_units_bytes_per_step"] = dp.Units is { } u ? u.GatheredBytes / (double)(o.Warmup + o.Steps) : null,
                ["parameters"] = parameters,
                ["flat_elements"] = dp.Store.Capacity,
                ["optimizer_state_bytes_per_rank"] = opt.StateBytes,
                ["gradient_bytes_per_rank"] = dp.GradientBytes,
                ["buckets"] = dp.Layout.Buckets.Count,
            };
            var entry = BenchEntries.FromSamples($"dp{world}_zero{stage}", backend.Name == "cuda" ? "cuda:0" : "cpu", "tokens/s", BenchSchema.Higher, rates, o.Warmup)
                with
            { Group = "dp", Flops = cfg.TrainingFlopsPerToken(o.Seq), Params = p };
            if (baseline?.Benchmarks.FirstOrDefault(b => b.Name == $"dp1_zero{stage}" || b.Name == "dp1_zero0") is { } one && one.Median > 0)
                p["scaling_efficiency"] = entry.Median / (world * one.Median);
            entries.Add(entry);
            log?.Invoke($"dp {world} ZeRO-{stage}: {entry.Median:F0} tokens/s, step {p["step_ms_median"]!.GetValue<double>():F0} ms, " +
                $"bus {bus / (double)o.Steps / 1e6:F2} MB/rank/step (analytic {AnalyticBytes(stage, world, o.GradAccum, paramBytes, weightBytes) / 1e6:F2})" +
                (alone > 0 ? $", communication {alone * 1e3:F0} ms alone, {exposedPerStep * 1e3:F0} ms exposed (overlap {Math.Max(0, 1 - exposedPerStep / alone):P0})" : "") +
                (wire ? $", wire {wireBytes / (double)o.Steps / world / 1e6:F2} MB" : "") +
                (p["scaling_efficiency"] is { } e ? $", efficiency {e.GetValue<double>():P0}" : ""));
        }
        if (comm.Rank != 0) return null;
        var (commit, dirty) = MachineProbe.Git();
        var notes = new List<string>();
        if (world > Environment.ProcessorCount) notes.Add($"{world} ranks on {Environment.ProcessorCount} cores: oversubscribed, so the efficiency mostly measures sharing the cores");
        if (!wire && world > 1) notes.Add("wire bytes not measured: MPI was not restricted to TCP (OMPI_MCA_btl=tcp,self)");
        if (wire) notes.Add("wire bytes = loopback transmit bytes during the timed steps ÷ ranks: includes TCP/IP headers and the watchdog's heartbeats");
        return new BenchResult
        {
            Suite = Suite,
            Date = start,
            Commit = commit,
            Dirty = dirty,
            Command = Environment.CommandLine,
            Machine = MachineProbe.Describe(probeGpus: backend.Name == "cuda"),
            Config = new JsonObject
            {
                ["hidden"] = o.Hidden,
                ["layers"] = o.Layers,
                ["heads"] = o.Heads,
                ["kv_heads"] = o.KvHeads,
                ["ffn"] = o.Ffn,
                ["vocab"] = o.Vocab,
                ["seq"] = o.Seq,
                ["batch_per_rank"] = o.Batch,
                ["grad_accum"] = o.GradAccum,
                ["bucket_mb"] = o.BucketMb,
                ["ranks"] = world,
                ["baseline"] = baselinePath,
            },
            Method = $"{o.Warmup} warm-up + {o.Steps} timed steps per stage; a barrier before each step; step time = the slowest rank's wall time (max over ranks); tokens/s = global tokens per step / step time; " +
                "exposed communication = the slowest rank's waits for collectives per step; alone = one step's collectives issued back to back on scratch buffers; overlap = 1 − exposed / alone",
            Notes = notes,
            Benchmarks = entries,
        };
    }
}
