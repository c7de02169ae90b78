using System.Text.Json;
using Engine.Core;
using Engine.Model.IO;
using Engine.Training;
using Engine.Training.Config;
using Engine.Training.Recipes;

namespace Engine.Tests.Recipes;

/// <summary>
/// A recipe stopped inside a stage (after a step count, as SIGTERM or --time-limit would stop it) and resumed equals
/// the uninterrupted run: the same weights bit for bit, the same report numbers, every metrics line once. The resumed
/// stage uses EWC and data selection, both recomputed from the stage's initial weights and checked against the
/// checkpoint's record; its mixture, sampler and optimizer state come from the checkpoint.
/// </summary>
public class RecipeResumeTests
{
    static string Data(string rel) => Engine.Data.DataPaths.File(rel);

    static StageSection Stage(string name, string init, Dictionary<string, double> w, int steps) => new()
    {
        Name = name,
        Init = init,
        Weights = w,
        Steps = steps,
        BatchSize = 2,
        SeqLen = 32,
        Optim = new AdamWOptions { Lr = 5e-3 },
        Schedule = new ScheduleOptions { Kind = ScheduleKind.Cosine, WarmupSteps = 1, MinLr = 1e-4 },
    };

    static RecipeConfig Recipe(string outDir)
    {
        var cfg = new RecipeConfig
        {
            Name = "resume",
            Seed = 3,
            Model = new ModelSection { HiddenSize = 32, IntermediateSize = 64, NumLayers = 1, NumHeads = 4, NumKvHeads = 2, MaxPositionEmbeddings = 64 },
            Sources = new()
            {
                ["gen_en"] = new SourceSection { Files = [Data("general_en/wikitext2_test_a.txt")], Domain = "general", Language = "en" },
                ["fin_zh"] = new SourceSection { Files = [Data("finance_zh/cnews_finance.jsonl")], Domain = "finance", Language = "zh", MaxDocs = 60 },
                ["fin_inst"] = new SourceSection { Kind = "instruct", Files = [Data("instruct/fin_en_formula.jsonl")], MaxDocs = 50 },
            },
            Stages =
            [
                Stage("base", "random", new() { ["gen_en"] = 1 }, 4),
                Stage("hybrid", "base", new() { ["gen_en"] = 0.4, ["fin_zh"] = 0.3, ["fin_inst"] = 0.3 }, 5),
            ],
            Eval = new EvalSection { SeqLen = 32, Batch = 4, PerplexityTokens = 256, FewShotFile = Data("eval/fpb_test.csv"), FewShotPool = Data("eval/fpb_train.csv"), Shots = 1, MaxExamples = 4 },
            Output = new RecipeOutput { Dir = outDir, CheckpointEvery = 2, KeepCheckpoints = 3 },
        };
        var h = cfg.Stages[1];
        h.EwcLambda = 10; h.EwcSource = "gen_en"; h.EwcBatches = 2;
        h.SelectTop = 0.5; h.SelectSource = "fin_zh";
        cfg.Validate();
        return cfg;
    }

    static byte[] Weights(string dir, string stage) => File.ReadAllBytes(Path.Combine(dir, "stages", stage, ModelIO.WeightsFile));

    static (string, int)[] MetricKeys(string dir) => File.ReadAllLines(Path.Combine(dir, "metrics.jsonl"))
        .Select(l => JsonDocument.Parse(l).RootElement).Select(e => (e.GetProperty("stage").GetString()!, e.GetProperty("step").GetInt32())).ToArray();

    /// <param name="dirs">The two runs' output folders, when notes name paths under them.</param>
    static void AssertSameReports(List<StageReport> a, List<StageReport> b, (string A, string B)? dirs = null)
    {
        Assert.Equal(a.Select(r => r.Name), b.Select(r => r.Name));
        for (int i = 0; i < a.Count; i++)
        {
            Assert.Equal(a[i].Perplexity, b[i].Perplexity);
            Assert.Equal(a[i].BitsPerByte, b[i].BitsPerByte);
            Assert.Equal(a[i].FewShotAccuracy, b[i].FewShotAccuracy);
            Assert.Equal(a[i].FewShotCalibratedMacroF1, b[i].FewShotCalibratedMacroF1);
            Assert.Equal(a[i].TokensTrained, b[i].TokensTrained);
            Assert.Equal(dirs is { } d ? a[i].Notes.Select(n => n.Replace(d.A, d.B, StringComparison.Ordinal)) : a[i].Notes, b[i].Notes);
            Assert.Equal(a[i].Steps.Select(s => (s.Step, s.Loss)), b[i].Steps.Select(s => (s.Step, s.Loss)));
        }
    }

