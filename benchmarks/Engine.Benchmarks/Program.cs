using Engine.Benchmarks;

// Verb dispatcher: `dotnet run -c Release --project benchmarks/Engine.Benchmarks -- <verb> [options]`.
// Add a verb by adding a case here and a class next to GemmBenchmark.cs.
var verbs = new Dictionary<string, (string Help, Func<string[], int> Run)>
{
    ["gemm"] = ("Sgemm vs OpenBLAS (numpy) on square and model shapes; writes benchmarks/results/gemm-<date>.json",
        GemmBenchmark.Run),
    ["data"] = ("Tokenize MB/s (ours vs Microsoft.ML.Tokenizers, same vocab) and dedup docs/s on the shipped corpus; writes benchmarks/results/data-<date>.json",
        DataBench.Run),
};

if (args.Length == 0 || !verbs.TryGetValue(args[0], out var verb))
{
    Console.Error.WriteLine(args.Length == 0 ? "usage: Engine.Benchmarks <verb> [options]" : $"unknown verb '{args[0]}'");
    foreach (var (name, v) in verbs) Console.Error.WriteLine($"  {name,-8} {v.Help}");
    return 2;
}
return verb.Run(args[1..]);
