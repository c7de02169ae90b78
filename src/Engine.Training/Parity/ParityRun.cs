using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;

namespace Engine.Training.Parity;

/// <summary>
/// The inputs of a parity run (the format benchmarks/scripts/torch_parity.py and hf_parity.py read too): token ids and
/// targets [batch][seq] (-100 = ignored), z-loss, and one AdamW step's hyper-parameters with global-norm clipping.
/// </summary>
public sealed record ParityInput(int[][] Ids, int[][] Targets, double ZLoss, double Lr, double[] Betas, double Eps, double WeightDecay, double Clip)
{
    static readonly JsonSerializerOptions Snake = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public static ParityInput Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"parity input not found: {path}", path);
        var p = JsonSerializer.Deserialize<ParityInput>(File.ReadAllText(path), Snake) ?? throw new InvalidDataException($"{path}: empty");
        if (p.Ids.Length == 0 || p.Ids.Length != p.Targets.Length || p.Ids.Any(r => r.Length != p.Ids[0].Length) || p.Targets.Any(r => r.Length != p.Ids[0].Length))
            throw new InvalidDataException($"{path}: ids and targets must be equal-length [batch][seq] arrays");
        if (p.Betas is not { Length: 2 }) throw new InvalidDataException($"{path}: betas must hold two numbers");
        return p;
    }

    public string ToJson() => JsonSerializer.Serialize(this, Snake);
}

/// <summary>
/// Runs the engine side of a parity check on any backend: logits, loss (mean over valid targets + z-loss), every
/// parameter gradient, the pre-clip gradient norm and the weights after one AdamW step (norm weights without decay,
/// as the oracles group them). Output keys match the Python oracles'.
/// </summary>
public static class ParityRun
{
    public static JsonObject Run(LlamaModel model, ParityInput input)
    {
        int B = input.Ids.Length, T = input.Ids[0].Length;
        var be = model.Backend;
        var ids = input.Ids.SelectMany(r => r).ToArray();
        var tg = input.Targets.SelectMany(r => r).ToArray();
        float valid = tg.Count(t => t != -100);
        if (valid == 0) throw new InvalidDataException("parity input has no valid target");
        model.ZeroGrad();
        float[] logits;
        double loss;
        using (var scope = new TensorScope())
        {
            var idT = be.Empty([ids.Length], DType.I32);
            var tgT = be.Empty([tg.Length], DType.I32);
            be.Upload(idT, ids);
            be.Upload(tgT, tg);
            using (Grad.NoGrad()) logits = model.Logits(idT, B, T).ToArray();
            var l = model.Loss(idT, tgT, B, T, valid, (float)input.ZLoss).Loss;
            loss = l.Item();
            Grad.Backward(l);
        }
        var grads = new JsonObject();
        foreach (var (name, p) in model.Parameters) grads[name] = ToJson(p.Grad!.ToArray());
        using var opt = new AdamW(model, new AdamWOptions
        {
            Lr = input.Lr,
            Beta1 = input.Betas[0],
            Beta2 = input.Betas[1],
            Eps = input.Eps,
            WeightDecay = input.WeightDecay,
            ClipNorm = input.Clip,
        });
        double norm = opt.Update(input.Lr);
        var updated = new JsonObject();
        foreach (var (name, p) in model.Parameters) updated[name] = ToJson(p.ToArray());
        return new JsonObject
        {
            ["backend"] = be.Name,
            ["loss"] = loss,
            ["logits"] = ToJson(logits),
            ["grad_norm"] = norm,
            ["grads"] = grads,
            ["updated"] = updated,
        };
    }

    /// <summary>Logits only (a model with a LoRA adapter attached: its base has no gradients), keys as <see cref="Run"/>.</summary>
    public static JsonObject Logits(LlamaModel model, ParityInput input)
    {
        int B = input.Ids.Length, T = input.Ids[0].Length;
        var be = model.Backend;
        using var scope = new TensorScope();
        using var ng = Grad.NoGrad();
        var idT = be.Empty([B * T], DType.I32);
        be.Upload(idT, input.Ids.SelectMany(r => r).ToArray());
        return new JsonObject { ["backend"] = be.Name, ["logits"] = ToJson(model.Logits(idT, B, T).ToArray()) };
    }

    static JsonArray ToJson(float[] a)
    {
        var arr = new JsonArray();
        foreach (float x in a) arr.Add((double)x);
        return arr;
    }
}
