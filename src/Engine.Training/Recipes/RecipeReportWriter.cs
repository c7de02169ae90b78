using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Engine.Training.Recipes;

/// <summary>The recipe's results: report.md (the table), report.json, and loss curves per source as PNG.</summary>
public static class RecipeReportWriter
{
    static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public static string Table(IReadOnlyList<StageReport> reports)
    {
        var groups = reports.SelectMany(r => r.Perplexity.Keys).Distinct().OrderBy(k => k.Contains('_') ? 1 : 0).ThenBy(k => k, StringComparer.Ordinal).ToList();
        // optional columns: zero-shot instruction format on the first instruction set; trainable parameters and AdamW
        // state when a stage used LoRA
        string? instr = reports.SelectMany(r => r.Instruction.Keys).FirstOrDefault();
        bool lora = reports.Any(r => r.AdapterDir != null);
        var sb = new StringBuilder();
        sb.Append("| model | init |");
        foreach (var g in groups) sb.Append($" ppl {g} |");
        sb.Append(" bits/byte general | bits/byte finance |");
        sb.Append(" few-shot acc | few-shot macro-F1 | calibrated acc | calibrated macro-F1 |");
        if (instr != null) sb.Append($" 0-shot instr. acc ({instr}) | 0-shot instr. macro-F1 |");
        if (lora) sb.Append(" trainable params | AdamW state MiB |");
        sb.Append(" tokens trained | train s | tokens/s | eval s |\n|---|---|");
        foreach (var _ in groups) sb.Append("---:|");
        sb.Append("---:|---:|---:|---:|---:|---:|");
        if (instr != null) sb.Append("---:|---:|");
        if (lora) sb.Append("---:|---:|");
        sb.Append("---:|---:|---:|---:|\n");
        foreach (var r in reports)
        {
            sb.Append($"| {r.Name} | {r.Init} |");
            foreach (var g in groups) sb.Append(r.Perplexity.TryGetValue(g, out var p) ? $" {p.ToString("F2", CultureInfo.InvariantCulture)} |" : " – |");
            foreach (var d in new[] { "general", "finance" })
                sb.Append(r.BitsPerByte.TryGetValue(d, out var b) ? $" {b.ToString("F3", CultureInfo.InvariantCulture)} |" : " – |");
            sb.Append(r.FewShotAccuracy is { } a ? $" {(a * 100).ToString("F1", CultureInfo.InvariantCulture)}% |" : " – |");
            sb.Append(r.FewShotMacroF1 is { } f ? $" {f.ToString("F3", CultureInfo.InvariantCulture)} |" : " – |");
            sb.Append(r.FewShotCalibratedAccuracy is { } ca ? $" {(ca * 100).ToString("F1", CultureInfo.InvariantCulture)}% |" : " – |");
            sb.Append(r.FewShotCalibratedMacroF1 is { } cf ? $" {cf.ToString("F3", CultureInfo.InvariantCulture)} |" : " – |");
            if (instr != null)
                sb.Append(r.Instruction.TryGetValue(instr, out var ie)
                    ? $" {(ie.Accuracy * 100).ToString("F1", CultureInfo.InvariantCulture)}% | {ie.MacroF1.ToString("F3", CultureInfo.InvariantCulture)} |" : " – | – |");
            if (lora) sb.Append(CultureInfo.InvariantCulture, $" {r.TrainableParameters:N0} | {r.OptimizerStateBytes / 1048576.0:F2} |");
            sb.Append(CultureInfo.InvariantCulture, $" {r.TokensTrained:N0} | {r.TrainSeconds:F0} | {r.TokensPerSecond:F0} | {r.EvalSeconds:F0} |\n");
        }
        return sb.ToString();
    }

    /// <summary>Zero-shot instruction-format results: one row per (stage, set), raw and calibrated, with the raw
    /// prediction counts per label (a model that answers one label for everything shows it here). Empty when no stage
    /// was evaluated that way.</summary>
    public static string InstructionTable(IReadOnlyList<StageReport> reports)
    {
        if (!reports.Any(r => r.Instruction.Count > 0)) return "";
        var sb = new StringBuilder("| model | set | examples | acc | macro-F1 | calibrated acc | calibrated macro-F1 | predicted (raw) |\n|---|---|---:|---:|---:|---:|---:|---|\n");
        string Pct(double? v) => v is { } x ? (x * 100).ToString("F1", CultureInfo.InvariantCulture) + "%" : "–";
        string F3(double? v) => v is { } x ? x.ToString("F3", CultureInfo.InvariantCulture) : "–";
        foreach (var r in reports)
            foreach (var (set, e) in r.Instruction)
                sb.Append($"| {r.Name} | {set} | {e.Count} | {Pct(e.Accuracy)} | {F3(e.MacroF1)} | {Pct(e.CalibratedAccuracy)} | {F3(e.CalibratedMacroF1)} | " +
                    string.Join(" ", e.Predicted.Select(p => $"{p.Key} {p.Value}")) + " |\n");
        return sb.ToString();
    }

