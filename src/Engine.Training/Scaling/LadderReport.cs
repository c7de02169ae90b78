using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Engine.Training.Scaling;

/// <summary>A ladder's files: ladder.json (engine.ladder/1), report.md and the plots (loss vs compute with the fitted
/// L(C) and its interval; general and domain loss vs the domain ratio with the D-CPT curves).</summary>
public static class LadderReport
{
    public const string SummaryFile = "ladder.json", ReportFile = "report.md", ComputePlot = "loss_vs_compute.png", RatioPlot = "loss_vs_ratio.png";

    public static void Write(string dir, LadderSummary s)
    {
        Directory.CreateDirectory(dir);
        Durable.ReplaceAllText(Path.Combine(dir, SummaryFile), JsonSerializer.Serialize(s, LadderSummary.Json));
        File.WriteAllText(Path.Combine(dir, ReportFile), Markdown(s));
        PlotCompute(Path.Combine(dir, ComputePlot), s);
        PlotRatio(Path.Combine(dir, RatioPlot), s);
    }

    static string F(double v, string f = "F4") => double.IsFinite(v) ? v.ToString(f, CultureInfo.InvariantCulture) : "–";
    static string Iv(Interval i, string f = "F4") => $"{F(i.Value, f)} [{F(i.Low, f)}, {F(i.High, f)}]";

