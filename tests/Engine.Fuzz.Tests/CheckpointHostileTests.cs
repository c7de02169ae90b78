using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Parallel;
using Engine.Training;

namespace Engine.Fuzz.Tests;

/// <summary>
/// Checkpoint manifests (issue 13 item 5): the crashes the fuzz target `checkpoint` found in Checkpoints.Open and
/// LoadOptimizer, kept as regression tests, and a file path outside the checkpoint directory. Each edit is made to the
/// manifest of a real checkpoint (2 pipeline stages × 2 replicas, ZeRO-1: the fuzz seed) and must be refused with one
/// line naming the manifest — not a NullReference, a Dictionary's ArgumentNull or an Array.Copy range error.
/// </summary>
public class CheckpointHostileTests
{
    static readonly Lazy<SeedCorpus> Corpus = new(SeedCorpus.Locate);

    /// <summary>The seed checkpoint laid in a fresh directory, its manifest edited by <paramref name="edit"/>; then loaded as a resume would.</summary>
    static Exception? Load(TempDir dir, Action<JsonObject> edit)
    {
        foreach (var (name, bytes) in Corpus.Value.Checkpoint())
        {
            string path = Path.Combine(dir.Path, name);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllBytes(path, bytes);
        }
        string manifestPath = dir.File("manifest.json");
        var manifest = JsonNode.Parse(File.ReadAllText(manifestPath))!.AsObject();
        edit(manifest);
        File.WriteAllText(manifestPath, manifest.ToJsonString());
        return Record.Exception(() =>
        {
            var loaded = Checkpoints.Open(dir.Path);
            using var model = loaded.LoadModel(CpuBackend.Instance);
            using var dp = DataParallel.Create(model.Store, new SingleRankCommunicator(CpuBackend.Instance));
            using var opt = new AdamW(model, new AdamWOptions(), dp);
            loaded.LoadOptimizer(opt);
        });
    }

    static JsonObject Stage(JsonObject m, int i) => m["stages"]![i]!.AsObject();
    static JsonObject Slice(JsonObject m, int stage, int shard, int slice) => Stage(m, stage)["shards"]![shard]!["slices"]![slice]!.AsObject();

    [Fact]
    public void TheUneditedSeedLoads()
    {
        using var dir = new TempDir();
        Assert.Null(Load(dir, _ => { }));
    }

    [Theory]
    [InlineData("files null", "'files' or 'stages' is missing")]                       // was a NullReferenceException in Open
    [InlineData("parameter without a name", "a parameter without a name or shape")]    // was ArgumentNullException (Dictionary key)
    [InlineData("compact 2^31", "lies outside its file's")]                            // was ArgumentException from Array.Copy
    [InlineData("compact near long.MaxValue", "lies outside its file's")]             // was ArgumentOutOfRangeException ("arrays larger than 2GB")
    [InlineData("slice null", "lies outside stage")]
    [InlineData("overlapping slices", "overlap")]
    [InlineData("rank beyond the world", "rank 9 is repeated or outside 0..3")]
    [InlineData("stage index repeated", "stage index 0 (tensor rank 0) is repeated")]
    [InlineData("split beyond tp", "piece 0 of 4096 is not a piece of a split over tp 1")]   // was ArgumentException from Placement (fuzz input 244)                  // was ArgumentException (ToDictionary duplicate key)
    [InlineData("negative dimension", "is negative or overflows")]
    [InlineData("parameter past the capacity", "lie outside stage 0's capacity")]
    [InlineData("file outside the directory", "lies outside the checkpoint directory")]
    [InlineData("file name with a NUL", "is empty or holds a NUL")]
    public void ABrokenManifestIsOneLineNamingIt(string edit, string expected)
    {
        using var dir = new TempDir();
        var e = Load(dir, m =>
        {
            switch (edit)
            {
                case "files null": m["files"] = null; break;
                case "parameter without a name": Stage(m, 1)["parameters"]![0]!.AsObject().Remove("name"); break;
                case "compact 2^31": Slice(m, 0, 0, 0)["compact"] = 2147483648L; break;
                case "compact near long.MaxValue": Slice(m, 0, 0, 0)["compact"] = long.MaxValue - 3; break;
                case "slice null": Stage(m, 0)["shards"]![0]!["slices"]![0] = null; break;
                case "overlapping slices":
                    var second = Stage(m, 0)["shards"]![1]!["slices"]![0]!.AsObject();
                    second["start"] = Slice(m, 0, 0, 0)["start"]!.GetValue<long>();
                    break;
                case "rank beyond the world": Stage(m, 1)["shards"]![0]!["rank"] = 9; break;
                case "stage index repeated": Stage(m, 1)["index"] = 0; break;
                case "split beyond tp": Stage(m, 0)["parameters"]![0]!["parts"] = 4096; break;
                case "negative dimension": Stage(m, 0)["parameters"]![0]!["shape"]![0] = -4; break;
                case "parameter past the capacity": Stage(m, 0)["parameters"]![0]!["offset"] = Stage(m, 0)["capacity"]!.GetValue<long>(); break;
                case "file outside the directory": m["files"]!["../../etc/passwd"] = "00"; break;
                case "file name with a NUL": m["files"]!["optimizer/x\u0000y"] = "00"; break;
            }
        });
        Assert.IsType<InvalidDataException>(e);
        Assert.Contains(dir.Path, e!.Message);
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void AJsonErrorQuotingALineBreakIsOneLine()
    {
        using var dir = new TempDir();
        foreach (var (name, bytes) in Corpus.Value.Checkpoint())
        {
            string path = Path.Combine(dir.Path, name);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllBytes(path, bytes);
        }
        File.WriteAllText(dir.File("manifest.json"), "{\"format\": 2, \"files\": f\n}");   // the parser quotes the literal "f\n}"
        var e = Assert.Throws<InvalidDataException>(() => Checkpoints.Open(dir.Path));
        Assert.Contains('\n', e.InnerException?.Message ?? "");   // the case this test is about: the raw message spans lines
        Assert.Contains(dir.Path, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
