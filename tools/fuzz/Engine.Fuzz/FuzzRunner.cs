using System.Diagnostics;
using Engine.Training.Config;

namespace Engine.Fuzz;

/// <summary>One input that broke the contract, with how to rebuild it.</summary>
public sealed record FuzzFailure(long Iteration, string How, string Problem, string? SavedInput);

/// <summary>What a run did: inputs accepted, refused (by exception type), the slowest input and the largest allocation.</summary>
public sealed record FuzzStats(string Target, int Seeds, long Inputs, long Accepted, long Refused, IReadOnlyDictionary<string, long> RefusedBy,
    double Seconds, double SlowestSeconds, long MaxAllocatedBytes, IReadOnlyList<FuzzFailure> Failures)
{
    public override string ToString() =>
        $"{Target}: {Inputs:N0} inputs ({Seeds} seeds) in {Seconds:F1} s — {Accepted:N0} accepted, {Refused:N0} refused " +
        $"({string.Join(", ", RefusedBy.OrderByDescending(kv => kv.Value).Select(kv => $"{kv.Key} {kv.Value:N0}"))}); " +
        $"slowest {SlowestSeconds * 1000:F0} ms, largest allocation {MaxAllocatedBytes / 1048576.0:F1} MiB, {Failures.Count} failures";
}

/// <summary>Where a running fuzz loop is (read by a watchdog: a hung input is named, not just timed out).</summary>
public sealed class FuzzProgress
{
    public long Iteration;
    public string How = "";
    public long StartTicks;
}

/// <summary>
/// Runs a target over its seeds and then over seeded mutations of them, checking every input against the contract the
/// CLI relies on: the reader accepts it, or refuses it with one of the user-error exceptions the CLI prints as one line
/// (<see cref="InvalidDataException"/>, <see cref="ArgumentException"/>, <see cref="ConfigException"/>,
/// <see cref="FileNotFoundException"/>, <see cref="DirectoryNotFoundException"/>, <see cref="NotSupportedException"/>)
/// whose message is one line naming the file; never another exception (IndexOutOfRange, NullReference, Overflow,
/// OutOfMemory, …), never more than <see cref="SlowLimit"/> on one input, never an allocation beyond
/// <see cref="AllocationBound"/>. Every seed must be accepted (a target that refuses its seeds tests nothing).
/// </summary>
public static class FuzzRunner
{
    /// <summary>One input taking longer than this is a failure (a hang, or work not bounded by the input's size).</summary>
    public static readonly TimeSpan SlowLimit = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Most bytes one input may make the reader allocate: 64 MiB plus 256 per input byte — a reader that sizes an
    /// allocation by a number in the file rather than by the file trips it long before memory runs out.
    /// </summary>
    public static long AllocationBound(long inputBytes) => (64L << 20) + 256 * inputBytes;

    public static bool IsUserError(Exception e) => e is InvalidDataException or ArgumentException or ConfigException
        or FileNotFoundException or DirectoryNotFoundException or NotSupportedException;

    /// <summary>Null when the exception is an acceptable refusal of an input in <paramref name="dir"/>, else what is wrong with it.</summary>
    public static string? Check(Exception e, string dir)
    {
        if (!IsUserError(e)) return $"{e.GetType().Name} (not a user error): {e.Message}\n{e.StackTrace}";
        if (string.IsNullOrWhiteSpace(e.Message)) return $"{e.GetType().Name} with an empty message";
        if (e.Message.Contains('\n')) return $"{e.GetType().Name} message is not one line: {e.Message}";
        if (!e.Message.Contains(dir, StringComparison.Ordinal)) return $"{e.GetType().Name} does not name the file: {e.Message}\n{e.StackTrace}";
        return null;
    }

    /// <summary>
    /// The seeds, then inputs <paramref name="from"/> .. from+count-1 of the run seeded <paramref name="seed"/>.
    /// Failing inputs are written to <paramref name="keepFailures"/> when given.
    /// </summary>
    public static FuzzStats Run(FuzzTarget target, SeedCorpus corpus, long count, ulong seed, long from = 0, string? keepFailures = null,
        FuzzProgress? progress = null, bool runSeeds = true)
    {
        var seeds = target.Seeds(corpus);
        var mutator = new Mutator(seeds);
        string dir = FuzzPaths.NewTempDir(target.Name);
        var refusedBy = new Dictionary<string, long>(StringComparer.Ordinal);
        var failures = new List<FuzzFailure>();
        long accepted = 0, refused = 0, inputs = 0, maxAlloc = 0;
        double slowest = 0;
        var total = Stopwatch.StartNew();
        try
        {
            target.Prepare?.Invoke(dir, corpus);
            void One(long iteration, byte[] input, string how, bool mustAccept)
            {
                if (progress != null) { progress.Iteration = iteration; progress.How = how; progress.StartTicks = Stopwatch.GetTimestamp(); }
                long alloc0 = GC.GetAllocatedBytesForCurrentThread();
                long t0 = Stopwatch.GetTimestamp();
                string? problem = null;
                try
                {
                    target.Run(input, dir);
                    accepted++;
                }
                catch (Exception e)
                {
                    problem = Check(e, dir);
                    if (problem == null)
                    {
                        refused++;
                        string type = e.GetType().Name;
                        refusedBy[type] = refusedBy.GetValueOrDefault(type) + 1;
                        if (mustAccept) problem = $"seed refused: {e.Message}";
                    }
                }
                double secs = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                long alloc = GC.GetAllocatedBytesForCurrentThread() - alloc0;
                inputs++;
                slowest = Math.Max(slowest, secs);
                maxAlloc = Math.Max(maxAlloc, alloc);
                if (problem == null && secs > SlowLimit.TotalSeconds) problem = $"took {secs:F1} s (limit {SlowLimit.TotalSeconds} s)";
                if (problem == null && alloc > AllocationBound(input.Length))
                    problem = $"allocated {alloc:N0} bytes for a {input.Length:N0}-byte input (bound {AllocationBound(input.Length):N0})";
                if (problem != null)
                {
                    string? saved = null;
                    if (keepFailures != null)
                    {
                        Directory.CreateDirectory(keepFailures);
                        saved = Path.Combine(keepFailures, $"{target.Name}-{(iteration < 0 ? "seed" + (-iteration - 1) : iteration.ToString())}.bin");
                        File.WriteAllBytes(saved, input);
                    }
                    failures.Add(new FuzzFailure(iteration, how, problem, saved));
                }
            }
            if (runSeeds)
                for (int i = 0; i < seeds.Count; i++) One(-i - 1, seeds[i], $"seed {i} unchanged", mustAccept: true);
            for (long it = from; it < from + count; it++)
            {
                var (input, how) = mutator.Mutate(seed, it);
                One(it, input, how, mustAccept: false);
            }
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
        return new FuzzStats(target.Name, seeds.Count, inputs, accepted, refused, refusedBy, total.Elapsed.TotalSeconds, slowest, maxAlloc, failures);
    }
}
