#:project ../../src/Engine.Training/Engine.Training.csproj
#:property PublishAot=false
// Held-out perplexity of a model exported to GGUF f32 / f16 / q8_0 / q4_0, measured two ways on the same windows:
//   engine:    the file read back and dequantized to fp32 (GgufExport.Load), Evaluator.Perplexity
//   llama.cpp: the file run by node-llama-cpp 3.21.1 (logits.mjs, mode "nll", llama.cpp's default F16 KV cache)
//
//   dotnet run tools/llamacpp-check/Perplexity.cs -- MODEL_DIR TEXT_FILE [byte|tokenizer.json] [valid_fraction=0.05] [seq_len=128] [max_windows]
//
// The held-out text is the last valid_fraction of TEXT_FILE's tokens, as `engine train` holds it out; windows are
// non-overlapping seq_len inputs with their next tokens as targets; max_windows caps their number (llama.cpp hands back
// the whole next-token distribution per position, slow for large vocabularies). Prints a Markdown table.
using System.Diagnostics;
using System.Text.Json;
using Engine.Core;
using Engine.Data;
using Engine.Model.Export;
using Engine.Model.IO;
using Engine.Training.Eval;

if (args.Length < 2) { Console.Error.WriteLine("usage: Perplexity.cs MODEL_DIR TEXT_FILE [byte|tokenizer.json] [valid_fraction] [seq_len]"); return 2; }
string modelDir = args[0], textFile = args[1], tokSpec = args.Length > 2 ? args[2] : "byte";
double validFraction = args.Length > 3 ? double.Parse(args[3], System.Globalization.CultureInfo.InvariantCulture) : 0.05;
int T = args.Length > 4 ? int.Parse(args[4], System.Globalization.CultureInfo.InvariantCulture) : 128;
string script = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(AppContext.GetData("EntryPointFilePath") as string ?? "tools/llamacpp-check/Perplexity.cs"))!, "logits.mjs");

ITokenizer tok = tokSpec == "byte" ? new ByteTokenizer() : BpeTokenizer.Load(tokSpec);
GgufVocab vocab = tokSpec == "byte" ? GgufVocab.EngineBytes() : GgufVocab.FromTokenizerJson(tokSpec);
int[] ids = tok.Encode(TextDecoding.ReadFile(DataPaths.WithCompressedTwin(textFile), InvalidUtf8Policy.Error));   // data/x.txt: its .gz twin
int cut = (int)(ids.Length * (1 - validFraction));
int[] valid = ids[cut..];
int windows = Math.Min((valid.Length - 1) / T, args.Length > 5 ? int.Parse(args[5], System.Globalization.CultureInfo.InvariantCulture) : int.MaxValue);
var seqs = Enumerable.Range(0, windows).Select(w => valid[(w * T)..(w * T + T + 1)]).ToArray();

using var model = ModelIO.Load(modelDir, CpuBackend.Instance);
var fp32 = Evaluator.Perplexity(model, valid, T, 8, (long)windows * T, tok);
string outDir = Path.Combine(Path.GetTempPath(), "engine-gguf-ppl-" + Environment.ProcessId);
Directory.CreateDirectory(outDir);
var rows = new List<(GgufQuant Q, double MiB, double Engine, double Bpb)>();
var paths = new List<string>();
foreach (var q in Enum.GetValues<GgufQuant>())
{
    string path = Path.Combine(outDir, $"model-{q}.gguf");
    GgufExport.Write(model, vocab, path, q, Path.GetFileName(modelDir.TrimEnd('/')));
    using var mq = GgufExport.Load(path, CpuBackend.Instance);
    var r = Evaluator.Perplexity(mq, valid, T, 8, (long)windows * T, tok);
    rows.Add((q, new FileInfo(path).Length / 1048576.0, r.Perplexity, r.BitsPerByte ?? double.NaN));
    paths.Add(path);
}

string req = Path.Combine(outDir, "request.json");
File.WriteAllText(req, JsonSerializer.Serialize(new { models = paths, sequences = seqs, mode = "nll", kvCache = "F16", threads = 2 }));
var psi = new ProcessStartInfo("node", [script, req]) { RedirectStandardOutput = true, WorkingDirectory = Path.GetDirectoryName(script)! };
var sw = Stopwatch.StartNew();
using var p = Process.Start(psi)!;
string json = p.StandardOutput.ReadToEnd();
p.WaitForExit();
if (p.ExitCode != 0) { Console.Error.WriteLine("llama.cpp run failed"); return 1; }
using var doc = JsonDocument.Parse(json);
var llama = doc.RootElement.GetProperty("models").EnumerateArray().Select(m =>
{
    double nll = 0; long n = 0;
    foreach (var s in m.GetProperty("sequences").EnumerateArray()) { nll += s.GetProperty("nll").GetDouble(); n += s.GetProperty("count").GetInt64(); }
    return Math.Exp(nll / n);
}).ToList();

Console.WriteLine($"model {modelDir}: {model.ParameterCount:N0} parameters; held-out: last {validFraction:P0} of {Path.GetFileName(textFile)}, {windows} windows × {T} = {windows * T:N0} tokens; llama.cpp {sw.Elapsed.TotalSeconds:F0} s");
Console.WriteLine();
Console.WriteLine($"| GGUF type | file (MiB) | perplexity, engine on dequantized weights | Δ vs fp32 | bits/byte | perplexity, llama.cpp | Δ vs llama.cpp f32 |");
Console.WriteLine("|---|---|---|---|---|---|---|");
Console.WriteLine($"| (fp32 model, engine) | — | {fp32.Perplexity:F4} | — | {fp32.BitsPerByte:F4} | — | — |");
for (int i = 0; i < rows.Count; i++)
{
    var (q, mib, ppl, bpb) = rows[i];
    Console.WriteLine($"| {q.ToString().ToLowerInvariant()} | {mib:F2} | {ppl:F4} | {Pct(ppl / fp32.Perplexity)} | {bpb:F4} | {llama[i]:F4} | {Pct(llama[i] / llama[0])} |");
}
Directory.Delete(outDir, recursive: true);
return 0;

static string Pct(double ratio) => $"{(ratio >= 1 ? "+" : "")}{(ratio - 1) * 100:F3}%";
