using System.Text.Json;
using Engine.Core;
using Engine.Model.IO;
using Engine.Tests.Model;
using Engine.Training;
using Engine.Training.Config;

namespace Engine.Tests.Training;

/// <summary>
/// Issue 28, in process: one run per output directory (a second refused by name, a dead holder's lock recovered, every
/// rank of a job told, a file where a run directory must be refused before training); resume checks file contents (a
/// same-size edit of a data file is refused; the hash cache reads a file once); a run the guard skipped through
/// entirely fails, and weights that are not finite are never saved as a result. (The process-level cases — kill -9,
/// disk full, read-only mounts — are StorageFaultProcessTests and Engine.Parallel.Tests' ResilienceProcessTests.)
/// </summary>
public class ReliabilityTests
{
    static TrainConfig Small(string outDir, string data, int steps, int every = 2) => new()
    {
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 1, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 },
        Data = new DataSection { Train = [data], ValidFraction = 0.02 },
        Train = new TrainSection { SeqLen = 32, BatchSize = 2, Steps = steps, Seed = 5, EvalBatches = 1 },
        Optim = new AdamWOptions { Lr = 1e-2 },
        Output = new OutputSection { Dir = outDir, CheckpointEvery = every, KeepCheckpoints = 3 },
    };

    /// <summary>A plain-text copy of a shipped file (the edit below must not touch the shipped data).</summary>
    static string CopyOfText(string dir)
    {
        string path = Path.Combine(dir, "corpus.txt");
        File.WriteAllText(path, string.Join("\n\n", Engine.Data.Documents.Read(Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")).Take(40)));
        return path;
    }

    [Fact]
    public void A_second_run_on_a_locked_directory_is_refused_naming_the_first()
    {
        using var dir = new TempDir();
        string outDir = Path.Combine(dir.Path, "run");
        using (var first = RunDirectoryLock.Acquire(outDir))
        {
            var e = Assert.Throws<StorageException>(() => RunDirectoryLock.Acquire(outDir));
            Assert.Contains($"{outDir} is in use by another run", e.Message);
            Assert.Contains($"pid {Environment.ProcessId} on host {Environment.MachineName}, started ", e.Message);
            Assert.DoesNotContain("\n", e.Message);
            // a whole train run is refused the same way, before it reads any data
            var t = Assert.Throws<StorageException>(() => new Trainer(Small(outDir, "/nonexistent.txt", 2), CpuBackend.Instance).Run(TestContext.Current.CancellationToken));
            Assert.Contains("is in use by another run", t.Message);
            Assert.Equal(Environment.ProcessId, RunDirectoryLock.ReadOwner(outDir)!.Pid);
        }
        // released: the record goes, the directory can be locked again
        Assert.Null(RunDirectoryLock.ReadOwner(outDir));
        using var again = RunDirectoryLock.Acquire(outDir);
        Assert.Null(again.Recovered);
    }

    [Fact]
    public void A_dead_holders_lock_is_recovered_and_reported()
    {
        using var dir = new TempDir();
        // what a killed run leaves: its record (its flock died with it)
        var dead = new RunDirectoryLock.Owner(int.MaxValue - 7, Environment.MachineName, new DateTime(2026, 1, 2, 3, 4, 5, DateTimeKind.Utc), "engine train --config old.toml", 12345);
        File.WriteAllText(Path.Combine(dir.Path, RunDirectoryLock.OwnerFile), JsonSerializer.Serialize(dead, new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower }));
        var said = new List<string>();
        using var l = RunDirectoryLock.Acquire(dir.Path, null, said.Add);
        Assert.Equal(dead.Pid, l.Recovered?.Pid);
        Assert.Contains(said, m => m.Contains($"took over the lock of pid {dead.Pid} on host {Environment.MachineName}, started 2026-01-02T03:04:05Z (engine train --config old.toml), which is no longer running"));
        Assert.Equal(Environment.ProcessId, RunDirectoryLock.ReadOwner(dir.Path)!.Pid);
    }

    /// <summary>Rank 0 takes the lock and tells the others: a refused job fails on every rank with the same line, none
    /// waits for another (the lock is held here by a "first run" in this process).</summary>
    [Fact]
    public void Every_rank_learns_the_lead_ranks_lock_outcome()
    {
        using var dir = new TempDir();
        using (RunDirectoryLock.Acquire(dir.Path))
        {
            var errors = Engine.Parallel.ThreadCommunicator.Run(3, c =>
            {
                try { using var l = RunDirectoryLock.Acquire(dir.Path, c); return ""; }
                catch (StorageException e) { return e.Message; }
            }, limit: TimeSpan.FromMinutes(1));
            Assert.All(errors, e => Assert.Contains("is in use by another run", e));
            Assert.Single(errors.Distinct());
        }
        var ok = Engine.Parallel.ThreadCommunicator.Run(2, c =>
        {
            using var l = RunDirectoryLock.Acquire(dir.Path, c);
            var pid = RunDirectoryLock.ReadOwner(dir.Path)?.Pid;
            c.Barrier();   // before rank 0 releases it
            return pid;
        }, limit: TimeSpan.FromMinutes(1));
        Assert.All(ok, pid => Assert.Equal(Environment.ProcessId, pid));
    }

    [Theory]
    [InlineData("checkpoints")]
    [InlineData("final")]
    public void A_file_where_the_run_writes_a_directory_is_refused_before_training(string name)
    {
        using var dir = new TempDir();
        File.WriteAllText(Path.Combine(dir.Path, name), "not a directory");
        var e = Assert.Throws<StorageException>(() => new Trainer(Small(dir.Path, CopyOfText(dir.Path), 2), CpuBackend.Instance).Run(TestContext.Current.CancellationToken));
        Assert.Equal($"{Path.Combine(dir.Path, name)} is a file, but the run writes a directory there: remove or rename that file, or set output.dir to another directory", e.Message);
    }

    /// <summary>The exact-resume check compares contents: "quick" → "QUICK" keeps the size (the old check, path +
    /// size, resumed silently), and is refused naming data.train; the original bytes resume.</summary>
    [Fact]
    public void A_same_size_edit_of_a_data_file_is_refused_on_resume()
    {
        var ct = TestContext.Current.CancellationToken;
        using var dir = new TempDir();
        string data = CopyOfText(dir.Path);
        var cfg = Small(Path.Combine(dir.Path, "out"), data, 6);
        using (var control = new RunControl { MaxSteps = 2 })
            new Trainer(cfg, CpuBackend.Instance) { Control = control }.Run(ct);
        string original = File.ReadAllText(data);
        int at = original.IndexOf("the", StringComparison.Ordinal);
        string edited = original[..at] + "THE" + original[(at + 3)..];
        File.WriteAllText(data, edited);
        Assert.Equal(new FileInfo(data).Length, System.Text.Encoding.UTF8.GetByteCount(original));
        var e = Assert.Throws<ConfigException>(() => new Trainer(cfg, CpuBackend.Instance) { Resume = "latest" }.Run(ct));
        Assert.Contains("data.train: checkpoint corpus.txt sha256:", e.Message);
        Assert.Contains("breaks an exact resume", e.Message);
        File.WriteAllText(data, original);
        var resumed = new Trainer(cfg, CpuBackend.Instance) { Resume = "latest" }.Run(ct);
        Assert.Equal([3, 4, 5, 6], resumed.Steps.Select(s => s.Step));
    }

    /// <summary>A file is read once while it is unchanged (cached by device, inode, size, modification and change time);
    /// any write to it, even one that keeps its size, is read again.</summary>
    [Fact]
    public void The_hash_cache_reads_an_unchanged_file_once()
    {
        using var dir = new TempDir();
        string f = dir.File("big.bin");
        var bytes = new byte[3 << 20];
        new Random(5).NextBytes(bytes);
        File.WriteAllBytes(f, bytes);
        string want = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes));
        Assert.Equal(want, ContentHashes.Sha256(f));
        long read = ContentHashes.BytesHashed;
        for (int i = 0; i < 3; i++) Assert.Equal(want, ContentHashes.Sha256(f));
        // other tests hash in parallel: none of them hashes this file, whose 3 MiB would show
        Assert.True(ContentHashes.BytesHashed - read < bytes.Length, $"{ContentHashes.BytesHashed - read} bytes hashed again");
        bytes[17] ^= 1;
        File.WriteAllBytes(f, bytes);
        Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes)), ContentHashes.Sha256(f));
        Assert.Equal($"big.bin sha256:{ContentHashes.Sha256(f)}", ContentHashes.Describe(f));
    }

    [Fact]
    public void Recorded_run_files_are_relative_and_verified()
    {
        using var dir = new TempDir();
        string stage = Path.Combine(dir.Path, "stages", "base");
        Directory.CreateDirectory(stage);
        File.WriteAllText(Path.Combine(stage, "model.safetensors"), "weights");
        var record = ContentHashes.Record(dir.Path, stage);
        Assert.Equal(["stages/base/model.safetensors"], record.Keys);
        ContentHashes.Verify(dir.Path, record, "stage.json");
        File.WriteAllText(Path.Combine(stage, "model.safetensors"), "WEIGHTS");
        var e = Assert.Throws<InvalidDataException>(() => ContentHashes.Verify(dir.Path, record, "stage.json"));
        Assert.Equal("stage.json: stages/base/model.safetensors does not match its SHA-256 in the record (changed after the stage finished): restore it, or delete stage.json to run the stage again", e.Message);
        var outside = new Dictionary<string, string> { ["../../etc/passwd"] = "x" };
        Assert.Contains("lies outside the run directory", Assert.Throws<InvalidDataException>(() => ContentHashes.Verify(dir.Path, outside, "stage.json")).Message);
    }

    /// <summary>Weights poisoned before step 1: with guard = "skip" every step is skipped; the run fails instead of
    /// returning (and the trainer saving) weights as if it had trained.</summary>
    [Fact]
    public void A_run_whose_every_step_the_guard_skipped_fails()
    {
        using var model = TestModels.Create(TestModels.Tiny(), 3);
        const string name = "model.norm.weight";
        model.Load(name, Enumerable.Repeat(float.NaN, (int)model[name].Numel).ToArray());
        using var opt = new AdamW(model, new AdamWOptions { Lr = 1e-2 });
        var o = new LoopOptions { Steps = 4, BatchSize = 2, SeqLen = 8, Optim = new AdamWOptions { Lr = 1e-2 }, Guard = new GuardOptions { Mode = "skip" } };
        var e = Assert.Throws<InvalidDataException>(() => TrainingLoop.Run(model, new ConstantBatches(37), o, opt, cancel: TestContext.Current.CancellationToken));
        Assert.StartsWith("every one of this run's 4 step(s) (1-4) was skipped by the numeric guard", e.Message);
        Assert.EndsWith("last good checkpoint: none", e.Message);
    }

    [Fact]
    public void Weights_that_are_not_finite_are_never_saved()
    {
        using var dir = new TempDir();
        using var model = TestModels.Create(TestModels.Tiny(), 3);
        var comm = new Engine.Parallel.SingleRankCommunicator(CpuBackend.Instance);
        string final = Path.Combine(dir.Path, "final");
        SafeIo.SaveWeights(final, model, comm, null, () => ModelIO.Save(model, final));
        Assert.True(File.Exists(Path.Combine(final, ModelIO.WeightsFile)));
        string bad = Path.Combine(dir.Path, "bad");
        var w = model["model.layers.1.mlp.down_proj.weight"].ToArray();
        w[5] = float.PositiveInfinity;
        model.Load("model.layers.1.mlp.down_proj.weight", w);
        var e = Assert.Throws<InvalidDataException>(() => SafeIo.SaveWeights(bad, model, comm, "/x/checkpoints/step_00000004", () => ModelIO.Save(model, bad)));
        Assert.StartsWith($"the final weights hold non-finite values (first in model.layers.1.mlp.down_proj.weight): not saved to {bad};", e.Message);
        Assert.EndsWith("last good checkpoint: /x/checkpoints/step_00000004", e.Message);
        Assert.False(Directory.Exists(bad));
    }

    sealed class ConstantBatches(int vocab) : IBatchSource
    {
        public Batch Next(int batch, int seqLen)
        {
            var ids = Enumerable.Range(0, batch * seqLen).Select(i => i % vocab).ToArray();
            return new Batch(ids, ids.Select(i => (i + 1) % vocab).ToArray(), Enumerable.Repeat("train", batch).ToArray());
        }
    }
}
