using Engine.Core;
using Engine.Model;

namespace Engine.Tests.Model;

public static class TestModels
{
    public static LlamaConfig Tiny(bool tied = false, bool normHead = false) => new()
    {
        VocabSize = 37,
        HiddenSize = 16,
        IntermediateSize = 24,
        NumLayers = 2,
        NumHeads = 4,
        NumKvHeads = 2,
        MaxPositionEmbeddings = 64,
        TieWordEmbeddings = tied,
        NormHead = normHead,
        InitializerRange = 0.2,
    };

    public static LlamaModel Create(LlamaConfig cfg, ulong seed = 1)
    {
        var m = new LlamaModel(cfg, CpuBackend.Instance);
        m.InitializeWeights(seed);
        return m;
    }

    public static (Tensor Ids, Tensor Targets) Batch(int batch, int seq, int vocab, ulong seed, int ignoreEvery = 0)
    {
        var rng = new Rng(seed);
        var ids = CpuBackend.Instance.Empty([batch * seq], DType.I32);
        var tg = CpuBackend.Instance.Empty([batch * seq], DType.I32);
        for (int i = 0; i < batch * seq; i++)
        {
            ids.IntSpan[i] = rng.NextInt(vocab);
            tg.IntSpan[i] = ignoreEvery > 0 && i % ignoreEvery == 0 ? -100 : rng.NextInt(vocab);
        }
        return (ids, tg);
    }
}
