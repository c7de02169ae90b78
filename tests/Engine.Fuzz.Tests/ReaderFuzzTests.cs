using Engine.Fuzz;

namespace Engine.Fuzz.Tests;

/// <summary>
/// The deterministic fuzz run of every reader (tools/fuzz): its seeds from the shipped files, then 10,000 seeded
/// mutations (bit flips, truncations, splices, extreme lengths and numbers, random bytes, structure-aware JSON/TOML and
/// safetensors-header changes). Each input must be accepted or refused with a one-line user error naming the file —
/// never another exception, more than 10 s, or an allocation past 64 MiB + 256 bytes per input byte. A failure prints
/// the input's number and how it was made; `engine-fuzz mutate TARGET --seed 13 --from I --count 1 --keep DIR` rebuilds it.
/// The targets are split over two classes so that xunit runs them on both cores.
/// </summary>
public static class ReaderFuzz
{
    /// <summary>Inputs per reader (the issue's minimum); ENGINE_FUZZ_COUNT overrides it for longer local runs.</summary>
    public static long Count => long.TryParse(Environment.GetEnvironmentVariable("ENGINE_FUZZ_COUNT"), out long n) && n > 0 ? n : 10_000;

    public const ulong Seed = 13;

    /// <summary>A hung input fails the test by name instead of stalling the suite.</summary>
    static readonly TimeSpan Watchdog = TimeSpan.FromMinutes(5);

    static readonly Lazy<SeedCorpus> Corpus = new(SeedCorpus.Locate);

    public static void Run(string target)
    {
        var progress = new FuzzProgress();
        var run = Task.Run(() => FuzzRunner.Run(FuzzTargets.Get(target), Corpus.Value, Count, Seed, progress: progress,
            keepFailures: Path.Combine(Path.GetTempPath(), "engine-fuzz-failures")));
        if (!run.Wait(Watchdog))
            Assert.Fail($"{target}: input {progress.Iteration} ({progress.How}) still running after {Watchdog.TotalMinutes} minutes (a hang)");
        var stats = run.Result;
        TestContext.Current.TestOutputHelper?.WriteLine(stats.ToString());
        Assert.Equal(Count + stats.Seeds, stats.Inputs);
        Assert.True(stats.Failures.Count == 0, $"{stats}\n" + string.Join("\n", stats.Failures.Take(10).Select(f =>
            $"input {f.Iteration} ({f.How}){(f.SavedInput != null ? " saved as " + f.SavedInput : "")}: {f.Problem}")));
        // the run reached past the parsers: some mutated inputs were accepted, some refused
        Assert.True(stats.Accepted > stats.Seeds, $"{target}: no mutated input was accepted — the mutations never get past the parser ({stats})");
        Assert.True(stats.Refused > 0, $"{target}: no input was refused ({stats})");
    }

    public static TheoryData<string> Binary => ["safetensors", "safetensors-index", "model-config", "gguf", "shard", "tokenizer", "labeled", "checkpoint",
        "prepare-jsonl-zst", "prepare-parquet", "prepare-pdf"];

    public static TheoryData<string> Text => ["train-config", "train-config-json", "recipe-config", "prepare-config", "prepare-config-json",
        "documents-txt", "documents-jsonl", "documents-json", "documents-csv", "instructions", "prepare-html"];
}

public class BinaryReaderFuzzTests
{
    [Theory]
    [MemberData(nameof(ReaderFuzz.Binary), MemberType = typeof(ReaderFuzz))]
    public void TenThousandMutatedInputsGetOneLineErrors(string target) => ReaderFuzz.Run(target);
}

public class TextReaderFuzzTests
{
    [Theory]
    [MemberData(nameof(ReaderFuzz.Text), MemberType = typeof(ReaderFuzz))]
    public void TenThousandMutatedInputsGetOneLineErrors(string target) => ReaderFuzz.Run(target);

    [Fact]
    public void EveryTargetIsInOneOfTheTwoLists()
    {
        var listed = ReaderFuzz.Binary.Select(r => r.Data).Concat(ReaderFuzz.Text.Select(r => r.Data)).Order().ToList();
        Assert.Equal(FuzzTargets.All.Select(t => t.Name).Order().ToList(), listed);
    }

    [Fact]
    public void MutationsAreDeterministicAndVaried()
    {
        var m = new Mutator([System.Text.Encoding.UTF8.GetBytes("""{"a": 1, "b": [2, 3], "c": "x"}"""), [1, 2, 3, 4, 5, 6, 7, 8, 9]]);
        var first = Enumerable.Range(0, 200).Select(i => m.Mutate(13, i)).ToList();
        var again = Enumerable.Range(0, 200).Select(i => m.Mutate(13, i)).ToList();
        Assert.Equal(first.Select(x => Convert.ToHexString(x.Data)), again.Select(x => Convert.ToHexString(x.Data)));
        Assert.True(first.Select(x => Convert.ToHexString(x.Data)).Distinct().Count() > 150);
        Assert.Contains(first, x => x.How.Contains(", json:", StringComparison.Ordinal));     // structure-aware changes happen
        Assert.Contains(first, x => x.How.Contains("truncate", StringComparison.Ordinal));
        Assert.Contains(first, x => x.How.Contains("bit flips", StringComparison.Ordinal));
    }
}
