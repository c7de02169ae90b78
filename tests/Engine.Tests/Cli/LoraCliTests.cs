using System.CommandLine;
using System.Text.Json;
using Engine.Cli.Commands;
using Engine.Core;
using Engine.Model;
using Engine.Model.IO;
using Engine.Model.Lora;

namespace Engine.Tests.Cli;

/// <summary>`engine eval --instruction/--calibrate/--adapter` and `engine export --adapter`.</summary>
[Collection("console")]
public class LoraCliTests
{
    static (int Code, string Err) Run(params string[] args)
    {
        var (code, _, err) = InProcessCli.Run([EvalCommand.Create(), ExportCommand.Create()], args);
        return (code, err);
    }

    /// <summary>A 1-layer byte-vocabulary Llama saved under dir/model (also used by ObservabilityCliTests).</summary>
    internal static string TinyModel(TempDir dir)
    {
        string path = dir.File("model");
        using var m = new LlamaModel(new LlamaConfig { VocabSize = 258, HiddenSize = 16, IntermediateSize = 32, NumLayers = 1, NumHeads = 2, NumKvHeads = 1, MaxPositionEmbeddings = 256 }, CpuBackend.Instance);
        m.InitializeWeights(4);
        ModelIO.Save(m, path);
        return path;
    }

    [Fact]
    public void EvalScoresInstructionFormatWithCalibrationAndAnAdapter()
    {
        using var dir = new TempDir();
        string model = TinyModel(dir);
        File.WriteAllText(dir.File("set.csv"), "label,sentence\npositive,Profit rose.\nnegative,Sales fell.\nneutral,The report is out.\n");
        string adapter = dir.File("adapter");
        using (var m = ModelIO.Load(model, CpuBackend.Instance))
        using (var a = LoraAdapters.Attach(m, new LoraConfig { R = 2, TargetModules = ["q_proj"] }, 1)) a.Save(adapter);
        var (code, err) = Run("eval", "-m", model, "-t", "byte", "--instruction", dir.File("set.csv"), "--fewshot", dir.File("set.csv"),
            "--shots", "1", "--calibrate", "--adapter", adapter, "--json", dir.File("r.json"));
        Assert.True(code == 0, err);
        using var doc = JsonDocument.Parse(File.ReadAllText(dir.File("r.json")));
        var instr = doc.RootElement.GetProperty("instruction:" + dir.File("set.csv"));
        Assert.Equal(3, instr.GetProperty("Count").GetInt32());
        Assert.Equal(3, instr.GetProperty("Predicted").EnumerateObject().Sum(p => p.Value.GetInt32()));
        Assert.Equal(JsonValueKind.Number, instr.GetProperty("CalibratedAccuracy").ValueKind);
        Assert.Equal(JsonValueKind.Number, doc.RootElement.GetProperty(dir.File("set.csv")).GetProperty("CalibratedAccuracy").ValueKind);
    }

    [Fact]
    public void AMissingOrForeignAdapterIsOneLine()
    {
        using var dir = new TempDir();
        string model = TinyModel(dir);
        File.WriteAllText(dir.File("set.csv"), "label,sentence\npositive,Up.\n");
        var (code, err) = Run("eval", "-m", model, "-t", "byte", "--instruction", dir.File("set.csv"), "--adapter", dir.File("nope"));
        Assert.Equal(2, code);
        Assert.Contains("adapter directory not found", err);
        Assert.Single(err.Trim().Split('\n'));
        (code, err) = Run("export", "-m", model, "-o", dir.File("out"), "--format", "safetensors", "--adapter", dir.Path);
        Assert.Equal(2, code);
        Assert.Contains("adapter_config.json", err);
    }

    [Fact]
    public void ExportMergesTheAdapter()
    {
        using var dir = new TempDir();
        string model = TinyModel(dir);
        string adapter = dir.File("adapter");
        float[] expected;
        using (var m = ModelIO.Load(model, CpuBackend.Instance))
        using (var a = LoraAdapters.Attach(m, new LoraConfig { R = 2, TargetModules = ["o_proj"] }, 1))
        {
            CpuBackend.Instance.Upload(a.Of("model.layers.0.self_attn.o_proj").B, Enumerable.Range(0, 32).Select(i => 0.01f * (i % 7 - 3)).ToArray());
            a.Save(adapter);
            a.Merge();
            expected = m["model.layers.0.self_attn.o_proj.weight"].ToArray();
        }
        var (code, err) = Run("export", "-m", model, "-o", dir.File("out"), "--format", "safetensors", "--type", "f32", "--adapter", adapter);
        Assert.True(code == 0, err);
        using var back = ModelIO.Load(dir.File("out"), CpuBackend.Instance);
        Assert.Equal(expected, back["model.layers.0.self_attn.o_proj.weight"].ToArray());
        using var orig = ModelIO.Load(model, CpuBackend.Instance);
        Assert.NotEqual(expected, orig["model.layers.0.self_attn.o_proj.weight"].ToArray());
    }
}
