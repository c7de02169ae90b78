using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Cpu;
using Engine.Model.IO;
using Engine.Training;
using Engine.Training.Config;

namespace Engine.Tests.Training;

/// <summary>
/// Golden losses (TorchTitan's loss-parity check, llm.c's test_gpt2): a tiny byte-level Llama trains 50 steps on CPU and
/// every step's loss and gradient norm, and the final weights' SHA-256, must equal bit for bit what
/// Golden/tiny_llama_50_steps.json holds. Any change to an op, the initialization, the sampler, AdamW or the schedule
/// that moves a single bit fails here; when such a change is intended, regenerate deliberately:
/// <code>ENGINE_UPDATE_GOLDEN=1 dotnet test tests/Engine.Tests -c Release --filter FullyQualifiedName~GoldenLossTests</code>
/// (the test then rewrites the file and skips, saying so) and commit the file with the reason in the commit message.
/// <para>
/// The CPU results do not depend on the thread count (row chunks fixed by the problem size, GEMM K blocks fixed) nor on
/// AVX-512 vs AVX2 (same per-element FMA order; checked with DOTNET_EnableAVX512F=0 and DOTNET_PROCESSOR_COUNT=1/16),
/// but the scalar GEMM (no AVX2) rounds differently, so the file holds one entry per kind of machine: "X64-simd"
/// (AVX2 or AVX-512 GEMM) and "X64-scalar" (regenerated with DOTNET_EnableAVX2=0 DOTNET_EnableAVX512F=0). A machine
/// with no entry skips and says how to add one.
/// </para>
/// </summary>
public class GoldenLossTests
{
    const int Steps = 50;
    const string FileName = "tiny_llama_50_steps.json";

    static TrainConfig Tiny(string outDir) => new()
    {
        Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 2, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 },
        Data = new DataSection { Train = [Engine.Data.DataPaths.File("general_en/tinyshakespeare.txt")], ValidFraction = 0.02 },
        Train = new TrainSection { SeqLen = 32, BatchSize = 4, Steps = Steps, Seed = 5, EvalBatches = 2 },
        Optim = new AdamWOptions { Lr = 1e-2, WeightDecay = 0.01 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Cosine, WarmupSteps = 5, MinLr = 1e-3 },
        Output = new OutputSection { Dir = outDir },
    };

    /// <summary>The kind of machine an entry was recorded on (see the class comment).</summary>
    static string MachineKey => $"{RuntimeInformation.ProcessArchitecture}-{(Gemm.Kernel.StartsWith("scalar", StringComparison.Ordinal) ? "scalar" : "simd")}";

    static string GoldenPath()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Engine.sln")))
                return Path.Combine(d.FullName, "tests", "Engine.Tests", "Training", "Golden", FileName);
        throw new DirectoryNotFoundException("Engine.sln not found above " + AppContext.BaseDirectory);
    }

    [Fact]
    public void TinyModelLossesGradNormsAndWeightsMatchTheCommittedFileBitForBit()
    {
        using var dir = new TempDir();
        var cfg = Tiny(dir.Path);
        cfg.Validate();
        var result = new Trainer(cfg, CpuBackend.Instance).Run(TestContext.Current.CancellationToken);
        Assert.Equal(Enumerable.Range(1, Steps), result.Steps.Select(s => s.Step));
        double[] loss = result.Steps.Select(s => s.Loss).ToArray(), norm = result.Steps.Select(s => s.GradNorm).ToArray();
        string sha = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(result.WeightsDir, ModelIO.WeightsFile))));
        // a file recording a broken run would pin the breakage: the run must train
        Assert.All(loss.Concat(norm), x => Assert.True(double.IsFinite(x) && x > 0, $"non-finite or non-positive value {x}"));
        Assert.True(loss[^5..].Average() < loss[..5].Average() - 1.0, $"loss did not fall: {loss[..5].Average():F3} → {loss[^5..].Average():F3}");

        string path = GoldenPath();
        var file = File.Exists(path) ? JsonNode.Parse(File.ReadAllText(path))!.AsObject() : new JsonObject();
        if (Environment.GetEnvironmentVariable("ENGINE_UPDATE_GOLDEN") == "1")
        {
            file["about"] = "GoldenLossTests: byte-level Llama (hidden 32, 2 layers, 4 heads, 2 kv heads) on tinyshakespeare.txt, " +
                "batch 4 x seq 32, seed 5, AdamW lr 1e-2 wd 0.01, cosine (warmup 5, min 1e-3), 50 steps on CPU. Regenerate only with " +
                "ENGINE_UPDATE_GOLDEN=1 and give the reason in the commit.";
            var runs = file["runs"] as JsonObject ?? [];
            runs.Remove(MachineKey);
            runs[MachineKey] = new JsonObject
            {
                ["loss"] = new JsonArray(loss.Select(x => (JsonNode)x).ToArray()),
                ["grad_norm"] = new JsonArray(norm.Select(x => (JsonNode)x).ToArray()),
                ["final_weights_sha256"] = sha,
            };
            file.Remove("runs");
            file["runs"] = runs;
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllText(path, file.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            Assert.Skip($"ENGINE_UPDATE_GOLDEN=1: rewrote the '{MachineKey}' entry of {path}; commit it with the reason");
        }

        if (file["runs"]?[MachineKey] is not JsonObject golden)
        {
            Assert.Skip($"{path} has no entry for this kind of machine ('{MachineKey}', GEMM kernel {Gemm.Kernel}); " +
                "add one with ENGINE_UPDATE_GOLDEN=1 on such a machine");
            return;
        }
        double[] wantLoss = golden["loss"]!.AsArray().Select(x => x!.GetValue<double>()).ToArray();
        double[] wantNorm = golden["grad_norm"]!.AsArray().Select(x => x!.GetValue<double>()).ToArray();
        Assert.Equal(Steps, wantLoss.Length);
        Assert.Equal(Steps, wantNorm.Length);
        for (int i = 0; i < Steps; i++)
        {
            // bit patterns, not values: -0.0 == 0.0 and NaN != NaN would hide a difference
            Assert.True(BitConverter.DoubleToInt64Bits(loss[i]) == BitConverter.DoubleToInt64Bits(wantLoss[i]),
                $"step {i + 1}: loss {loss[i]:R}, golden {wantLoss[i]:R} (diff {loss[i] - wantLoss[i]:E3}); the first step that moved is {i + 1}");
            Assert.True(BitConverter.DoubleToInt64Bits(norm[i]) == BitConverter.DoubleToInt64Bits(wantNorm[i]),
                $"step {i + 1}: grad norm {norm[i]:R}, golden {wantNorm[i]:R}");
        }
        Assert.Equal(golden["final_weights_sha256"]!.GetValue<string>(), sha);
    }
}
