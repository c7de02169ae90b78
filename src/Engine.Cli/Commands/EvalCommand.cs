using System.CommandLine;
using System.Text.Json;
using Engine.Data;
using Engine.Model;
using Engine.Model.IO;
using Engine.Training.Eval;

namespace Engine.Cli.Commands;

/// <summary>`engine eval` (perplexity per text file, few-shot classification) and `engine generate`.</summary>
public static class EvalCommand
{
    /// <summary>--tokenizer: by default the model directory's own; one given by hand must have the model's vocabulary.</summary>
    static Option<string?> TokenizerOption() => new("--tokenizer", "-t") { Description = "tokenizer.json, a model directory, or byte (default: the model directory's tokenizer.json; another vocabulary is refused)" };

    static Option<bool> ForceOption() => new("--force-tokenizer") { Description = "use --tokenizer even when its vocabulary is not the model's" };

    static ITokenizer LoadTokenizer(string modelDir, string? given, bool force, Engine.Model.LlamaModel m)
    {
        var tok = TokenizerFiles.ForModel(modelDir, given, force);
        if (m.Config.VocabSize < tok.VocabSize) throw new ArgumentException($"the tokenizer has {tok.VocabSize} ids but the model only {m.Config.VocabSize}");
        return tok;
    }

    public static Command Create()
    {
        var model = new Option<DirectoryInfo>("--model", "-m") { Description = "model directory (config.json + model.safetensors)", Required = true };
        var tokenizer = TokenizerOption();
        var force = ForceOption();
        var text = new Option<string[]>("--text") { Description = "held-out text files for perplexity (.txt, .jsonl, .json, .csv)", AllowMultipleArgumentsPerToken = true };
        var fewshot = new Option<string[]>("--fewshot") { Description = "labelled sets (csv label,sentence or jsonl text,label)", AllowMultipleArgumentsPerToken = true };
        var pool = new Option<string?>("--pool") { Description = "where few-shot examples are drawn from (default: the evaluated file)" };
        var shots = new Option<int>("--shots") { Description = "k in k-shot", DefaultValueFactory = _ => 3 };
        var maxEx = new Option<int>("--max-examples") { Description = "cap on evaluated examples per set", DefaultValueFactory = _ => 500 };
        var seqLen = new Option<int>("--seq-len") { Description = "perplexity window", DefaultValueFactory = _ => 256 };
        var maxTokens = new Option<long>("--max-tokens") { Description = "cap on tokens per text file", DefaultValueFactory = _ => 100_000 };
        var labels = new Option<string[]>("--label-names") { Description = "names for integer labels 0,1,2,…", AllowMultipleArgumentsPerToken = true };
        var json = new Option<string?>("--json") { Description = "also write the results to this JSON file" };
        var device = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var instruction = new Option<string[]>("--instruction") { Description = "labelled sets scored zero-shot in instruction format (the chat template sentiment sources train with; label likelihood after the answer marker)", AllowMultipleArgumentsPerToken = true };
        var calibrate = new Option<bool>("--calibrate") { Description = "also report contextual calibration (label log-likelihood minus that after the content-free input \"N/A\") for --fewshot and --instruction" };
        var adapter = new Option<DirectoryInfo?>("--adapter") { Description = "a LoRA adapter in PEFT's layout applied to the model" };
        var cmd = new Command("eval", "perplexity on held-out text, few-shot and zero-shot instruction-format classification by label likelihood")
            { model, tokenizer, force, text, fewshot, pool, shots, maxEx, seqLen, maxTokens, labels, json, device, instruction, calibrate, adapter };
        cmd.SetAction(p => Cli.Guard(() =>
        {
            if (p.GetValue(shots) < 0) throw new ArgumentException($"--shots must be >= 0 (got {p.GetValue(shots)})");
            if (p.GetValue(maxEx) < 1) throw new ArgumentException($"--max-examples must be >= 1 (got {p.GetValue(maxEx)})");
            if (p.GetValue(seqLen) < 1) throw new ArgumentException($"--seq-len must be >= 1 (got {p.GetValue(seqLen)})");
            if (p.GetValue(maxTokens) < 1) throw new ArgumentException($"--max-tokens must be >= 1 (got {p.GetValue(maxTokens)})");
            using var m = ModelIO.Load(p.GetValue(model)!.FullName, Cli.Backend(p.GetValue(device)!));
            var tok = LoadTokenizer(p.GetValue(model)!.FullName, p.GetValue(tokenizer), p.GetValue(force), m);
            using var lora = p.GetValue(adapter) is { } ad ? Engine.Model.Lora.LoraAdapters.Load(m, ad.FullName) : null;
            bool cal = p.GetValue(calibrate);
            int T = Math.Min(p.GetValue(seqLen), m.Config.MaxPositionEmbeddings);
            var results = new Dictionary<string, object>();
            foreach (var f in p.GetValue(text) ?? [])
            {
                var tokens = Evaluator.TokenStream(Documents.Read(f), tok, p.GetValue(maxTokens) + 1);
                var r = Evaluator.Perplexity(m, tokens, T, 8, p.GetValue(maxTokens), tok);
                Console.WriteLine($"{f}: perplexity {r.Perplexity:F3} (mean NLL {r.MeanNll:F4}, {r.BitsPerByte:F4} bits/byte) over {r.Tokens:N0} tokens, {r.TokensPerSecond:F0} tokens/s");
                results[f] = r;
            }
            var names = p.GetValue(labels) is { Length: > 0 } ln ? ln : null;
            var poolSet = p.GetValue(pool) is { } pp ? LabeledData.Read(pp, names).Examples : null;
            foreach (var f in p.GetValue(fewshot) ?? [])
            {
                var (test, skipped) = LabeledData.Read(f, names);
                var distinct = test.Concat(poolSet ?? []).Select(e => e.Label).Distinct().Count();
                if (distinct < 2)
                    throw new InvalidDataException($"{f}: all {test.Count} readable examples ({skipped} malformed rows skipped) have the label '{test[0].Label}': accuracy over one label is 100% whatever the model does");
                var (r, c) = Evaluator.FewShotWithCalibration(m, tok, test, poolSet ?? test, p.GetValue(shots), 1, p.GetValue(maxEx), calibrate: cal);
                Console.WriteLine($"{f}: {p.GetValue(shots)}-shot accuracy {r.Accuracy:P2}, macro-F1 {r.MacroF1:F4}" +
                    (c != null ? $" (calibrated {c.Accuracy:P2}, {c.MacroF1:F4})" : "") +
                    $" over {r.Count} examples ({skipped} malformed rows skipped), labels {string.Join("/", r.Labels)}, {r.Seconds:F1} s");
                results[f] = new { r.Accuracy, r.MacroF1, r.Count, r.Labels, skipped, CalibratedAccuracy = c?.Accuracy, CalibratedMacroF1 = c?.MacroF1 };
            }
            foreach (var f in p.GetValue(instruction) ?? [])
            {
                var (test, skipped) = LabeledData.Read(f, names);
                var (r, c) = InstructionEval.ZeroShot(m, tok, test, Engine.Training.Recipes.RecipeSources.SentimentInstruction, maxExamples: p.GetValue(maxEx), calibrate: cal);
                var s = InstructionEval.Summary(r, c);
                Console.WriteLine($"{f}: zero-shot instruction accuracy {r.Accuracy:P2}, macro-F1 {r.MacroF1:F4}" +
                    (c != null ? $" (calibrated {c.Accuracy:P2}, {c.MacroF1:F4})" : "") +
                    $" over {r.Count} examples ({skipped} malformed rows skipped), predicted {string.Join(" ", s.Predicted.Select(kv => $"{kv.Key} {kv.Value}"))}, {r.Seconds:F1} s");
                results["instruction:" + f] = s;
            }
            if (results.Count == 0) throw new ArgumentException("nothing to evaluate: give --text, --fewshot and/or --instruction files");
            if (p.GetValue(json) is { } jp) File.WriteAllText(jp, JsonSerializer.Serialize(results, new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }));
        return cmd;
    }

    public static Command CreateGenerate()
    {
        var model = new Option<DirectoryInfo>("--model", "-m") { Description = "model directory", Required = true };
        var tokenizer = TokenizerOption();
        var force = ForceOption();
        var prompt = new Option<string>("--prompt", "-p") { Description = "prompt text", Required = true };
        var chat = new Option<bool>("--chat") { Description = "the prompt is a user message: render it with the model's chat template (tokenizer_config.json) and print the answer" };
        var maxNew = new Option<int>("--max-new-tokens") { DefaultValueFactory = _ => 64 };
        var temperature = new Option<double>("--temperature") { Description = "0 = greedy", DefaultValueFactory = _ => 0.0 };
        var topP = new Option<double>("--top-p") { DefaultValueFactory = _ => 1.0 };
        var seed = new Option<ulong>("--seed") { DefaultValueFactory = _ => 0UL };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cpu" };
        var adapter = new Option<DirectoryInfo?>("--adapter") { Description = "a LoRA adapter in PEFT's layout applied to the model" };
        var cmd = new Command("generate", "generate text with a KV cache (greedy, temperature, top-p)") { model, tokenizer, force, prompt, chat, maxNew, temperature, topP, seed, device, adapter };
        cmd.SetAction(p => Cli.Guard(() =>
        {
            // options first: a bad one is refused before the model is read
            var o = new SamplingOptions(p.GetValue(maxNew), p.GetValue(temperature), p.GetValue(topP), p.GetValue(seed)).Validate();
            string dir = p.GetValue(model)!.FullName;
            using var m = ModelIO.Load(dir, Cli.Backend(p.GetValue(device)!));
            var tok = LoadTokenizer(dir, p.GetValue(tokenizer), p.GetValue(force), m);
            using var lora = p.GetValue(adapter) is { } ad ? Engine.Model.Lora.LoraAdapters.Load(m, ad.FullName) : null;
            var ids = p.GetValue(chat) ? ChatFormat(dir, m).EncodeUserMessage(tok, p.GetValue(prompt)!) : tok.Encode(p.GetValue(prompt)!);
            var sw = System.Diagnostics.Stopwatch.StartNew();
            o = o with { StopToken = tok.EosId };
            var outIds = Generator.Generate(m, ids, o);
            Console.WriteLine((p.GetValue(chat) ? "" : p.GetValue(prompt)) + tok.Decode(outIds.ToArray()));
            Console.Error.WriteLine($"[{outIds.Count} tokens in {sw.Elapsed.TotalSeconds:F2} s, {outIds.Count / sw.Elapsed.TotalSeconds:F1} tokens/s]");
            return 0;
        }));
        return cmd;
    }

    /// <summary>The engine chat format the model was tuned on, from its chat template; refused when it has none or one the engine does not render.</summary>
    static ChatTemplate ChatFormat(string dir, Engine.Model.LlamaModel m)
    {
        string? jinja = m.Config.Hf?.ChatTemplate;
        if (jinja == null) throw new ArgumentException($"--chat: {dir} has no chat template (its model was not tuned on a chat format): give the prompt without --chat");
        return ChatTemplate.FromJinja(jinja) ?? throw new ArgumentException(
            $"--chat: the chat template of {dir} is not one of the engine's formats (the engine renders the templates it trains with, not arbitrary Jinja): give the prompt already formatted, without --chat");
    }
}
