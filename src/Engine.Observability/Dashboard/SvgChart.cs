using System.Globalization;
using System.Net;
using System.Text;

namespace Engine.Observability.Dashboard;

/// <summary>One point of a series; Tip is the hover text (an SVG &lt;title&gt;); Lo..Hi an error bar (the recorded min and
/// max over the repeats); Flag rings the point in red (a regression).</summary>
public readonly record struct ChartPoint(double X, double Y, string? Tip = null, double? Lo = null, double? Hi = null, bool Flag = false);

/// <summary>A plotted series: a polyline through its points and/or markers.</summary>
public sealed record ChartSeries(string Name, string Color, IReadOnlyList<ChartPoint> Points)
{
    public bool Dashed { get; init; }
    public bool Line { get; init; } = true;
    public bool Markers { get; init; } = true;
    /// <summary>Hollow markers (peers) instead of filled ones (ours).</summary>
    public bool Hollow { get; init; }
}

/// <summary>An axis: label, linear or log10, optional fixed ticks (category labels, dates).</summary>
public sealed record ChartAxis(string Label, bool Log = false)
{
    public IReadOnlyList<(double Value, string Label)>? Ticks { get; init; }
    public double? Min { get; init; }
    public double? Max { get; init; }
    /// <summary>Values the range must include (0 for throughput, 1 for ratios).</summary>
    public IReadOnlyList<double> Include { get; init; } = [];
}

/// <summary>A horizontal reference line across the plot (parity at 1, a roof).</summary>
public readonly record struct ChartRule(double Y, string Label, string Color);

/// <summary>
/// Inline SVG line/scatter charts with no script and no external asset: fixed 640×320 viewBox, nice ticks on linear
/// axes, decades on log axes, min/max error bars, one &lt;g data-series&gt; per series so the page's legend can hide it.
/// </summary>
public static class SvgChart
{
    public const int Width = 640, Height = 320;
    const int Left = 72, Right = 16, Top = 14, Bottom = 48;
    public static readonly string[] Palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#e377c2", "#8c564b", "#bcbd22"];

