using Engine.Core;
using Engine.Data;
using Engine.Training.Eval;

namespace Engine.Training.Recipes;

/// <summary>The documents of one named source, split (seeded) into training and held-out parts.</summary>
public sealed class LoadedSource
{
    public required string Name { get; init; }
    public required SourceSection Section { get; init; }
    public List<string> TrainDocs { get; init; } = [];
    public List<string> HeldOutDocs { get; init; } = [];
    public List<InstructionExample> Examples { get; init; } = [];
    public bool IsPretrain => Section.Kind == "pretrain";
    public string Group => $"{Section.Domain}_{Section.Language}";
}

public static class RecipeSources
{
    /// <summary>The instruction every sentiment row is rendered with (FPB/FiQA-style sentiment instructions).</summary>
    public const string SentimentInstruction = "What is the sentiment of this financial text? Answer negative, neutral or positive.";

    /// <summary>The chat format a stage tunes on — the template instruction and sentiment sources are rendered with
    /// (<see cref="InstructionStream"/>'s default) — or null when its mixture holds pretraining text only.</summary>
    public static ChatTemplate? ChatFormat(StageSection st, IReadOnlyDictionary<string, LoadedSource> sources) =>
        st.Weights.Keys.Concat(st.EndWeights?.Keys ?? Enumerable.Empty<string>()).Any(n => sources.TryGetValue(n, out var s) && !s.IsPretrain)
            ? ChatTemplate.Default : null;

    public static LoadedSource Load(string name, SourceSection s, RecipeConfig cfg)
    {
        var files = s.Files.Select(cfg.Resolve).ToList();
        switch (s.Kind)
        {
            case "pretrain":
                {
                    var docs = new List<string>();
                    foreach (var f in files)
                        foreach (var d in Documents.Read(f))
                        {
                            if (s.MaxDocs > 0 && docs.Count >= s.MaxDocs) break;
                            docs.Add(d);
                        }
                    if (docs.Count == 0) throw new InvalidDataException($"sources.{name}: no documents in {string.Join(", ", files)}");
                    int held = s.HeldOut > 0 ? Math.Max(1, (int)Math.Round(docs.Count * s.HeldOut)) : 0;
                    if (held >= docs.Count) held = docs.Count - 1;
                    var order = Permutation(docs.Count, cfg.Seed ^ (ulong)StableHash(name));
                    var heldSet = new HashSet<int>(order.Take(held));
                    return new LoadedSource
                    {
                        Name = name,
                        Section = s,
                        TrainDocs = docs.Where((_, i) => !heldSet.Contains(i)).ToList(),
                        HeldOutDocs = docs.Where((_, i) => heldSet.Contains(i)).ToList(),
                    };
                }
            case "instruct":
                {
                    var ex = new List<InstructionExample>();
                    foreach (var f in files)
                        foreach (var e in Instructions.Read(f))
                        {
                            if (s.MaxDocs > 0 && ex.Count >= s.MaxDocs) break;
                            ex.Add(e);
                        }
                    if (ex.Count == 0) throw new InvalidDataException($"sources.{name}: no instruction examples in {string.Join(", ", files)}");
                    return new LoadedSource { Name = name, Section = s, Examples = ex };
                }
            default: // sentiment
                {
                    var ex = new List<InstructionExample>();
                    foreach (var f in files)
                        foreach (var e in LabeledData.Read(f).Examples)
                        {
                            if (s.MaxDocs > 0 && ex.Count >= s.MaxDocs) break;
                            ex.Add(new InstructionExample(SentimentInstruction, e.Text, e.Label));
                        }
                    return new LoadedSource { Name = name, Section = s, Examples = ex };
                }
        }
    }

    public static int[] Permutation(int n, ulong seed)
    {
        var rng = new Rng(seed);
        var p = Enumerable.Range(0, n).ToArray();
        for (int i = n - 1; i > 0; i--)
        {
            int j = rng.NextInt(i + 1);
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }

    /// <summary>FNV-1a: a hash that, unlike string.GetHashCode, is the same in every process.</summary>
    public static uint StableHash(string s)
    {
        uint h = 2166136261;
        foreach (char c in s) { h ^= c; h *= 16777619; }
        return h;
    }
}

/// <summary>Micro-batches from an endless sample stream: masked targets become -100. Row sources are the stream's
/// sample sources: <paramref name="sourceNames"/> lists them (a mixture's children by default).</summary>
public sealed class StreamBatches(ISampleStream stream, IReadOnlyList<string>? sourceNames = null) : IBatchSource
{
    public IReadOnlyList<string> SourceNames { get; } = sourceNames ?? (stream as MixtureStream)?.Names ?? ["train"];

    public Batch Next(int batch, int seqLen)
    {
        var ids = new int[batch * seqLen];
        var tg = new int[batch * seqLen];
        var src = new string[batch];
        for (int b = 0; b < batch; b++)
        {
            var s = stream.Next();
            if (s.Length != seqLen) throw new InvalidOperationException($"sample of length {s.Length} from '{s.Source}' in a batch of seq_len {seqLen}");
            for (int t = 0; t < seqLen; t++)
            {
                ids[b * seqLen + t] = s.Tokens[t];
                tg[b * seqLen + t] = s.LossMask[t] ? s.Tokens[t + 1] : -100;
            }
            src[b] = s.Source;
        }
        return new Batch(ids, tg, src);
    }
}
