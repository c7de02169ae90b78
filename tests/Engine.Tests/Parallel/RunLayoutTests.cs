using Engine.Training.Config;
using Engine.Training.Parallel;
using Engine.Training.Recipes;
using Engine.Training.Run;

namespace Engine.Tests.Parallel;

/// <summary>
/// <see cref="RunLayout"/> is the one place that checks a run's layout: every problem named by its key in one message,
/// what the engine cannot do refused by name (for the run kind that needs it), the recompute mode read from
/// model.recompute or the older checkpoint_activations — and config loading, `engine train` and recipes all reach it.
/// </summary>
public class RunLayoutTests
{
    static ConfigException Refused(RunLayout l, int? world = null, int? layers = null, int? accum = null, RunNeeds? needs = null) =>
        Assert.Throws<ConfigException>(() => l.Validate(world, layers, accum, needs));

    [Fact]
    public void EveryProblemIsNamedByItsKeyInOneMessage()
    {
        var e = Refused(new RunLayout(new ParallelSection { Pp = 3, Zero = 5, BucketMb = 0, Schedule = "zb", Layers = [1, 1] }), world: 4, layers: 2);
        foreach (var key in new[] { "parallel.pp = 3 does not divide the job's 4 rank(s)", "parallel.zero must be 0, 1, 2 or 3", "parallel.bucket_mb", "parallel.schedule", "parallel.layers names 2 stages" })
            Assert.Contains(key, e.Message);
        Assert.Contains("parallel.dp = 3 but the job has 4", Refused(new RunLayout(new ParallelSection { Dp = 3 }), world: 4).Message);
        Assert.Contains("needs at least 4 layers, the model has 2", Refused(new RunLayout(new ParallelSection { Pp = 4 }), world: 4, layers: 2).Message);
        // the job's ranks and the model's depth are checked only where they are known
        new RunLayout(new ParallelSection { Pp = 4 }).Validate();
    }

    /// <summary>Tensor and context parallelism's rules and what they cannot run yet, each refused by name.</summary>
    [Fact]
    public void TensorAndContextParallelismRefuseByName()
    {
        var model = new Engine.Model.LlamaConfig { VocabSize = 1002, HiddenSize = 64, IntermediateSize = 96, NumLayers = 4, NumHeads = 6, NumKvHeads = 3 };
        ConfigException Refused4(ParallelSection p, Engine.Model.LlamaConfig m, RunNeeds? needs = null, int world = 4) =>
            Assert.Throws<ConfigException>(() => new RunLayout(p).Validate(world, null, 4, needs, m));
        var e = Refused4(new ParallelSection { Tp = 4 }, model);
        Assert.Contains("parallel.tp = 4 must divide num_attention_heads (6)", e.Message);
        Assert.Contains("parallel.tp = 4 and num_key_value_heads (3): one must divide the other", e.Message);
        Assert.Contains("parallel.tp = 4 must divide vocab_size (1002)", Refused4(new ParallelSection { Tp = 4 }, model with { NumHeads = 8, NumKvHeads = 2 }).Message);
        Assert.Contains("pp 1 × cp 3 × tp 1 = 3 does not divide the job's 4 rank(s)", Refused4(new ParallelSection { Cp = 3 }, model).Message);
        var ok = model with { VocabSize = 1024, NumHeads = 8, NumKvHeads = 2 };
        new RunLayout(new ParallelSection { Tp = 4 }).Validate(4, null, 4, null, ok);
        new RunLayout(new ParallelSection { Tp = 4 }).Validate(4, null, 4, null, ok with { NumKvHeads = 1 });   // kv heads replicated
        Assert.Contains("train: lora with parallel.tp = 2 is not supported yet", Refused4(new ParallelSection { Tp = 2 }, ok, new RunNeeds("train") { Lora = new LoraSection() }).Message);
        Assert.Contains("ewc_lambda > 0 with parallel.cp = 2 is not supported", Refused4(new ParallelSection { Cp = 2 }, ok, new RunNeeds("stage s") { Ewc = true }).Message);
        Assert.Contains("alignment.dpo: parallel.tp = 2: this phase's loss reads whole logits", Refused4(new ParallelSection { Tp = 2 }, ok, new RunNeeds("alignment.dpo") { OwnLoss = true }).Message);
        Assert.Contains("max-z loss (z_loss_weight = 0.0002) is not supported yet", Refused4(new ParallelSection { Tp = 2 }, ok with { MaxZLossWeight = 2e-4 }).Message);
        Assert.Contains("parallel.cp = 2 with ALiBi positions is not supported",
            Refused4(new ParallelSection { Cp = 2 }, ok with { Family = Engine.Model.ModelFamily.Baichuan, Position = Engine.Model.PositionEmbedding.Alibi }).Message);
        // the interleaved schedule's rules
        Assert.Contains("must be a multiple of it", Refused4(new ParallelSection { Pp = 4, Schedule = "interleaved", VirtualStages = 2, MicroBatches = 6 }, ok with { NumLayers = 8 }).Message);
        Assert.Contains("parallel.virtual_stages = 2 needs parallel.schedule = \"interleaved\"", Refused4(new ParallelSection { Pp = 2, VirtualStages = 2 }, ok).Message);
        Assert.Contains("needs at least 8 layers, the model has 4", Refused4(new ParallelSection { Pp = 4, Schedule = "interleaved", VirtualStages = 2 }, ok).Message);
    }

