using System.CommandLine;
using Engine.Core;
using Engine.Data;
using Engine.Model.Export;
using Engine.Model.IO;
using Engine.Training;

namespace Engine.Cli.Commands;

/// <summary>
/// `engine export`: a model directory to a llama.cpp GGUF file or a serving safetensors directory, with the model's
/// own tokenizer, chat template and name (<see cref="ModelArtifacts"/>); a LoRA adapter merged in, or as a llama.cpp
/// LoRA adapter GGUF (<see cref="GgufLoraExport"/>).
/// </summary>
public static class ExportCommand
{
    public static Command Create()
    {
        var model = new Option<DirectoryInfo>("--model", "-m") { Description = "model directory (config.json + safetensors)", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "output: a .gguf file, or a directory for safetensors", Required = true };
        var format = new Option<string>("--format") { Description = "gguf, safetensors, or gguf-lora (the --adapter as a llama.cpp LoRA adapter, loaded beside the model's GGUF)", DefaultValueFactory = _ => "gguf" };
        var type = new Option<string?>("--type") { Description = "gguf: f32, f16 (default), q8_0, q4_0; safetensors: bf16 (default), f16, f32; gguf-lora: f32 (default), f16" };
        var tokenizer = new Option<string?>("--tokenizer", "-t") { Description = "tokenizer.json, a model directory, or byte (default: the model directory's tokenizer.json; another vocabulary is refused)" };
        var force = new Option<bool>("--force-tokenizer") { Description = "use --tokenizer even when its vocabulary is not the model's" };
        var shard = new Option<string>("--max-shard-size") { Description = "safetensors shard limit, as transformers' max_shard_size (5GB, 500MB, 2GiB, bytes)", DefaultValueFactory = _ => "5GB" };
        var name = new Option<string?>("--name") { Description = "general.name in the GGUF file (default: the run that made the model, config.json _name_or_path; else the directory's name)" };
        var adapter = new Option<DirectoryInfo?>("--adapter") { Description = "a LoRA adapter in PEFT's layout (adapter_config.json + adapter_model.safetensors): merged into the model before export, or exported alone with --format gguf-lora" };
        var cmd = new Command("export", "export a model for serving: llama.cpp GGUF (f32/f16/q8_0/q4_0) or Hugging Face safetensors (bf16/f16, sharded); a LoRA adapter merged or as a llama.cpp adapter")
            { model, output, format, type, tokenizer, force, shard, name, adapter };
        cmd.SetAction(p => Cli.Guard(() =>
        {
            string dir = p.GetValue(model)!.FullName, outPath = p.GetValue(output)!;
            string fmt = p.GetValue(format)!;
            if (fmt is not ("gguf" or "safetensors" or "gguf-lora")) throw new ArgumentException($"--format {fmt}: gguf, safetensors or gguf-lora");
            // options first: a bad one is refused before the model is read
            var quant = fmt == "gguf" ? GgufType(p.GetValue(type)) : default;
            string dtype = fmt == "safetensors" ? SafetensorsType(p.GetValue(type)) : "";
            long shardBytes = fmt == "safetensors" ? SafeTensorsIndex.ParseSize(p.GetValue(shard)!) : 0;
            var loraType = fmt == "gguf-lora" ? LoraType(p.GetValue(type)) : default;
            using var m = ModelIO.Load(dir, CpuBackend.Instance);
            // the tokenizer: the directory's own, or one given by hand with the model's vocabulary (or forced)
            if (p.GetValue(tokenizer) is { } given)
            {
                var tok = TokenizerFiles.ForModel(dir, given, p.GetValue(force));
                if (tok.VocabSize > m.Config.VocabSize) throw new ArgumentException($"--tokenizer {given} has {tok.VocabSize} ids but the model only {m.Config.VocabSize}");
                RunArtifacts.Attach(m, tok, null);
            }
            else if (m.Config.Hf?.TokenizerJson == null && fmt == "gguf")
                throw new ArgumentException($"{dir} has no tokenizer.json (saved before models carried their tokenizer): give --tokenizer tokenizer.json or --tokenizer byte");
            else if (m.Config.Hf?.TokenizerJson == null && fmt == "safetensors")
                Console.WriteLine($"note: {dir} has no tokenizer.json (saved before models carried their tokenizer): the export has none either; give --tokenizer to include it");
            string ggufName = p.GetValue(name) ?? m.Config.NameOrPath ?? Path.GetFileName(dir.TrimEnd(Path.DirectorySeparatorChar));
            if (fmt == "gguf-lora")
            {
                var ad = p.GetValue(adapter) ?? throw new ArgumentException("--format gguf-lora exports a LoRA adapter: give --adapter DIR (PEFT layout) and its base model with --model");
                WriteGgufLora(m, ad.FullName, outPath, loraType, p.GetValue(name) ?? Path.GetFileName(ad.FullName.TrimEnd(Path.DirectorySeparatorChar)));
                return 0;
            }
            if (p.GetValue(adapter) is { } merge)
            {
                using var lora = Engine.Model.Lora.LoraAdapters.Load(m, merge.FullName);
                lora.Merge();
                Console.WriteLine($"merged the LoRA adapter {merge.FullName} (r = {lora.Config.R}, {lora.Modules.Count} layers) into {dir}");
            }
            if (fmt == "gguf") WriteGguf(m, outPath, quant, ggufName);
            else WriteSafetensors(m, outPath, dtype, shardBytes);
            return 0;
        }));
        return cmd;
    }

