using System.CommandLine;
using System.Text.Json.Nodes;
using Engine.Cli.Commands;
using Engine.Core;
using Engine.Model;
using Engine.Model.Export;
using Engine.Model.IO;
using Engine.Tests.Model;

namespace Engine.Tests.Cli;

/// <summary>`engine export`: GGUF and serving safetensors from a model directory; mistakes are one line.</summary>
[Collection("console")]
public class ExportCliTests
{
    static (int Code, string Out, string Err) Run(params string[] args) => InProcessCli.Run([ExportCommand.Create()], args);

    static LlamaModel ByteModel(bool normHead = false) => TestModels.Create(new LlamaConfig
    {
        VocabSize = 258,
        HiddenSize = 32,
        IntermediateSize = 64,
        NumLayers = 1,
        NumHeads = 2,
        NumKvHeads = 1,
        MaxPositionEmbeddings = 32,
        InitializerRange = 0.1,
        NormHead = normHead,
    }, 21);

    [Fact]
    public void GgufExportOfEachTypeWritesALlamaFile()
    {
        using var dir = new TempDir();
        using var m = ByteModel();
        ModelIO.Save(m, dir.File("model"));
        foreach (var (type, ftype) in new[] { ("f32", 0L), ("f16", 1L), ("q8_0", 7L), ("q4_0", 2L) })
        {
            var (code, output, err) = Run("export", "-m", dir.File("model"), "-o", dir.File($"m-{type}.gguf"), "--type", type, "--tokenizer", "byte");
            Assert.True(code == 0, err);
            Assert.Contains("wrote", output);
            using var f = GgufFile.Open(dir.File($"m-{type}.gguf"));
            Assert.Equal(ftype, f.Get("general.file_type").AsInteger);
            Assert.Equal("model", f.Get("general.name").AsString);
            Assert.Equal(258, f.Get("tokenizer.ggml.tokens").AsStrings.Count);
            Assert.Equal(256, f.Get("tokenizer.ggml.eos_token_id").AsInteger);
        }
    }

    [Fact]
    public void SafetensorsExportBakesNormHeadAndShards()
    {
        using var dir = new TempDir();
        using var m = ByteModel(normHead: true);
        ModelIO.Save(m, dir.File("model"));
        var (code, _, err) = Run("export", "-m", dir.File("model"), "-o", dir.File("serve"), "--format", "safetensors", "--type", "bf16",
            "--tokenizer", "byte", "--max-shard-size", "20KB");
        Assert.True(code == 0, err);
        Assert.True(File.Exists(dir.File("serve/model.safetensors.index.json")));
        Assert.True(File.Exists(dir.File("serve/tokenizer.json")));
        Assert.True(File.Exists(dir.File("serve/generation_config.json")));
        var cfg = JsonNode.Parse(File.ReadAllText(dir.File("serve/config.json")))!;
        Assert.Null(cfg["norm_head"]);
        Assert.Equal("bfloat16", cfg["torch_dtype"]!.GetValue<string>());
        Assert.Equal(256, cfg["eos_token_id"]!.GetValue<int>());
        Assert.Equal(257, cfg["bos_token_id"]!.GetValue<int>());
        // a plain LlamaForCausalLM (no NormHead) over the exported weights gives the NormHead model's logits (to bf16)
        using var served = ModelIO.Load(dir.File("serve"), CpuBackend.Instance);
        Assert.False(served.Config.NormHead);
        var ids = CpuBackend.Instance.Empty([5], DType.I32);
        CpuBackend.Instance.Upload(ids, new[] { 72, 101, 108, 108, 111 });
        using var scope = new TensorScope();
        using var ng = Engine.Core.Autograd.Grad.NoGrad();
        var want = m.Logits(ids, 1, 5).ToArray();
        var got = served.Logits(ids, 1, 5).ToArray();
        for (int i = 0; i < want.Length; i++) Assert.Equal(want[i], got[i], 0.05f);
        // the byte tokenizer's tokenizer.json has every byte at its own id
        var tok = JsonNode.Parse(File.ReadAllText(dir.File("serve/tokenizer.json")))!;
        Assert.Equal(256, tok["model"]!["vocab"]!.AsObject().Count);
        Assert.Equal(32, tok["model"]!["vocab"]!["Ġ"]!.GetValue<int>());
    }

    [Fact]
    public void MistakesAreOneLine()
    {
        using var dir = new TempDir();
        using var m = ByteModel();
        ModelIO.Save(m, dir.File("model"));
        var (code, _, err) = Run("export", "-m", dir.File("model"), "-o", dir.File("x.gguf"));
        Assert.Equal(2, code);
        Assert.Contains("--tokenizer", err);
        (code, _, err) = Run("export", "-m", dir.File("model"), "-o", dir.File("x.gguf"), "--tokenizer", "byte", "--type", "q5_k");
        Assert.Equal(2, code);
        Assert.Contains("q5_k", err);
        (code, _, err) = Run("export", "-m", dir.File("model"), "-o", dir.File("s"), "--format", "safetensors", "--max-shard-size", "lots");
        Assert.Equal(2, code);
        Assert.Contains("lots", err);
        (code, _, err) = Run("export", "-m", dir.File("nowhere"), "-o", dir.File("x.gguf"), "--tokenizer", "byte");
        Assert.Equal(2, code);
        Assert.Contains("nowhere", err);
        Assert.Single(err.Trim().Split('\n'));
    }
}
