using System.Diagnostics;
using System.Text.Json;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model.IO;
using Engine.Tests.Ops;
using Engine.Training;

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

    static bool TorchAvailable(out string why)
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
        ids.Keep(); tg.Keep();
        int[] idv = ids.IntSpan.ToArray(), tgv = tg.IntSpan.ToArray();
        const float z = 1e-3f;
        var opts = new AdamWOptions { Lr = 1e-2, Beta1 = 0.9, Beta2 = 0.95, Eps = 1e-6, WeightDecay = 0.1, ClipNorm = 0.5 };
        File.WriteAllText(dir.File("input.json"), JsonSerializer.Serialize(new
        {
            ids = Enumerable.Range(0, B).Select(b => idv.Skip(b * T).Take(T)),
            targets = Enumerable.Range(0, B).Select(b => tgv.Skip(b * T).Take(T)),
            z_loss = (double)z,
            lr = opts.Lr,
            betas = new[] { opts.Beta1, opts.Beta2 },
            eps = opts.Eps,
            weight_decay = opts.WeightDecay,
            clip = opts.ClipNorm,
        }));
        string script = Engine.Training.Bench.TrainBenchmark.FindScript("torch_parity.py");
        var (code, stdout, stderr) = Engine.Training.Bench.MachineInfo.Run(Python, $"{script} {dir.Path} {dir.File("input.json")}",
            new Dictionary<string, string> { ["OMP_NUM_THREADS"] = "1" });
        Assert.True(code == 0, $"torch_parity.py failed: {stderr}");
        using var doc = JsonDocument.Parse(stdout);
        var r = doc.RootElement;

        float valid = tgv.Count(t => t != -100);
        m.ZeroGrad();
        double loss;
        float[] logits;
        using (var s = new TensorScope())
        {
            using (Grad.NoGrad()) logits = m.Logits(ids, B, T).ToArray();
            var l = m.Loss(ids, tg, B, T, valid, z).Loss;
            loss = l.Item();
            Grad.Backward(l);
        }
        Assert.Equal(r.GetProperty("loss").GetDouble(), loss, 5);
        GradCheck.AssertCloseTo(logits, r.GetProperty("logits"), "logits", 1e-4, 1e-5);
        foreach (var (name, p) in m.Parameters)
            GradCheck.AssertCloseTo(p.Grad!.ToArray(), r.GetProperty("grads").GetProperty(name), $"d/d {name}", 1e-3, 1e-6);

        using var opt = new AdamW(m, opts);
        double norm = opt.Update(opts.Lr);
        Assert.Equal(r.GetProperty("grad_norm").GetDouble(), norm, 5);
        foreach (var (name, p) in m.Parameters)
            GradCheck.AssertCloseTo(p.ToArray(), r.GetProperty("updated").GetProperty(name), $"{name} after AdamW", 1e-5, 2e-5);
    }
}