    public static string Render(string id, ChartAxis x, ChartAxis y, IReadOnlyList<ChartSeries> series, IReadOnlyList<ChartRule>? rules = null)
    {
        rules ??= [];
        var pts = series.SelectMany(s => s.Points).Where(p => Ok(p.X, x) && Ok(p.Y, y)).ToList();
        if (pts.Count == 0) throw new ArgumentException($"chart {id}: no plottable point");
        var (x0, x1) = Range(pts.Select(p => p.X).Concat(x.Ticks?.Select(t => t.Value) ?? []), x);
        var (y0, y1) = Range(pts.SelectMany(p => new[] { p.Y, p.Lo ?? p.Y, p.Hi ?? p.Y }).Concat(rules.Select(r => r.Y)), y);
        double pw = Width - Left - Right, ph = Height - Top - Bottom;
        double Sx(double v) => Left + pw * (T(v, x) - T(x0, x)) / (T(x1, x) - T(x0, x));
        double Sy(double v) => Top + ph * (1 - (T(v, y) - T(y0, y)) / (T(y1, y) - T(y0, y)));

        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"<svg class=\"plot\" id=\"{Esc(id)}\" viewBox=\"0 0 {Width} {Height}\" width=\"{Width}\" height=\"{Height}\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">");
        sb.Append(CultureInfo.InvariantCulture, $"<rect x=\"{Left}\" y=\"{Top}\" width=\"{F(pw)}\" height=\"{F(ph)}\" class=\"frame\"/>");
        foreach (var (v, label) in y.Ticks ?? Ticks(y0, y1, y.Log))
        {
            if (!Ok(v, y) || v < y0 * (1 - 1e-9) - 1e-12 || v > y1 * (1 + 1e-9) + 1e-12) continue;
            double py = Sy(v);
            sb.Append(CultureInfo.InvariantCulture, $"<line class=\"grid\" x1=\"{Left}\" x2=\"{F(Left + pw)}\" y1=\"{F(py)}\" y2=\"{F(py)}\"/>");
            sb.Append(CultureInfo.InvariantCulture, $"<text class=\"tick\" x=\"{Left - 6}\" y=\"{F(py + 4)}\" text-anchor=\"end\">{Esc(label)}</text>");
        }
        var xt = (x.Ticks ?? Ticks(x0, x1, x.Log)).Where(t => Ok(t.Value, x) && t.Value >= x0 - 1e-12 && t.Value <= x1 + 1e-12).ToList();
        int stride = Math.Max(1, (int)Math.Ceiling(xt.Count / 8.0));
        for (int i = 0; i < xt.Count; i += stride)
        {
            double px = Sx(xt[i].Value);
            sb.Append(CultureInfo.InvariantCulture, $"<line class=\"grid\" x1=\"{F(px)}\" x2=\"{F(px)}\" y1=\"{Top}\" y2=\"{F(Top + ph)}\"/>");
            sb.Append(CultureInfo.InvariantCulture, $"<text class=\"tick\" x=\"{F(px)}\" y=\"{F(Top + ph + 16)}\" text-anchor=\"middle\">{Esc(xt[i].Label)}</text>");
        }
        sb.Append(CultureInfo.InvariantCulture, $"<text class=\"axis\" x=\"{F(Left + pw / 2)}\" y=\"{Height - 8}\" text-anchor=\"middle\">{Esc(x.Label)}</text>");
        sb.Append(CultureInfo.InvariantCulture, $"<text class=\"axis\" transform=\"translate(14 {F(Top + ph / 2)}) rotate(-90)\" text-anchor=\"middle\">{Esc(y.Label)}</text>");
        foreach (var r in rules)
        {
            if (!Ok(r.Y, y)) continue;
            double py = Sy(r.Y);
            sb.Append(CultureInfo.InvariantCulture, $"<line class=\"rule\" stroke=\"{r.Color}\" x1=\"{Left}\" x2=\"{F(Left + pw)}\" y1=\"{F(py)}\" y2=\"{F(py)}\"/>");
            sb.Append(CultureInfo.InvariantCulture, $"<text class=\"rule-label\" fill=\"{r.Color}\" x=\"{F(Left + pw - 4)}\" y=\"{F(py - 4)}\" text-anchor=\"end\">{Esc(r.Label)}</text>");
        }
        for (int s = 0; s < series.Count; s++)
        {
            var se = series[s];
            var ps = se.Points.Where(p => Ok(p.X, x) && Ok(p.Y, y)).OrderBy(p => p.X).ToList();
            sb.Append(CultureInfo.InvariantCulture, $"<g data-series=\"{s}\" stroke=\"{se.Color}\" fill=\"{se.Color}\">");
            if (se.Line && ps.Count > 1)
                sb.Append(CultureInfo.InvariantCulture, $"<polyline class=\"line{(se.Dashed ? " dashed" : "")}\" fill=\"none\" points=\"{string.Join(" ", ps.Select(p => $"{F(Sx(p.X))},{F(Sy(p.Y))}"))}\"/>");
            foreach (var p in ps.Where(p => p.Lo is { } lo && p.Hi is { } hi && Ok(lo, y) && Ok(hi, y) && hi > lo))
            {
                // the error bar: a vertical stroke from min to max with short caps
                double px = Sx(p.X), top = Sy(p.Hi!.Value), bottom = Sy(p.Lo!.Value);
                sb.Append(CultureInfo.InvariantCulture, $"<path class=\"errorbar\" fill=\"none\" d=\"M{F(px)} {F(top)}V{F(bottom)}M{F(px - 4)} {F(top)}H{F(px + 4)}M{F(px - 4)} {F(bottom)}H{F(px + 4)}\"/>");
            }
            foreach (var p in ps.Where(p => p.Flag))
                sb.Append(CultureInfo.InvariantCulture, $"<circle class=\"flag\" cx=\"{F(Sx(p.X))}\" cy=\"{F(Sy(p.Y))}\" r=\"9\" fill=\"none\" stroke=\"#d00\" stroke-width=\"2.5\"/>");
            if (se.Markers)
                foreach (var p in ps)
                    sb.Append(CultureInfo.InvariantCulture, $"<circle cx=\"{F(Sx(p.X))}\" cy=\"{F(Sy(p.Y))}\" r=\"4\"{(se.Hollow ? " fill=\"#fff\" stroke-width=\"2\"" : "")}><title>{Esc(p.Tip ?? $"{se.Name}: {Num(p.Y)}")}</title></circle>");
            sb.Append("</g>");
        }
        sb.Append("</svg>");
        return sb.ToString();
    }

    /// <summary>The HTML legend under a chart: one entry per series, clicking one hides or shows it.</summary>
    public static string Legend(string chartId, IReadOnlyList<ChartSeries> series)
    {
        var sb = new StringBuilder($"<ul class=\"legend\" data-for=\"{Esc(chartId)}\">");
        for (int s = 0; s < series.Count; s++)
            sb.Append(CultureInfo.InvariantCulture,
                $"<li data-series=\"{s}\"><span class=\"swatch{(series[s].Dashed ? " dashed" : "")}\" style=\"border-color:{series[s].Color}\"></span>{Esc(series[s].Name)}</li>");
        return sb.Append("</ul>").ToString();
    }

    /// <summary>1234 → "1.23k", 2.5e11 → "250G", 0.0123 → "0.0123".</summary>
    public static string Num(double v)
    {
        double a = Math.Abs(v);
        (double div, string suffix) = a >= 1e15 ? (1e15, "P") : a >= 1e12 ? (1e12, "T") : a >= 1e9 ? (1e9, "G") : a >= 1e6 ? (1e6, "M") : a >= 1e4 ? (1e3, "k") : (1, "");
        double m = v / div;
        string s = Math.Abs(m) >= 100 ? m.ToString("0", CultureInfo.InvariantCulture)
            : Math.Abs(m) >= 10 ? m.ToString("0.#", CultureInfo.InvariantCulture)
            : Math.Abs(m) >= 0.01 || m == 0 ? m.ToString("0.##", CultureInfo.InvariantCulture)
            : m.ToString("0.###E0", CultureInfo.InvariantCulture);
        return s + suffix;
    }

    public static string Esc(string s) => WebUtility.HtmlEncode(s);

    static bool Ok(double v, ChartAxis a) => double.IsFinite(v) && (!a.Log || v > 0);

    static double T(double v, ChartAxis a) => a.Log ? Math.Log10(v) : v;

    static string F(double v) => v.ToString("0.#", CultureInfo.InvariantCulture);

    static (double, double) Range(IEnumerable<double> values, ChartAxis a)
    {
        var v = values.Where(d => Ok(d, a)).Concat(a.Include.Where(d => Ok(d, a))).ToList();
        double lo = a.Min ?? v.Min(), hi = a.Max ?? v.Max();
        if (a.Log)
        {
            lo = Math.Pow(10, Math.Floor(Math.Log10(lo)));
            hi = Math.Pow(10, Math.Ceiling(Math.Log10(hi)));
            if (hi <= lo) hi = lo * 10;
            return (lo, hi);
        }
        if (hi <= lo) { double pad = lo == 0 ? 1 : Math.Abs(lo) * 0.1; return (lo - pad, hi + pad); }
        if (a.Ticks is null)
        {
            double step = NiceStep((hi - lo) / 5);
            return (a.Min ?? Math.Floor(lo / step) * step, a.Max ?? Math.Ceiling(hi / step) * step);
        }
        double margin = (hi - lo) * 0.05;
        return (lo - margin, hi + margin);
    }

    static double NiceStep(double raw)
    {
        double p = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double f = raw / p;
        return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
    }

    static IEnumerable<(double Value, string Label)> Ticks(double lo, double hi, bool log)
    {
        if (log)
        {
            for (double d = lo; d <= hi * 1.0001; d *= 10) yield return (d, Num(d));
            yield break;
        }
        double step = NiceStep((hi - lo) / 5);
        for (double v = Math.Ceiling(lo / step) * step; v <= hi + step * 1e-9; v += step) yield return (v, Num(Math.Abs(v) < step * 1e-9 ? 0 : v));
    }
}