    public static string Markdown(LadderSummary s)
    {
        var md = new StringBuilder();
        string pct = (s.Level * 100).ToString("F0", CultureInfo.InvariantCulture);
        md.AppendLine(CultureInfo.InvariantCulture, $"# Scaling ladder: {s.Name}");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"{s.Machine}, {s.Date}, commit {s.Commit}; {s.Points.Count} points ({s.Init}), wall {s.WallSeconds:F0} s. " +
            $"Losses are held-out NLL per token (nats); FLOPs the engine's count (6N + attention) × tokens; N = {s.ParameterCount.Replace('_', '-')} parameters. " +
            $"Intervals are {pct} % bootstrap intervals: [curve] for the fitted law, [new run] for a new observation. Held out of every fit: {s.Holdout}.");
        md.AppendLine();
        md.AppendLine("## Points");
        md.AppendLine();
        md.AppendLine("| point | kind | parameters | non-emb. | tokens | ratio | lr | FLOPs | general loss | domain loss | train s |");
        md.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var p in s.Points)
            md.AppendLine(CultureInfo.InvariantCulture, $"| {p.Id} | {p.Kind} | {p.Parameters:N0} | {p.NonEmbeddingParameters:N0} | {p.Tokens:N0} | {p.Ratio:0.###} | {p.Lr:G3} | {p.TotalFlops:G3} | {F(p.GeneralLoss)} | {F(p.DomainLoss)} | {p.TrainSeconds:F0} |");
        md.AppendLine();
        md.AppendLine("## Fits");
        md.AppendLine();
        md.AppendLine("| law | loss | points | parameters | rms log residual | starts converged |");
        md.AppendLine("|---|---|---:|---|---:|---:|");
        foreach (var f in s.Fits)
            md.AppendLine(f.Skipped != null
                ? $"| {f.Law} | {f.Loss} | {f.Points.Count} | not fitted: {f.Skipped} | – | – |"
                : $"| {f.Law}: {f.Formula} | {f.Loss} | {f.Points.Count} | {string.Join("; ", f.Parameters.Select(kv => $"{kv.Key} = {Iv(kv.Value, "G4")}"))} | {F(f.RmsLogResidual)} | {f.Converged}/{f.Starts} |");
        md.AppendLine();
        foreach (var f in s.Fits) md.AppendLine($"- {f.Law}, {f.Loss} loss: {f.Data}");
        md.AppendLine();
        md.AppendLine("## Validation: the held-out point, predicted before it is compared");
        md.AppendLine();
        if (s.Validation.Count == 0) md.AppendLine("No holdout result or no law fitted.");
        else
        {
            md.AppendLine("| law | loss | predicted [curve] | [new run] | observed | error | inside |");
            md.AppendLine("|---|---|---:|---:|---:|---:|---|");
            foreach (var v in s.Validation)
                md.AppendLine(CultureInfo.InvariantCulture, $"| {v.Law} | {v.Loss} | {Iv(v.Curve with { Value = v.Predicted })} | [{F(v.Observation.Low)}, {F(v.Observation.High)}] | {F(v.Observed ?? double.NaN)} | {(v.RelativeError is { } e ? (e * 100).ToString("+0.00;-0.00", CultureInfo.InvariantCulture) + " %" : "–")} | {(v.Inside == true ? "yes" : "no")} |");
        }
        if (s.TargetName != null && s.Target.Count > 0)
        {
            md.AppendLine();
            md.AppendLine(CultureInfo.InvariantCulture, $"## Target: {s.TargetName}");
            md.AppendLine();
            md.AppendLine("| law | loss | predicted [curve] | [new run] |");
            md.AppendLine("|---|---|---:|---:|");
            foreach (var v in s.Target)
                md.AppendLine($"| {v.Law} | {v.Loss} | {Iv(v.Curve with { Value = v.Predicted })} | [{F(v.Observation.Low)}, {F(v.Observation.High)}] |");
        }
        if (s.ComputeOptimal.Count > 0)
        {
            md.AppendLine();
            md.AppendLine("## Compute-optimal split (Chinchilla fit, C = 6·N·D)");
            md.AppendLine();
            md.AppendLine("| loss | FLOPs | N | D | tokens per parameter |");
            md.AppendLine("|---|---:|---:|---:|---:|");
            foreach (var c in s.ComputeOptimal)
                md.AppendLine(CultureInfo.InvariantCulture, $"| {c.Loss} | {c.Flops:G3} | {Iv(c.Parameters, "G3")} | {Iv(c.Tokens, "G3")} | {F(c.Tokens.Value / c.Parameters.Value, "F1")} |");
        }
        if (s.Ratio is { } r)
        {
            md.AppendLine();
            md.AppendLine("## Domain ratio under the forgetting budget (D-CPT fits)");
            md.AppendLine();
            md.AppendLine(CultureInfo.InvariantCulture, $"At {r.At} (N = {r.N:G4}, {r.Tokens:G4} tokens): the general loss may rise to {(1 + r.Tolerance) * r.BaseGeneralLoss:F4} " +
                $"({r.Tolerance:P1} above the base's {F(r.BaseGeneralLoss)}, {r.BaseGeneralLossSource}); ratios searched in [{r.RatioLow:0.###}, {r.RatioHigh:0.###}] (the grid's range).");
            md.AppendLine();
            if (r.Ratio is { } ri)
            {
                md.AppendLine(CultureInfo.InvariantCulture, $"Domain ratio **{Iv(ri, "F3")}**: domain loss {F(r.DomainLoss ?? double.NaN)}, general loss {F(r.GeneralLoss ?? double.NaN)}. {r.Note}");
                if (r.Ramp is { } ramp)
                {
                    md.AppendLine();
                    md.AppendLine(CultureInfo.InvariantCulture, $"Ramp: {ramp.StartRatio:0.###} → {ramp.EndRatio:0.###} (mean {ramp.MeanRatio:0.###}; the law at that constant ratio: domain {F(ramp.DomainLossAtMean ?? double.NaN)}, general {F(ramp.GeneralLossAtMean ?? double.NaN)} — an approximation, the law is fitted on constant mixtures). As a recipe stage:");
                    md.AppendLine();
                    md.AppendLine("```toml");
                    md.Append(ramp.Toml);
                    md.AppendLine("```");
                }
            }
            else md.AppendLine(r.Note);
        }
        if (s.Notes.Count > 0)
        {
            md.AppendLine();
            md.AppendLine("## Notes");
            md.AppendLine();
            foreach (var n in s.Notes) md.AppendLine($"- {n}");
        }
        return md.ToString();
    }

    static readonly Dictionary<string, ScottPlot.Color> LossColor = new()
    {
        ["general"] = ScottPlot.Colors.SteelBlue,
        ["domain"] = ScottPlot.Colors.FireBrick,
    };

    /// <summary>Loss vs log10 FLOPs at the reference ratio: every point (hollow), the L(C) fit's points, the fitted curve
    /// and its interval, and the holdout with its prediction interval.</summary>
    public static void PlotCompute(string path, LadderSummary s)
    {
        var plot = new ScottPlot.Plot();
        foreach (var (loss, color) in LossColor)
        {
            var fit = s.Fits.FirstOrDefault(f => f.Law == "compute" && f.Loss == loss);
            var used = new HashSet<string>(fit?.Points ?? [], StringComparer.Ordinal);
            var atRef = s.Points.Where(p => p.Kind == "grid" && p.Ratio == s.ReferenceRatio).ToList();
            var other = atRef.Where(p => !used.Contains(p.Id)).ToList();
            if (other.Count > 0)
            {
                var o = plot.Add.ScatterPoints(other.Select(p => Math.Log10(p.TotalFlops)).ToArray(), other.Select(p => p.Loss(loss)).ToArray(), color.WithAlpha(0.45));
                o.MarkerShape = ScottPlot.MarkerShape.OpenCircle;
                o.LegendText = $"{loss}: other budgets";
            }
            var fp = atRef.Where(p => used.Contains(p.Id)).ToList();
            if (fp.Count > 0)
            {
                var f = plot.Add.ScatterPoints(fp.Select(p => Math.Log10(p.TotalFlops)).ToArray(), fp.Select(p => p.Loss(loss)).ToArray(), color);
                f.LegendText = $"{loss}: fitted points";
                f.MarkerSize = 8;
            }
            if (s.Curves.FirstOrDefault(c => c.Law == "compute" && c.Loss == loss) is { } curve)
            {
                Curve(plot, curve, Math.Log10, color, $"{loss}: L(C) = a·C^b + L_inf");
            }
            if (s.Points.FirstOrDefault(p => p.Kind == "holdout") is { } h && s.Validation.FirstOrDefault(v => v.Law == "compute" && v.Loss == loss) is { } v)
            {
                double hx = Math.Log10(h.TotalFlops);
                var bar = plot.Add.ErrorBar([hx], [v.Predicted], [(v.Observation.High - v.Observation.Low) / 2]);
                bar.Color = color;
                var m = plot.Add.Marker(hx, h.Loss(loss), ScottPlot.MarkerShape.FilledDiamond, 12, color);
                m.LegendText = $"{loss}: holdout (observed)";
            }
        }
        plot.Title($"{s.Name}: loss vs compute at domain ratio {s.ReferenceRatio:0.###}");
        plot.XLabel("log10 training FLOPs");
        plot.YLabel("held-out loss (nats/token)");
        plot.ShowLegend();
        plot.SavePng(path, 900, 560);
    }

    /// <summary>A fitted curve and its interval (a shaded band).</summary>
    static void Curve(ScottPlot.Plot plot, CurveReport curve, Func<double, double> fx, ScottPlot.Color color, string label)
    {
        double[] x = curve.Points.Select(p => fx(p[0])).ToArray();
        var band = plot.Add.FillY(x, curve.Points.Select(p => p[2]).ToArray(), curve.Points.Select(p => p[3]).ToArray());
        band.FillColor = color.WithAlpha(0.15);
        band.LineWidth = 0;
        plot.Add.ScatterLine(x, curve.Points.Select(p => p[1]).ToArray(), color).LegendText = label;
    }

    /// <summary>General and domain loss vs the domain ratio: the grid's points at the largest fitted size and budget, the
    /// D-CPT curves at the holdout's size and budget with their intervals, the holdout, and the chosen ratio.</summary>
    public static void PlotRatio(string path, LadderSummary s)
    {
        var plot = new ScottPlot.Plot();
        var grid = s.Points.Where(p => p.Kind == "grid").ToList();
        foreach (var (loss, color) in LossColor)
        {
            if (grid.Count > 0)
            {
                var top = grid.Where(p => p.Parameters == grid.Max(q => q.Parameters)).ToList();
                top = top.Where(p => p.Tokens == top.Max(q => q.Tokens)).OrderBy(p => p.Ratio).ToList();
                var pts = plot.Add.ScatterPoints(top.Select(p => p.Ratio).ToArray(), top.Select(p => p.Loss(loss)).ToArray(), color.WithAlpha(0.6));
                pts.MarkerShape = ScottPlot.MarkerShape.OpenCircle;
                pts.MarkerSize = 8;
                pts.LegendText = $"{loss}: {top[0].Size}, {top[0].Tokens:N0} tokens (fitted)";
            }
            if (s.Curves.FirstOrDefault(c => c.Law == "dcpt" && c.Loss == loss) is { } curve)
            {
                Curve(plot, curve, x => x, color, $"{loss}: D-CPT at the holdout's N, D");
            }
            if (s.Points.FirstOrDefault(p => p.Kind == "holdout") is { } h)
            {
                var m = plot.Add.Marker(h.Ratio, h.Loss(loss), ScottPlot.MarkerShape.FilledDiamond, 12, color);
                m.LegendText = $"{loss}: holdout (observed)";
            }
        }
        if (s.Ratio is { Ratio: { } r } ratio)
        {
            var v = plot.Add.VerticalLine(r.Value);
            v.LinePattern = ScottPlot.LinePattern.Dashed;
            v.LegendText = $"chosen ratio {r.Value:0.###}";
            var hl = plot.Add.HorizontalLine((1 + ratio.Tolerance) * ratio.BaseGeneralLoss);
            hl.LinePattern = ScottPlot.LinePattern.Dotted;
            hl.Color = LossColor["general"];
            hl.LegendText = $"general-loss limit (+{ratio.Tolerance:P1})";
        }
        plot.Title($"{s.Name}: loss vs domain ratio");
        plot.XLabel("domain share of the mixture");
        plot.YLabel("held-out loss (nats/token)");
        plot.ShowLegend();
        plot.SavePng(path, 900, 560);
    }
}
