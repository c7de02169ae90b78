using Engine.Model.Lora;

namespace Engine.Model.Export;

/// <summary>
/// A LoRA adapter as a llama.cpp adapter GGUF, the layout convert_lora_to_gguf.py writes and llama.cpp's
/// <c>llama_adapter_lora_init</c> reads (llama-cli/llama-server <c>--lora</c>, node-llama-cpp's <c>lora</c> context
/// option): general.type "adapter", general.architecture the base's ("llama"), adapter.type "lora", adapter.lora.alpha,
/// and for every adapted weight W (GGUF name N) the pair N.lora_a / N.lora_b.
///
/// Layout: PEFT's lora_A [r, in] and lora_B [out, r] are written as they are (ggml ne = [in, r] and [r, out]: llama.cpp
/// checks W.ne[0] == a.ne[0], W.ne[1] == b.ne[1], a.ne[1] == b.ne[0]); for q_proj/k_proj the rows of B are permuted as
/// the base's q/k rows are (<see cref="GgufExport.PermuteRows"/>: the delta BA then lives in the GGUF's row order).
/// llama.cpp adds scale · B(A x) with scale = alpha / r (rank read from B), so alpha is PEFT's lora_alpha — times √r for
/// rsLoRA, whose PEFT scale is alpha / √r.
/// </summary>
public static class GgufLoraExport
{
    public static GgufExportReport Write(LoraAdapters lora, LlamaConfig baseConfig, string path, GgmlType type, string? name = null)
    {
        if (type is not (GgmlType.F32 or GgmlType.F16)) throw new ArgumentException($"a LoRA adapter GGUF holds F32 or F16 tensors (got {type})");
        var c = baseConfig;
        int r = lora.Config.R;
        var w = new GgufWriter();
        w.Add("general.architecture", GgufValue.Str(GgufExport.Arch));
        w.Add("general.type", GgufValue.Str("adapter"));
        if (!string.IsNullOrEmpty(name)) w.Add("general.name", GgufValue.Str(name));
        w.Add("adapter.type", GgufValue.Str("lora"));
        double alpha = lora.Config.UseRslora ? lora.Config.Alpha * Math.Sqrt(r) : lora.Config.Alpha;
        w.Add("adapter.lora.alpha", GgufValue.F32((float)alpha));
        var reports = new List<GgufTensorReport>();
        foreach (var m in lora.Modules)
        {
            if (m.Weight == "lm_head.weight" && c.NormHead)
                throw new NotSupportedException("a LoRA on lm_head of a NormHead model has no llama.cpp adapter form (the GGUF's output.weight is the normalised head): merge it instead (--format gguf --adapter)");
            string g = GgufExport.TensorName(m.Weight);
            var (ta, tb) = lora.Of(m.Module);
            float[] a = ta.ToArray(), b = tb.ToArray();
            if (m.Weight.EndsWith("self_attn.q_proj.weight", StringComparison.Ordinal)) b = GgufExport.PermuteRows(b, c.NumHeads, c.HeadDim, r, toGguf: true);
            else if (m.Weight.EndsWith("self_attn.k_proj.weight", StringComparison.Ordinal)) b = GgufExport.PermuteRows(b, c.NumKvHeads, c.HeadDim, r, toGguf: true);
            Add(w, reports, g + ".lora_a", [m.In, r], type, a);
            Add(w, reports, g + ".lora_b", [r, m.Out], type, b);
        }
        w.Write(path);
        return new GgufExportReport(path, new FileInfo(path).Length, reports, "");
    }

    static void Add(GgufWriter w, List<GgufTensorReport> reports, string name, long[] dims, GgmlType type, float[] values)
    {
        w.AddTensor(name, dims, type, () =>
        {
            var bytes = new byte[new GgufTensorInfo(name, dims, type, 0).Bytes];
            GgmlQuants.Quantize(type, values, bytes);
            return bytes;
        });
        reports.Add(new GgufTensorReport(name, type, dims, null));
    }
}