    public static void Write(string outDir, RecipeConfig cfg, IReadOnlyList<StageReport> reports, Alignment.AlignmentReport? alignment = null)
    {
        var md = new StringBuilder();
        md.AppendLine($"# {cfg.Name}");
        md.AppendLine();
        md.AppendLine($"Measured on {Bench.MachineInfo.CpuModel()} ({Environment.ProcessorCount} cores), {DateTime.UtcNow:yyyy-MM-dd}, commit {Bench.MachineInfo.GitCommit()}.");
        md.AppendLine("Perplexity is per token of the stage's tokenizer on held-out documents (bits/byte: the same NLL per UTF-8 byte, comparable across tokenizers); few-shot = k-shot label likelihood on the evaluation set; calibrated = the same with contextual calibration (label log-likelihood minus that after a content-free \"N/A\" query).");
        md.AppendLine();
        md.Append(Table(reports));
        if (InstructionTable(reports) is { Length: > 0 } it)
        {
            md.AppendLine();
            md.AppendLine("Zero-shot in instruction format (the chat template the instruction and sentiment sources train with: the instruction \"" +
                Recipes.RecipeSources.SentimentInstruction + "\" and the text as input; prediction = the label whose answer tokens + EOS are most likely after the assistant marker; calibrated = minus that after the input \"N/A\"):");
            md.AppendLine();
            md.Append(it);
        }
        foreach (var r in reports.Where(r => r.Notes.Count > 0))
        {
            md.AppendLine();
            md.AppendLine($"**{r.Name}**: " + string.Join("; ", r.Notes));
        }
        if (alignment != null)
        {
            md.AppendLine();
            md.AppendLine($"## Alignment of {alignment.Policy}");
            md.AppendLine();
            md.Append(Alignment.AlignmentRunner.Table(alignment));
            if (alignment.Notes.Count > 0) md.AppendLine(string.Join("; ", alignment.Notes));
        }
        File.WriteAllText(Path.Combine(outDir, "report.md"), md.ToString());
        object json = new
        {
            recipe = cfg.Name,
            date = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
            commit = Bench.MachineInfo.GitCommit(),
            machine = Bench.MachineInfo.Describe(),
            stages = reports,
        };
        if (alignment != null)
            json = new
            {
                recipe = cfg.Name,
                date = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
                commit = Bench.MachineInfo.GitCommit(),
                machine = Bench.MachineInfo.Describe(),
                stages = reports,
                alignment,
            };
        File.WriteAllText(Path.Combine(outDir, "report.json"), JsonSerializer.Serialize(json, Json));
        foreach (var r in reports) PlotLosses(Path.Combine(outDir, $"loss_{r.Name}.png"), r);
    }

    /// <summary>Training loss per source over tokens (a moving average of the per-step means).</summary>
    public static void PlotLosses(string path, StageReport r)
    {
        var plot = new ScottPlot.Plot();
        var names = r.Steps.SelectMany(s => s.SourceLosses?.Keys ?? []).Distinct().OrderBy(n => n, StringComparer.Ordinal).ToList();
        foreach (var name in names)
        {
            var pts = r.Steps.Where(s => s.SourceLosses?.ContainsKey(name) == true).Select(s => (X: (double)s.Tokens, Y: s.SourceLosses![name])).ToList();
            if (pts.Count == 0) continue;
            var ys = Smooth(pts.Select(p => p.Y).ToArray(), 5);
            var sc = plot.Add.Scatter(pts.Select(p => p.X).ToArray(), ys);
            sc.LegendText = name;
            sc.MarkerSize = 0;
        }
        plot.Title($"{r.Name}: training loss per source");
        plot.XLabel("tokens trained");
        plot.YLabel("mean token loss");
        plot.ShowLegend();
        plot.SavePng(path, 800, 500);
    }

    static double[] Smooth(double[] y, int w)
    {
        var o = new double[y.Length];
        for (int i = 0; i < y.Length; i++)
        {
            int lo = Math.Max(0, i - w + 1);
            double s = 0;
            for (int j = lo; j <= i; j++) s += y[j];
            o[i] = s / (i - lo + 1);
        }
        return o;
    }
}
