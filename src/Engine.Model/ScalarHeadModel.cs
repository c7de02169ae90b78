using Engine.Core;
using Engine.Model.IO;

namespace Engine.Model;

/// <summary>
/// A Llama body with a scalar head on its final hidden states: the reward model (score read at the last answer token)
/// and the PPO critic (a value per token). The head is Hugging Face LlamaForSequenceClassification's
/// <c>score.weight</c> [1, C] without bias (a bias shifts every reward equally and cancels in the pairwise loss); it
/// lives in a store of its own beside the body's, so the body stays a plain <see cref="LlamaModel"/> (loadable,
/// savable and trainable as one) and the head gets its own optimizer.
/// </summary>
public sealed class ScalarHeadModel : IDisposable
{
    public const string HeadName = "score.weight";
    public const string HeadFile = "score.safetensors";

    /// <param name="body">Taken over (disposed with this model).</param>
    /// <param name="seed">The head's init: N(0, initializer_range), as transformers initializes score.weight.</param>
    public ScalarHeadModel(LlamaModel body, ulong seed)
    {
        Body = body;
        Head = new ParameterStore(body.Backend, [new ParameterSpec(HeadName, [1, body.Config.HiddenSize])]);
        var w = new float[body.Config.HiddenSize];
        Rng.For(seed, HeadName).FillNormal(w, 0, body.Config.InitializerRange);
        body.Backend.Upload(Head[HeadName], w);
    }

    public LlamaModel Body { get; }
    public ParameterStore Head { get; }
    public IBackend Backend => Body.Backend;

    /// <summary>Per-token scalars [B*T, 1]: the head over the final (normed) hidden states.</summary>
    public Tensor Scores(Tensor ids, int batch, int seqLen) => F.Linear(Body.Hidden(ids, batch, seqLen), Head[HeadName]);

    /// <summary>As <see cref="Scores"/> on the body's last pipeline stage, from that stage's input
    /// (<see cref="LlamaModel.StageHidden"/>).</summary>
    public Tensor StageScores(Tensor input, int batch, int seqLen) => F.Linear(Body.StageHidden(input, batch, seqLen), Head[HeadName]);

    /// <summary>A directory <see cref="Save"/> wrote: the body (any Hugging Face layout) and the head.</summary>
    public static ScalarHeadModel Load(string directory, IBackend backend)
    {
        var body = ModelIO.Load(directory, backend);
        var model = new ScalarHeadModel(body, 0);
        try
        {
            string path = Path.Combine(directory, HeadFile);
            using var f = SafeTensorsFile.Open(path);
            var h = model.Head[HeadName];
            if (!f.Contains(HeadName) || !f[HeadName].Shape.SequenceEqual([1L, h.Shape[1]]))
                throw new InvalidDataException($"{path}: expected tensor {HeadName} of shape [1, {h.Shape[1]}]");
            backend.Upload(h, f.ReadFloat32(HeadName));
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>The head's file alone (<see cref="HeadFile"/>), beside a body saved by other means (pipeline stages).</summary>
    public void SaveHead(string directory)
    {
        var h = Head[HeadName];
        SafeTensorsWriter.Write(Path.Combine(directory, HeadFile), [new SafeTensorWrite(HeadName, [1, h.Shape[1]], h.ToArray())]);
    }

    /// <summary>Freezes (or unfreezes) body and head.</summary>
    public void SetTrainable(bool on)
    {
        Body.SetTrainable(on ? null : _ => false);
        var h = Head[HeadName];
        h.Frozen = !on;
        h.RequiresGrad = on;
    }

    public void ZeroGrad()
    {
        Body.ZeroGrad();
        Head.ZeroGrads();
    }

    /// <summary>config.json + model.safetensors for the body (a plain LlamaForCausalLM directory) and score.safetensors
    /// for the head.</summary>
    public void Save(string directory)
    {
        ModelIO.Save(Body, directory);
        SaveHead(directory);
    }

    public void Dispose()
    {
        Body.Dispose();
        Head.Dispose();
    }
}