    [Fact]
    public void StoppedInsideAStageAndResumedEqualsTheUninterruptedRun()
    {
        var ct = TestContext.Current.CancellationToken;
        using var a = new TempDir();
        var straight = new RecipeRunner(Recipe(a.Path), CpuBackend.Instance).Run(ct);

        using var b = new TempDir();
        // 4 base steps + 3 hybrid steps: stops inside hybrid after its step 3 (checkpoints at hybrid steps 2 and 3)
        using (var control = new RunControl { MaxSteps = 7 })
        {
            var runner = new RecipeRunner(Recipe(b.Path), CpuBackend.Instance) { Control = control };
            var partial = runner.Run(ct);
            Assert.NotNull(runner.StoppedReason);
            Assert.Equal(["base"], partial.Select(r => r.Name));
            Assert.EndsWith(Path.Combine("01_hybrid", "step_00000003"), control.LastCheckpoint);
        }
        Assert.False(Directory.Exists(Path.Combine(b.Path, "checkpoints", "00_base")));   // a finished stage's checkpoints go
        // as if it had crashed after hybrid step 3 before that checkpoint: resume from step 2; step 3's line goes
        Directory.Delete(Path.Combine(b.Path, "checkpoints", "01_hybrid", "step_00000003"), recursive: true);
        var messages = new List<string>();
        var resumed = new RecipeRunner(Recipe(b.Path), CpuBackend.Instance) { Resume = "auto", Log = messages.Add }.Run(ct);
        Assert.Contains(messages, m => m.Contains("resuming stage hybrid from") && m.Contains("at step 2"));
        AssertSameReports(straight, resumed);
        Assert.Equal(Weights(a.Path, "hybrid"), Weights(b.Path, "hybrid"));
        Assert.Equal(MetricKeys(a.Path), MetricKeys(b.Path));

        // a changed stage setting is refused by name
        var changed = Recipe(b.Path);
        changed.Stages[0].SeqLen = 16;
        Directory.Delete(Path.Combine(b.Path, "stages", "hybrid"), recursive: true);
        var e = Assert.ThrowsAny<Exception>(() => new RecipeRunner(changed, CpuBackend.Instance) { Resume = "latest" }.Run(ct));
        Assert.Contains("stages.base", e.Message);
    }

    /// <summary>
    /// A finished stage's weights are recorded by SHA-256 relative to the run directory: one float of
    /// stages/base/model.safetensors multiplied by 1000 after the run stopped is refused on resume, naming the file (it
    /// used to resume silently with other losses); a copy of the run directory resumes from its own stage files, whatever
    /// happened to the original's (stage.json held an absolute path: a copy used the original's files, a moved directory
    /// was refused).
    /// </summary>
    [Fact]
    public void A_finished_stages_weights_are_verified_and_a_copied_run_directory_uses_its_own()
    {
        var ct = TestContext.Current.CancellationToken;
        using var a = new TempDir();
        string run = Path.Combine(a.Path, "run"), copy = Path.Combine(a.Path, "copy");
        using (var control = new RunControl { MaxSteps = 5 })   // base (4 steps) finished, hybrid stopped after its step 1
            new RecipeRunner(Recipe(run), CpuBackend.Instance) { Control = control }.Run(ct);
        string record = Path.Combine(run, "stages", "base", "stage.json");
        using (var doc = JsonDocument.Parse(File.ReadAllText(record)))
        {
            Assert.Equal("stages/base", doc.RootElement.GetProperty("Report").GetProperty("WeightsDir").GetString());
            Assert.True(doc.RootElement.GetProperty("Files").TryGetProperty("stages/base/model.safetensors", out _));
        }
        CopyDirectory(run, copy);

        // the original's base weights change after the stage finished
        string weights = Path.Combine(run, "stages", "base", ModelIO.WeightsFile);
        List<SafeTensorWrite> tensors;
        using (var st = SafeTensorsFile.Open(weights))
            tensors = st.Entries.Select((e, i) =>
            {
                var v = st.ReadFloat32(e.Name);
                if (i == 0) v[0] = v[0] * 1000 + 1;   // one float changed (never a no-op, even at 0)
                return new SafeTensorWrite(e.Name, e.Shape, v);
            }).ToList();
        SafeTensorsWriter.Write(weights, tensors);
        var refused = Assert.Throws<InvalidDataException>(() => new RecipeRunner(Recipe(run), CpuBackend.Instance) { Resume = "auto" }.Run(ct));
        Assert.Equal($"{record}: stages/base/model.safetensors does not match its SHA-256 in the record (changed after the stage finished): restore it, or delete {record} to run the stage again", refused.Message);

        // the copy is untouched by that: it resumes from its own files and finishes
        var messages = new List<string>();
        var resumed = new RecipeRunner(Recipe(copy), CpuBackend.Instance) { Resume = "auto", Log = messages.Add }.Run(ct);
        Assert.Equal(["base", "hybrid"], resumed.Select(r => r.Name));
        Assert.Equal(Path.Combine(copy, "stages", "base"), resumed[0].WeightsDir);
        Assert.Contains(messages, m => m.Contains("resuming stage hybrid from") && m.Contains(copy));
    }

