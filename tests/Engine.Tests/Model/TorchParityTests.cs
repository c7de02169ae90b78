using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Model.IO;
using Engine.Tests.Ops;
using Engine.Training.Parity;

namespace Engine.Tests.Model;

/// <summary>
/// The whole model against an independent PyTorch implementation of Hugging Face's Llama in fp64
/// (benchmarks/scripts/torch_parity.py, Debian's python3-torch): the engine writes safetensors, the oracle reads them
/// with a plain reader, and logits, loss (with z-loss and ignored targets), every gradient and one AdamW step with
/// clipping are compared. Skipped (not passed) where /usr/bin/python3 has no torch.
/// </summary>
public class TorchParityTests
{
    const string Python = "/usr/bin/python3";

    internal static bool TorchAvailable(out string why)
    {
        why = "";
        if (!File.Exists(Python)) { why = $"{Python} not found"; return false; }
        var (code, _, err) = Engine.Training.Bench.MachineInfo.Run(Python, "-c \"import torch\"", timeoutMs: 60_000);
        if (code != 0) { why = "python3-torch is not installed: " + err.Trim().Split('\n').Last(); return false; }
        return true;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LogitsLossGradientsAndAdamWStepMatchPyTorch(bool tied)
    {
        if (!TorchAvailable(out var why)) Assert.Skip(why);
        using var dir = new TempDir();
        using var m = TestModels.Create(TestModels.Tiny(tied), 50);
        ModelIO.Save(m, dir.Path);
        const int B = 2, T = 7;
        var (ids, tg) = TestModels.Batch(B, T, m.Config.VocabSize, 51, ignoreEvery: 4);
        int[] idv = ids.IntSpan.ToArray(), tgv = tg.IntSpan.ToArray();
        var input = new ParityInput(
            Enumerable.Range(0, B).Select(b => idv.Skip(b * T).Take(T).ToArray()).ToArray(),
            Enumerable.Range(0, B).Select(b => tgv.Skip(b * T).Take(T).ToArray()).ToArray(),
            ZLoss: 1e-3, Lr: 1e-2, Betas: [0.9, 0.95], Eps: 1e-6, WeightDecay: 0.1, Clip: 0.5);
        File.WriteAllText(dir.File("input.json"), input.ToJson());
        string script = Engine.Training.Bench.TrainBenchmark.FindScript("torch_parity.py");
        var (code, stdout, stderr) = Engine.Training.Bench.MachineInfo.Run(Python, $"{script} {dir.Path} {dir.File("input.json")}",
            new Dictionary<string, string> { ["OMP_NUM_THREADS"] = "1" });
        Assert.True(code == 0, $"torch_parity.py failed: {stderr}");
        using var doc = JsonDocument.Parse(stdout);
        var r = doc.RootElement;

        var ours = ParityRun.Run(m, ParityInput.Load(dir.File("input.json")));
        float[] Arr(JsonNode? n) => n!.AsArray().Select(x => (float)x!.GetValue<double>()).ToArray();
        Assert.Equal(r.GetProperty("loss").GetDouble(), ours["loss"]!.GetValue<double>(), 5);
        GradCheck.AssertCloseTo(Arr(ours["logits"]), r.GetProperty("logits"), "logits", 1e-4, 1e-5);
        foreach (var (name, _) in m.Parameters)
            GradCheck.AssertCloseTo(Arr(ours["grads"]![name]), r.GetProperty("grads").GetProperty(name), $"d/d {name}", 1e-3, 1e-6);
        Assert.Equal(r.GetProperty("grad_norm").GetDouble(), ours["grad_norm"]!.GetValue<double>(), 5);
        foreach (var (name, _) in m.Parameters)
            GradCheck.AssertCloseTo(Arr(ours["updated"]![name]), r.GetProperty("updated").GetProperty(name), $"{name} after AdamW", 1e-5, 2e-5);
    }
}