    /// <summary>The GGUF vocabulary of the tokenizer the model carries.</summary>
    static GgufVocab Vocabulary(Engine.Model.LlamaModel m) =>
        GgufVocab.FromTokenizerJsonText(m.Config.Hf!.TokenizerJson!, m.Config.Hf.TokenizerConfig, "the model's tokenizer.json");

    static GgufQuant GgufType(string? type) => (type ?? "f16") switch
    {
        "f32" => GgufQuant.F32,
        "f16" => GgufQuant.F16,
        "q8_0" => GgufQuant.Q8_0,
        "q4_0" => GgufQuant.Q4_0,
        var t => throw new ArgumentException($"--type {t}: gguf takes f32, f16, q8_0 or q4_0"),
    };

    static string SafetensorsType(string? type) => (type ?? "bf16") switch
    {
        "bf16" => "BF16",
        "f16" => "F16",
        "f32" => "F32",
        var t => throw new ArgumentException($"--type {t}: safetensors takes bf16, f16 or f32"),
    };

    static GgmlType LoraType(string? type) => (type ?? "f32") switch
    {
        "f32" => GgmlType.F32,
        "f16" => GgmlType.F16,
        var x => throw new ArgumentException($"--type {x}: gguf-lora takes f32 or f16"),
    };

    static void WriteGguf(Engine.Model.LlamaModel m, string outPath, GgufQuant q, string name)
    {
        var vocab = Vocabulary(m);
        var r = GgufExport.Write(m, vocab, outPath, q, name);
        var counts = r.Tensors.GroupBy(t => t.Type).Select(g => $"{g.Count()} {g.Key}");
        Console.WriteLine($"wrote {r.Path}: {r.Bytes / 1048576.0:F2} MiB, {r.Tensors.Count} tensors ({string.Join(", ", counts)}), tokenizer {vocab.Model}/{vocab.Pre} with {m.Config.VocabSize} tokens" +
            (vocab.ChatTemplate ?? m.Config.Hf?.ChatTemplate) switch { null => "", _ => ", chat template" } + $", name \"{name}\"");
        Console.WriteLine($"  llama.cpp architecture: {r.Architecture}{(r.ArchitectureNote != null ? $" ({r.ArchitectureNote})" : "")}");
        foreach (var t in r.Tensors.Where(t => t.Note != null)) Console.WriteLine($"  {t.Name}: {t.Note}");
        if (vocab.Pre == "default" && vocab.Merges.Count > 0) Console.WriteLine($"  note: {r.PreNote}");
    }

    static void WriteGgufLora(Engine.Model.LlamaModel m, string adapterDir, string outPath, GgmlType t, string name)
    {
        using var lora = Engine.Model.Lora.LoraAdapters.Load(m, adapterDir);
        var r = GgufLoraExport.Write(lora, m.Config, outPath, t, name);
        Console.WriteLine($"wrote {r.Path}: {r.Bytes / 1048576.0:F2} MiB, a llama.cpp LoRA adapter ({r.Tensors.Count} tensors, r = {lora.Config.R}, alpha {lora.Config.Alpha}) for the model's GGUF");
    }

    static void WriteSafetensors(Engine.Model.LlamaModel m, string outPath, string dtype, long shardBytes)
    {
        HfExport.Write(m, outPath, dtype, shardBytes);
        var files = Directory.GetFiles(outPath).Select(Path.GetFileName).Order(StringComparer.Ordinal);
        Console.WriteLine($"wrote {outPath} ({dtype}): {string.Join(", ", files)}");
    }
}
