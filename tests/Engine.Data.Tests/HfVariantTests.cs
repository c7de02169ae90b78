using System.Text.Json.Nodes;
using Engine.Data;

namespace Engine.Data.Tests;

/// <summary>
/// tokenizer.json features the three real files do not use, checked against Hugging Face on variants of those files:
/// the Metaspace pre-tokenizer and decoder (newer Llama/Mistral conversions), added-token flags (lstrip, rstrip,
/// single_word, normalized), Digits and every Split behavior, unk without byte fallback, ByteLevel's prefix space.
/// </summary>
public class HfVariantTests
{
    static JsonObject Real(HfOracle o, string name) => JsonNode.Parse(File.ReadAllText(o.RealTokenizer(name)))!.AsObject();

    static JsonObject Obj(string json) => JsonNode.Parse(json)!.AsObject();

    static void AddTokens(JsonObject tok, int firstId, params string[] specs)
    {
        var arr = tok["added_tokens"]!.AsArray();
        int id = firstId;
        foreach (var spec in specs)
        {
            var o = Obj(spec);
            o["id"] = id++;
            arr.Add(o);
        }
    }

    /// <summary>Variants by name: (base file, edit).</summary>
    static (string Base, Action<JsonObject> Edit) Variant(string name) => name switch
    {
        // newer transformers conversion of Llama 2 / Mistral: no normalizer, Metaspace "first" without splitting
        "metaspace_first" => ("llama2", t =>
        {
            t["normalizer"] = null;
            t["pre_tokenizer"] = Obj("""{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false}""");
        }
        ),
        // Metaspace "always" with splitting, decoded by the Metaspace decoder
        "metaspace_always_split" => ("llama2", t =>
        {
            t["normalizer"] = null;
            t["pre_tokenizer"] = Obj("""{"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true}""");
            t["decoder"] = Obj("""{"type":"Sequence","decoders":[{"type":"ByteFallback"},{"type":"Metaspace","replacement":"▁","prepend_scheme":"always","split":true}]}""");
        }
        ),
        // Baichuan-like: no dummy prefix, digits split one by one, punctuation isolated, words merged with the ▁ before them
        "split_behaviors" => ("llama2", t =>
        {
            t["normalizer"] = Obj("""{"type":"Sequence","normalizers":[{"type":"Replace","pattern":{"String":" "},"content":"▁"}]}""");
            t["pre_tokenizer"] = Obj("""
                {"type":"Sequence","pretokenizers":[
                  {"type":"Digits","individual_digits":true},
                  {"type":"Split","pattern":{"String":"▁"},"behavior":"MergedWithNext","invert":false},
                  {"type":"Split","pattern":{"Regex":"[\\p{P}]+"},"behavior":"MergedWithPrevious","invert":false},
                  {"type":"Split","pattern":{"Regex":"[0-9]"},"behavior":"Contiguous","invert":true},
                  {"type":"Split","pattern":{"Regex":"\\s+"},"behavior":"Removed","invert":false}]}
                """);
        }
        ),
        // unknown characters become <unk> (fused runs), no byte fallback
        "unk_fused" => ("llama2", t =>
        {
            t["model"]!["byte_fallback"] = false;
            t["model"]!["fuse_unk"] = true;
        }
        ),
        // added tokens with every flag, raw and normalized, on the SentencePiece file
        "added_flags" => ("llama2", t => AddTokens(t, 32000,
            """{"content":"[NEWS]","single_word":false,"lstrip":true,"rstrip":true,"normalized":false,"special":false}""",
            """{"content":"Fed","single_word":true,"lstrip":false,"rstrip":false,"normalized":false,"special":false}""",
            """{"content":"<|sep|>","single_word":false,"lstrip":false,"rstrip":true,"normalized":false,"special":true}""",
            """{"content":"市盈率","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false}""",
            """{"content":"▁央行","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false}""")),
        // byte-level with a prefix space and added tokens (raw and normalized) on Qwen3's file
        "bytelevel_prefix_added" => ("qwen3", t =>
        {
            t["pre_tokenizer"]!["pretokenizers"]![1]!["add_prefix_space"] = true;
            AddTokens(t, 151669,
                """{"content":"[NEWS]","single_word":false,"lstrip":true,"rstrip":true,"normalized":false,"special":false}""",
                """{"content":"Fed","single_word":true,"lstrip":false,"rstrip":false,"normalized":true,"special":false}""",
                """{"content":"市盈率","single_word":false,"lstrip":false,"rstrip":false,"normalized":true,"special":false}""");
        }
        ),
        _ => throw new ArgumentException(name),
    };

    static readonly string[] Extra =
    [
        "The Fed said [NEWS] rates rise.", "Fed", "Fedora and the Fed, FedEx", "  [NEWS]  x", "a<|sep|>   b<|sep|>", "央行宣布降准，市盈率上升 12.5%",
        "市盈率市盈率", "[NEWS][NEWS]", "x [NEWS]y", "<s> 央行", "鑫鑫 鑫a", "\u00e9\u0301 ÿ 𝔘𝔫𝔦", "2023年Q4营收1,234.5亿元。", "end.", "...a,b;c",
    ];

    [Theory]
    [InlineData("metaspace_first")]
    [InlineData("metaspace_always_split")]
    [InlineData("split_behaviors")]
    [InlineData("unk_fused")]
    [InlineData("added_flags")]
    [InlineData("bytelevel_prefix_added")]
    public void Variant_matches_Hugging_Face(string name)
    {
        var oracle = HfOracle.Require();
        var (baseName, edit) = Variant(name);
        var json = Real(oracle, baseName);
        edit(json);
        string path = Path.Combine(TestData.TempDir(), name + ".json");
        File.WriteAllText(path, json.ToJsonString());
        var tok = BpeTokenizer.Load(path);
        // 60 documents of every shipped pretraining and instruction file, the awkward strings, and strings for the flags
        var docs = HfParityTests.Corpus().GroupBy(d => d.File).SelectMany(g => g.Take(60)).Select(d => d.Text)
            .Concat(HfParityTests.Awkward).Concat(Extra).ToList();
        var hf = oracle.Encode(path, docs);
        var problems = new List<string>();
        for (int i = 0; i < docs.Count; i++)
        {
            var ours = tok.Encode(docs[i]);
            if (!ours.AsSpan().SequenceEqual(hf[i].Ids))
                problems.Add($"#{i} '{docs[i][..Math.Min(60, docs[i].Length)]}': ours [{string.Join(",", ours.Take(12))}] vs HF [{string.Join(",", hf[i].Ids.Take(12))}]");
            else if (tok.Decode(ours) != hf[i].Text) problems.Add($"#{i}: decoded '{tok.Decode(ours)}' vs HF '{hf[i].Text}'");
        }
        Assert.True(problems.Count == 0, $"{name}: {problems.Count} of {docs.Count} differ:\n" + string.Join("\n", problems.Take(8)));
    }
}
