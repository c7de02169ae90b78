using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using static Engine.Observability.Dashboard.SvgChart;

namespace Engine.Observability.Dashboard;

/// <summary>
/// The dashboard's scaling-ladder section: the newest ladder.json (engine.ladder/1, written by `engine ladder`) in a
/// folder under the results folder — loss vs compute with the fitted L(C) and its interval, loss vs the domain ratio
/// with the D-CPT curves, and the holdout check. Read as plain JSON: this project does not reference Engine.Training.
/// </summary>
public static class LadderSection
{
    public const string Schema = "engine.ladder/1", File = "ladder.json";

    /// <summary>The section's HTML, or a line saying why it is absent.</summary>
    public static string Render(string? resultsDir)
    {
        var sb = new StringBuilder("<section><h2>Scaling ladder</h2>");
        var found = resultsDir == null || !Directory.Exists(resultsDir) ? null
            : Directory.EnumerateFiles(resultsDir, File, SearchOption.AllDirectories).Order(StringComparer.Ordinal).LastOrDefault();
        if (found == null) return sb.Append("<p class=\"absent\">no ladder.json under the results folder (engine ladder writes one; see docs/SCALING.md)</p></section>").ToString();
        JsonObject s;
        try { s = JsonNode.Parse(System.IO.File.ReadAllText(found)) as JsonObject ?? throw new InvalidDataException("not an object"); }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidDataException)
        {
            throw new InvalidDataException($"{found}: not a ladder summary ({e.Message})", e);
        }
        if ((string?)s["schema"] != Schema) throw new InvalidDataException($"{found}: schema '{(string?)s["schema"]}', expected {Schema}");
        string rel = Path.GetRelativePath(resultsDir!, found);
        sb.Append(CultureInfo.InvariantCulture, $"<p class=\"src\">{Esc(rel)}: {Esc((string?)s["name"] ?? "")}, {Esc((string?)s["date"] ?? "")}, commit <code>{Esc((string?)s["commit"] ?? "")}</code>; held out: {Esc((string?)s["holdout"] ?? "")}</p>");
        sb.Append("<div class=\"row\">").Append(ComputeChart(s)).Append(RatioChart(s)).Append("</div>");
        sb.Append(ValidationTable(s));
        if (s["ratio"] is JsonObject r && r["ratio"] is JsonObject ri)
            sb.Append(CultureInfo.InvariantCulture, $"<p>Domain ratio at {Esc((string?)r["at"] ?? "")}: <b>{N(ri["value"]):0.###}</b> [{N(ri["low"]):0.###}, {N(ri["high"]):0.###}] with the general loss within {N(r["tolerance"]) * 100:0.#} % of the base's.</p>");
        return sb.Append("</section>").ToString();
    }

    static double N(JsonNode? v) => v is JsonValue j && j.TryGetValue(out double d) ? d : double.NaN;

    static IEnumerable<JsonObject> Objects(JsonNode? a) => (a as JsonArray)?.OfType<JsonObject>() ?? [];

    static readonly (string Loss, string Color)[] Losses = [("general", Palette[0]), ("domain", Palette[1])];

    static string ComputeChart(JsonObject s)
    {
        double rRef = N(s["reference_ratio"]);
        var series = new List<ChartSeries>();
        foreach (var (loss, color) in Losses)
        {
            var pts = Objects(s["points"]).Where(p => (string?)p["kind"] == "grid" && N(p["ratio"]) == rRef)
                .Select(p => new ChartPoint(N(p["flops"]) + N(p["base_flops"]), N(p[$"{loss}_loss"]), $"{(string?)p["id"]}: {loss} {N(p[$"{loss}_loss"]):0.000}")).ToList();
            if (pts.Count > 0) series.Add(new ChartSeries($"{loss} (ratio {rRef:0.###})", color, pts) { Line = false, Hollow = true });
            if (Objects(s["curves"]).FirstOrDefault(c => (string?)c["law"] == "compute" && (string?)c["loss"] == loss) is { } curve)
            {
                var rows = (curve["points"] as JsonArray)?.OfType<JsonArray>().ToList() ?? [];
                series.Add(new ChartSeries($"{loss}: L(C) fit", color, rows.Select(r => new ChartPoint(N(r[0]), N(r[1]), $"fit {N(r[1]):0.000}")).ToList()) { Markers = false });
                series.Add(new ChartSeries($"{loss}: interval", color, rows.Select(r => new ChartPoint(N(r[0]), N(r[2]))).Concat(rows.AsEnumerable().Reverse().Select(r => new ChartPoint(N(r[0]), N(r[3])))).ToList()) { Markers = false, Dashed = true });
            }
            if (Objects(s["points"]).FirstOrDefault(p => (string?)p["kind"] == "holdout") is { } h)
                series.Add(new ChartSeries($"{loss}: holdout", color, [new ChartPoint(N(h["flops"]) + N(h["base_flops"]), N(h[$"{loss}_loss"]), $"holdout {(string?)h["id"]}: {N(h[$"{loss}_loss"]):0.000}")]) { Line = false });
        }
        return series.Count == 0 ? "" : Chart("ladder-compute", "Loss vs training compute (L(C) fit, interval dashed)", new ChartAxis("training FLOPs", Log: true), new ChartAxis("held-out loss (nats/token)"), series);
    }

    static string RatioChart(JsonObject s)
    {
        var series = new List<ChartSeries>();
        foreach (var (loss, color) in Losses)
            if (Objects(s["curves"]).FirstOrDefault(c => (string?)c["law"] == "dcpt" && (string?)c["loss"] == loss) is { } curve)
            {
                var rows = (curve["points"] as JsonArray)?.OfType<JsonArray>().ToList() ?? [];
                series.Add(new ChartSeries($"{loss}: D-CPT at the holdout", color, rows.Select(r => new ChartPoint(N(r[0]), N(r[1]), $"r {N(r[0]):0.###}: {N(r[1]):0.000}")).ToList()) { Markers = false });
                series.Add(new ChartSeries($"{loss}: interval", color, rows.Select(r => new ChartPoint(N(r[0]), N(r[2]))).Concat(rows.AsEnumerable().Reverse().Select(r => new ChartPoint(N(r[0]), N(r[3])))).ToList()) { Markers = false, Dashed = true });
                if (Objects(s["points"]).FirstOrDefault(p => (string?)p["kind"] == "holdout") is { } h)
                    series.Add(new ChartSeries($"{loss}: holdout", color, [new ChartPoint(N(h["ratio"]), N(h[$"{loss}_loss"]), $"holdout: {N(h[$"{loss}_loss"]):0.000}")]) { Line = false });
            }
        return series.Count == 0 ? "" : Chart("ladder-ratio", "Loss vs domain ratio (D-CPT fits)", new ChartAxis("domain share of the mixture"), new ChartAxis("held-out loss (nats/token)"), series);
    }

    static string Chart(string id, string title, ChartAxis x, ChartAxis y, List<ChartSeries> series) =>
        $"<figure class=\"chart\" data-chart=\"{Esc(id)}\"><figcaption>{Esc(title)}</figcaption>{SvgChart.Render(id, x, y, series)}{Legend(id, series)}</figure>";

    static string ValidationTable(JsonObject s)
    {
        var rows = Objects(s["validation"]).ToList();
        if (rows.Count == 0) return "<p class=\"absent\">no holdout comparison in this ladder</p>";
        var sb = new StringBuilder("<table class=\"md\"><tr><th>law</th><th>loss</th><th>predicted</th><th>interval (new run)</th><th>observed</th><th>error</th><th>inside</th></tr>");
        foreach (var v in rows)
        {
            var o = v["observation"] as JsonObject;
            sb.Append(CultureInfo.InvariantCulture, $"<tr><td>{Esc((string?)v["law"] ?? "")}</td><td>{Esc((string?)v["loss"] ?? "")}</td><td class=\"num\">{N(v["predicted"]):0.0000}</td>" +
                $"<td class=\"num\">[{N(o?["low"]):0.0000}, {N(o?["high"]):0.0000}]</td><td class=\"num\">{N(v["observed"]):0.0000}</td><td class=\"num\">{N(v["relative_error"]) * 100:+0.00;-0.00} %</td>" +
                $"<td>{((bool?)v["inside"] == true ? "yes" : "no")}</td></tr>");
        }
        return sb.Append("</table>").ToString();
    }
}
