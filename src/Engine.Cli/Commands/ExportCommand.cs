using System.CommandLine;
using Engine.Core;
using Engine.Model.Export;
using Engine.Model.IO;

namespace Engine.Cli.Commands;

/// <summary>`engine export`: a model directory to a llama.cpp GGUF file or a serving safetensors directory.</summary>
public static class ExportCommand
{
    public static Command Create()
    {
        var model = new Option<DirectoryInfo>("--model", "-m") { Description = "model directory (config.json + safetensors)", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "output: a .gguf file, or a directory for safetensors", Required = true };
        var format = new Option<string>("--format") { Description = "gguf or safetensors", DefaultValueFactory = _ => "gguf" };
        var type = new Option<string?>("--type") { Description = "gguf: f32, f16 (default), q8_0, q4_0; safetensors: bf16 (default), f16, f32" };
        var tokenizer = new Option<string?>("--tokenizer", "-t") { Description = "tokenizer.json or byte (default: the model directory's tokenizer.json)" };
        var shard = new Option<string>("--max-shard-size") { Description = "safetensors shard limit, as transformers' max_shard_size (5GB, 500MB, 2GiB, bytes)", DefaultValueFactory = _ => "5GB" };
        var name = new Option<string?>("--name") { Description = "general.name in the GGUF file (default: the model directory's name)" };
        var adapter = new Option<DirectoryInfo?>("--adapter") { Description = "a LoRA adapter in PEFT's layout (adapter_config.json + adapter_model.safetensors) merged into the model before export" };
        var cmd = new Command("export", "export a model for serving: llama.cpp GGUF (f32/f16/q8_0/q4_0) or Hugging Face safetensors (bf16/f16, sharded)")
            { model, output, format, type, tokenizer, shard, name, adapter };
        cmd.SetAction(p => Cli.Guard(() =>
        {
            string dir = p.GetValue(model)!.FullName, outPath = p.GetValue(output)!;
            string fmt = p.GetValue(format)!;
            using var m = ModelIO.Load(dir, CpuBackend.Instance);
            if (p.GetValue(adapter) is { } ad)
            {
                using var lora = Engine.Model.Lora.LoraAdapters.Load(m, ad.FullName);
                lora.Merge();
                Console.WriteLine($"merged the LoRA adapter {ad.FullName} (r = {lora.Config.R}, {lora.Modules.Count} layers) into {dir}");
            }
            string? tokSpec = p.GetValue(tokenizer) ?? (File.Exists(Path.Combine(dir, "tokenizer.json")) ? Path.Combine(dir, "tokenizer.json") : null);
            string? tokJson = tokSpec is null or "byte" ? null : tokSpec;
            GgufVocab? vocab = null;
            if (tokSpec == "byte") vocab = GgufVocab.EngineBytes();
            else if (tokJson != null)
            {
                if (!File.Exists(tokJson)) throw new FileNotFoundException($"--tokenizer: neither \"byte\" nor an existing tokenizer.json: {tokJson}", tokJson);
                string besideCfg = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(tokJson))!, ModelIO.TokenizerConfigFile);
                string? tc = File.Exists(besideCfg) ? File.ReadAllText(besideCfg) : m.Config.Hf?.TokenizerConfig;
                vocab = GgufVocab.FromTokenizerJson(tokJson, tc);
            }
            switch (fmt)
            {
                case "gguf": WriteGguf(m, vocab, outPath, p.GetValue(type), p.GetValue(name) ?? Path.GetFileName(dir.TrimEnd(Path.DirectorySeparatorChar)), dir); break;
                case "safetensors": WriteSafetensors(m, vocab, tokJson, outPath, p.GetValue(type), p.GetValue(shard)!); break;
                default: throw new ArgumentException($"--format {fmt}: gguf or safetensors");
            }
            return 0;
        }));
        return cmd;
    }

    static void WriteGguf(Engine.Model.LlamaModel m, GgufVocab? vocab, string outPath, string? type, string name, string dir)
    {
        var q = (type ?? "f16") switch
        {
            "f32" => GgufQuant.F32,
            "f16" => GgufQuant.F16,
            "q8_0" => GgufQuant.Q8_0,
            "q4_0" => GgufQuant.Q4_0,
            var t => throw new ArgumentException($"--type {t}: gguf takes f32, f16, q8_0 or q4_0"),
        };
        if (vocab == null) throw new ArgumentException($"a GGUF file needs the tokenizer: {dir} has no tokenizer.json, give --tokenizer tokenizer.json or --tokenizer byte");
        var r = GgufExport.Write(m, vocab, outPath, q, name);
        var counts = r.Tensors.GroupBy(t => t.Type).Select(g => $"{g.Count()} {g.Key}");
        Console.WriteLine($"wrote {r.Path}: {r.Bytes / 1048576.0:F2} MiB, {r.Tensors.Count} tensors ({string.Join(", ", counts)}), tokenizer {vocab.Model}/{vocab.Pre} with {m.Config.VocabSize} tokens");
        Console.WriteLine($"  llama.cpp architecture: {r.Architecture}{(r.ArchitectureNote != null ? $" ({r.ArchitectureNote})" : "")}");
        foreach (var t in r.Tensors.Where(t => t.Note != null)) Console.WriteLine($"  {t.Name}: {t.Note}");
        if (vocab.Pre == "default" && vocab.Merges.Count > 0) Console.WriteLine($"  note: {r.PreNote}");
    }

    static void WriteSafetensors(Engine.Model.LlamaModel m, GgufVocab? vocab, string? tokJson, string outPath, string? type, string shard)
    {
        string dtype = (type ?? "bf16") switch
        {
            "bf16" => "BF16",
            "f16" => "F16",
            "f32" => "F32",
            var t => throw new ArgumentException($"--type {t}: safetensors takes bf16, f16 or f32"),
        };
        HfExport.Write(m, outPath, dtype, SafeTensorsIndex.ParseSize(shard), tokJson, vocab);
        var files = Directory.GetFiles(outPath).Select(Path.GetFileName).Order(StringComparer.Ordinal);
        Console.WriteLine($"wrote {outPath} ({dtype}): {string.Join(", ", files)}");
    }
}