    static void CopyDirectory(string from, string to)
    {
        foreach (var d in Directory.GetDirectories(from, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(d.Replace(from, to, StringComparison.Ordinal));
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from, "*", SearchOption.AllDirectories)) File.Copy(f, f.Replace(from, to, StringComparison.Ordinal));
    }

    /// <summary>A LoRA stage stopped and resumed: its checkpoint holds the adapter and the dropout generator (not the
    /// frozen base, which is the earlier stage's output), and the resumed stage ends with the uninterrupted run's adapter
    /// and merged weights bit for bit. (Before, the checkpoint held the base alone: a resumed LoRA stage restarted its
    /// adapter from initialisation under the checkpoint's moments.)</summary>
    [Fact]
    public void StoppedInsideALoraStageAndResumedEqualsTheUninterruptedRun()
    {
        var ct = TestContext.Current.CancellationToken;
        RecipeConfig LoraRecipe(string outDir)
        {
            var cfg = Recipe(outDir);
            var h = cfg.Stages[1];
            h.EwcLambda = 0; h.EwcSource = null;
            h.Lora = new LoraSection { R = 4, Alpha = 8, Dropout = 0.1, TargetModules = ["q_proj", "v_proj", "down_proj"] };
            cfg.Validate();
            return cfg;
        }
        using var a = new TempDir();
        var straight = new RecipeRunner(LoraRecipe(a.Path), CpuBackend.Instance).Run(ct);

        using var b = new TempDir();
        using (var control = new RunControl { MaxSteps = 7 })
        {
            var runner = new RecipeRunner(LoraRecipe(b.Path), CpuBackend.Instance) { Control = control };
            runner.Run(ct);
            Assert.EndsWith(Path.Combine("01_hybrid", "step_00000003"), control.LastCheckpoint);
            Assert.True(File.Exists(Path.Combine(control.LastCheckpoint!, Checkpoints.AdapterDir, Engine.Model.Lora.PeftAdapter.WeightsFile)));
        }
        Directory.Delete(Path.Combine(b.Path, "checkpoints", "01_hybrid", "step_00000003"), recursive: true);
        var resumed = new RecipeRunner(LoraRecipe(b.Path), CpuBackend.Instance) { Resume = "auto" }.Run(ct);
        AssertSameReports(straight, resumed, (a.Path, b.Path));
        Assert.Equal(Weights(a.Path, "hybrid"), Weights(b.Path, "hybrid"));
        string adapter = Path.Combine("stages", "hybrid_adapter", Engine.Model.Lora.PeftAdapter.WeightsFile);
        Assert.Equal(File.ReadAllBytes(Path.Combine(a.Path, adapter)), File.ReadAllBytes(Path.Combine(b.Path, adapter)));
    }
}