    [Fact]
    public void WhatTheEngineCannotDoIsRefusedByName()
    {
        Assert.Contains("ewc_lambda > 0 cannot be combined with parallel.zero = 3", Refused(new RunLayout(new ParallelSection { Zero = 3 }), needs: new RunNeeds("stage s") { Ewc = true }).Message);
        Assert.Contains("stage s: lora is not supported with parallel.zero = 3 in recipes", Refused(new RunLayout(new ParallelSection { Zero = 3 }), needs: new RunNeeds("stage s") { MergesLora = true }).Message);
        Assert.Contains("alignment.ppo: parallel.zero = 3: PPO's rollouts decode token by token", Refused(new RunLayout(new ParallelSection { Zero = 3 }), needs: new RunNeeds("alignment.ppo") { Sampling = true }).Message);
        Assert.Contains("parallel.zero = 2 is not supported with pipeline stages", Refused(new RunLayout(new ParallelSection { Zero = 2, Pp = 2 })).Message);
        Assert.Contains("model.recompute must be", Refused(new RunLayout(new ParallelSection(), "some")).Message);
        var ppo = Refused(new RunLayout(new ParallelSection { Pp = 2 }), needs: new RunNeeds("alignment.ppo") { Sampling = true });
        Assert.Contains("alignment.ppo: parallel.pp = 2: PPO samples its rollouts token by token", ppo.Message);
        Assert.Contains("alignment.ppo.steps = 0", ppo.Message);
        var lora = Refused(new RunLayout(new ParallelSection { Pp = 2 }), needs: new RunNeeds("stage tune") { Lora = new LoraSection { Dropout = 0.1 } });
        Assert.Contains("stage tune: lora.dropout = 0.1 with pipeline stages", lora.Message);
        // what the engine can do passes: LoRA without dropout, reward model and DPO on pipeline stages, PPO data-parallel
        new RunLayout(new ParallelSection { Pp = 2 }).Validate(4, 4, 1, new RunNeeds("stage tune") { Lora = new LoraSection() });
        new RunLayout(new ParallelSection { Pp = 2, Zero = 1 }).Validate(4, 4, 1, new RunNeeds("alignment.dpo"));
        new RunLayout(new ParallelSection { Zero = 2 }).Validate(4, 4, 1, new RunNeeds("alignment.ppo") { Sampling = true });
        // ZeRO-3 (with pipeline stages too) and selective recompute
        new RunLayout(new ParallelSection { Zero = 3, Pp = 2 }, "selective").Validate(4, 4, 1, new RunNeeds("train") { Lora = new LoraSection() });
    }

    [Fact]
    public void RecomputeComesFromModelRecomputeOrTheOlderSwitch()
    {
        Assert.Equal("none", RunLayout.From(new ParallelSection(), new ModelSection()).Recompute);
        Assert.Equal("full", RunLayout.From(new ParallelSection(), new ModelSection { CheckpointActivations = true }).Recompute);
        Assert.Equal("full", RunLayout.From(new ParallelSection(), new ModelSection { Recompute = "full" }).Recompute);
        var both = RunLayout.From(new ParallelSection(), new ModelSection { Recompute = "none", CheckpointActivations = true });
        Assert.Contains("model.checkpoint_activations = true (full recompute) contradicts model.recompute = \"none\"", Refused(both).Message);
        Assert.True(RunLayout.From(new ParallelSection(), new ModelSection { Recompute = "full" }).Plan(2, 4, 1, 64).Checkpoint);
    }

    [Fact]
    public void TheMicroBatchRuleHoldsAtEveryPipelineDepth()
    {
        foreach (int pp in new[] { 1, 2 })
        {
            Assert.Equal(3, new RunLayout(new ParallelSection { Pp = pp }).MicroBatches(3));
            Assert.Equal(4, new RunLayout(new ParallelSection { Pp = pp, MicroBatches = 4 }).MicroBatches(1));
            Assert.Equal(4 / pp * 4 * 2, new RunLayout(new ParallelSection { Pp = pp, MicroBatches = 4 }).GlobalBatch(4, 2, 1));
        }
        Assert.Contains("stage s: parallel.micro_batches = 4 and grad_accum = 2", Refused(new RunLayout(new ParallelSection { MicroBatches = 4 }), accum: 2, needs: new RunNeeds("stage s")).Message);
    }

    [Fact]
    public void RecipeConfigsAreCheckedStageByStageAtLoad()
    {
        var cfg = new RecipeConfig
        {
            Sources = new() { ["gen"] = new SourceSection { Files = ["x.txt"] } },
            Stages =
            [
                new StageSection { Name = "a", Weights = new() { ["gen"] = 1 }, GradAccum = 1 },
                new StageSection { Name = "b", Init = "a", Weights = new() { ["gen"] = 1 }, GradAccum = 2, Lora = new LoraSection { Dropout = 0.05 } },
            ],
            Parallel = new ParallelSection { Pp = 2 },
        };
        var e = Assert.Throws<ConfigException>(cfg.Validate);
        Assert.Contains("stage b: lora.dropout = 0.05 with pipeline stages", e.Message);
        cfg.Stages[1].Lora = null;
        cfg.Validate();   // pipeline stages, LoRA-free: accepted (recipes run every layout train does)
    }
}
