using System.CommandLine;
using Engine.Data.Prepare;

namespace Engine.Cli.Commands;

/// <summary><c>engine prepare --config file</c>: the data pipeline, with progress lines and a summary.</summary>
public static class PrepareCommand
{
    public static Command Create()
    {
        var config = new Option<FileInfo>("--config", "-c") { Description = "TOML or JSON prepare config (see configs/prepare_demo.toml)", Required = true };
        var cmd = new Command("prepare", "clean, deduplicate, train/expand the tokenizer and write token shards") { config };
        cmd.SetAction(parse => Cli.Guard(() =>
        {
            var cfg = PrepareConfig.Load(parse.GetValue(config)!.FullName);
            using var runLock = Engine.Training.RunDirectoryLock.Acquire(cfg.OutputDir, null, m => Console.WriteLine($"[prepare] {m}"));   // one writer per output directory
            var r = PreparePipeline.Run(cfg, new SyncProgress(m => Console.WriteLine($"[prepare] {m}")));
            Console.WriteLine();
            Console.WriteLine($"{"stage",-9} {"source",-12} {"docs in",9} {"docs out",9} {"MB in",8} {"MB out",8}");
            foreach (var s in r.Stages)
                Console.WriteLine($"{s.Stage,-9} {s.Source,-12} {s.DocumentsIn,9} {s.DocumentsOut,9} {s.BytesIn / 1e6,8:F2} {s.BytesOut / 1e6,8:F2}");
            if (r.Dedup is { } d)
                Console.WriteLine($"duplicates: {d.ExactDuplicates} exact, {d.NearDuplicates} near; MinHash |est − exact| Jaccard mean {d.MeanAbsError:F3}, max {d.MaxAbsError:F3} over {d.Samples.Count} pairs");
            Console.WriteLine($"skipped files: {r.SkippedFiles.Count}; tokens: {r.Tokens}; vocab: {r.VocabSize}; {r.Seconds:F1} s");
            Console.WriteLine($"report: {Path.Combine(r.OutputDir, "report.json")}");
            return r.Outputs.All(o => o.Valid) ? 0 : 1;
        }));
        return cmd;
    }

    /// <summary>Reports on the calling thread, so lines appear in order.</summary>
    sealed class SyncProgress(Action<string> report) : IProgress<string>
    {
        public void Report(string value) => report(value);
    }
}
