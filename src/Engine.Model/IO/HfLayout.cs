namespace Engine.Model.IO;

/// <summary>
/// The Hugging Face tensor layout of each <see cref="ModelFamily"/>, against the engine's parameters (which always carry
/// Hugging Face Llama names: q_proj, k_proj, v_proj separate). The mapping happens only here, at the file boundary:
/// <list type="bullet">
/// <item>Llama: one file tensor per parameter, same name.</item>
/// <item>Baichuan: each layer's q, k and v weights are the row blocks [0, C), [C, 2C), [2C, 3C) of one
/// <c>model.layers.N.self_attn.W_pack.weight</c> [3C, C] (modeling_baichuan.py splits W_pack's output in that order);
/// every other tensor keeps its name. lm_head.weight is stored as trained (Baichuan's NormHead normalises it when it
/// runs, as the engine does).</item>
/// </list>
/// </summary>
public static class HfLayout
{
    const string Q = "self_attn.q_proj.weight", K = "self_attn.k_proj.weight", V = "self_attn.v_proj.weight";

    /// <summary>Baichuan's packed q/k/v weight of a layer.</summary>
    public static string PackedQkv(int layer) => $"model.layers.{layer}.self_attn.W_pack.weight";

    /// <summary>The file tensors (name, shape) of a model or pipeline stage in its family's layout, in state-dict order.</summary>
    public static List<(string Name, long[] Shape)> Tensors(LlamaConfig c, PipelineStage? stage = null) =>
        ToHf(c, LlamaModel.Specs(c, stage).Select(p => new ModelIO.TensorSource(p.Name, p.Shape.Select(d => (long)d).ToArray(), () => [])).ToList())
            .Select(t => (t.Name, t.Shape)).ToList();

    /// <summary>
    /// The engine's tensors (parameter names) as the family's file tensors: for Baichuan each layer's q, k, v become one
    /// W_pack whose values are produced (concatenated) when its shard is written; a layer's q, k and v must all be there.
    /// </summary>
    public static List<ModelIO.TensorSource> ToHf(LlamaConfig c, IReadOnlyList<ModelIO.TensorSource> engine)
    {
        if (c.Family != ModelFamily.Baichuan) return engine.ToList();
        var byName = engine.ToDictionary(t => t.Name, StringComparer.Ordinal);
        var result = new List<ModelIO.TensorSource>(engine.Count);
        foreach (var t in engine)
        {
            if (LayerPart(t.Name, out int layer, out string part))
            {
                if (part != Q) continue;   // k and v go out inside the W_pack that q opens
                string p = $"model.layers.{layer}.";
                if (!byName.TryGetValue(p + K, out var k) || !byName.TryGetValue(p + V, out var v))
                    throw new ArgumentException($"layer {layer}: W_pack needs q_proj, k_proj and v_proj together");
                var q = t;
                result.Add(new ModelIO.TensorSource(PackedQkv(layer), [q.Shape[0] + k.Shape[0] + v.Shape[0], q.Shape[1]], () =>
                {
                    float[] a = q.Values(), b = k.Values(), cc = v.Values();
                    var packed = new float[a.LongLength + b.LongLength + cc.LongLength];
                    a.CopyTo(packed, 0);
                    b.CopyTo(packed, a.LongLength);
                    cc.CopyTo(packed, a.LongLength + b.LongLength);
                    return packed;
                }));
            }
            else result.Add(t);
        }
        return result;
    }

    /// <summary>
    /// The engine parameters a file tensor fills, each with its first row and row count in the file tensor: the tensor
    /// itself (one part, rows from 0) — or, for Baichuan's W_pack, q, k and v. Null when the name is no tensor of the
    /// family's layout (the caller reports it).
    /// </summary>
    public static IReadOnlyList<(string Parameter, int FirstRow, int Rows)>? Parts(LlamaConfig c, string fileTensor)
    {
        if (c.Family != ModelFamily.Baichuan) return null;
        const string pre = "model.layers.", suffix = ".self_attn.W_pack.weight";
        if (!fileTensor.StartsWith(pre, StringComparison.Ordinal) || !fileTensor.EndsWith(suffix, StringComparison.Ordinal)) return null;
        string mid = fileTensor[pre.Length..^suffix.Length];
        if (!int.TryParse(mid, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int layer)
            || layer.ToString(System.Globalization.CultureInfo.InvariantCulture) != mid) return null;
        string p = $"model.layers.{layer}.";
        int h = c.HiddenSize, kv = c.NumKvHeads * c.HeadDim;
        return [(p + Q, 0, h), (p + K, h, kv), (p + V, h + kv, kv)];
    }

    /// <summary>Whether a parameter is a layer's q, k or v weight (the part of the name after the layer prefix in part).</summary>
    static bool LayerPart(string name, out int layer, out string part)
    {
        layer = -1; part = "";
        const string pre = "model.layers.";
        if (!name.StartsWith(pre, StringComparison.Ordinal)) return false;
        int dot = name.IndexOf('.', pre.Length);
        if (dot < 0 || !int.TryParse(name.AsSpan(pre.Length, dot - pre.Length), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out layer)) return false;
        part = name[(dot + 1)..];
        return part is Q or K or V;
    }
}
