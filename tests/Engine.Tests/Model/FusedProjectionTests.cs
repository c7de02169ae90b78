using Engine.Core;
using Engine.Core.Autograd;
using Engine.Model;
using Engine.Model.Lora;

namespace Engine.Tests.Model;

/// <summary>
/// Issue 23's fused projections (one GEMM for q|k|v and one for gate|up, attention and SwiGLU reading the fused rows)
/// through the model on a CPU that claims FusesProjections and so runs the F.Fused* ops with the IBackend default
/// implementations (column copies): the loss and every gradient equal the separate ops'. What a GPU adds — its kernels
/// reading the fused rows with row strides — is BackendOpGpuTests' and TrainingStepGpuTests'.
/// </summary>
public class FusedProjectionTests
{
    sealed class FusingCpu : CpuDelegatingBackend
    {
        public int ColumnCopies;
        public override string Name => "fusing-cpu";
        public override bool FusesProjections => true;
        public override void CopyColumns(Tensor src, int srcCol, Tensor dst, int dstCol, int cols) { ColumnCopies++; base.CopyColumns(src, srcCol, dst, dstCol, cols); }
    }

    static readonly LlamaConfig Cfg = TestModels.Tiny() with { VocabSize = 40 };

    static (float Loss, Dictionary<string, float[]> Grads) Step(IBackend be, LoraConfig? lora = null)
    {
        using var model = new LlamaModel(Cfg, be);
        model.InitializeWeights(7);
        using var adapters = lora is null ? null : LoraAdapters.Attach(model, lora, 3);
        var rng = new Rng(5);
        int batch = 2, seq = 12, n = batch * seq;
        var ids = Enumerable.Range(0, n).Select(_ => rng.NextInt(Cfg.VocabSize)).ToArray();
        var tg = Enumerable.Range(0, n).Select(i => i % 7 == 2 ? -100 : rng.NextInt(Cfg.VocabSize)).ToArray();
        model.ZeroGrad();
        adapters?.Store.ZeroGrads();
        float loss;
        using (new TensorScope())
        {
            var idT = be.Empty([n], DType.I32);
            var tgT = be.Empty([n], DType.I32);
            be.Upload(idT, ids);
            be.Upload(tgT, tg);
            var (l, _) = model.Loss(idT, tgT, batch, seq, tg.Count(t => t != -100));
            loss = l.Item();
            Grad.Backward(l);
        }
        var store = adapters?.Store ?? model.Store;
        return (loss, store.Slots.ToDictionary(s => s.Name, s => s.Tensor.Grad!.ToArray()));
    }

    static void Same((float Loss, Dictionary<string, float[]> Grads) fused, (float Loss, Dictionary<string, float[]> Grads) plain)
    {
        Assert.Equal(plain.Loss, fused.Loss, 6);
        Assert.Equal(plain.Grads.Keys.Order(), fused.Grads.Keys.Order());
        foreach (var (name, g) in plain.Grads)
        {
            double max = g.Max(MathF.Abs);
            for (int i = 0; i < g.Length; i++)
                Assert.True(Math.Abs(fused.Grads[name][i] - g[i]) <= 1e-5 * max + 1e-7, $"{name}[{i}]: fused {fused.Grads[name][i]} vs {g[i]}");
        }
    }

    [Fact]
    public void FusedProjectionsGiveTheSeparateOpsLossAndGradients()
    {
        var be = new FusingCpu();
        var fused = Step(be);
        Assert.True(be.ColumnCopies > 0, "the fused path ran");
        Same(fused, Step(new CpuDelegatingBackend()));
    }

    [Fact]
    public void LoraTargetsKeepTheirProjectionsSeparateAndTheRestFused()
    {
        var lora = new LoraConfig { R = 2, Alpha = 4, TargetModules = ["q_proj", "v_proj"] };
        var be = new FusingCpu();
        var fused = Step(be, lora);
        Assert.True(be.ColumnCopies > 0, "gate|up still fused");
        Same(fused, Step(new CpuDelegatingBackend(), lora));
    }

    [Fact]
    public void OnlyAdjacentWeightsFuse()
    {
        using var model = new LlamaModel(Cfg, CpuBackend.Instance);
        string p = "model.layers.0.";
        Assert.True(F.Adjacent([model[p + "self_attn.q_proj.weight"], model[p + "self_attn.k_proj.weight"], model[p + "self_attn.v_proj.weight"]]));
        Assert.True(F.Adjacent([model[p + "mlp.gate_proj.weight"], model[p + "mlp.up_proj.weight"]]));
        Assert.False(F.Adjacent([model[p + "self_attn.q_proj.weight"], model[p + "self_attn.v_proj.weight"]]));   // k between them
        Assert.False(F.Adjacent([model[p + "mlp.up_proj.weight"], model[p + "mlp.gate_proj.weight"]]));          // order matters
    }
}
