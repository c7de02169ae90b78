using System.Text;
using AngleSharp.Dom;
using AngleSharp.Html.Parser;

namespace Engine.Data.Extraction;

/// <summary>What one HTML page gave.</summary>
public sealed record HtmlExtraction(string Text, bool MainContent, int Tables, int Formulas);

/// <summary>
/// Main-content extraction from HTML pages: AngleSharp parses the page, SmartReader (a port of Mozilla's Readability)
/// picks the article; when it finds none, the body without script/style/nav/header/footer/aside/form is used. The
/// chosen DOM is rendered as plain text with light Markdown: headings as <c>#</c>, list items as <c>- </c>, blocks
/// separated by blank lines, tables as Markdown pipe tables (first row the header), MathML formulas as LaTeX when the
/// page carries it (<c>alttext</c> or a TeX annotation, as XuanYuan keeps formulas).
/// </summary>
public static class HtmlExtractor
{
    static readonly HtmlParser Parser = new();

    /// <summary>The page's text, counted in <paramref name="counts"/> (pages, main content or fallback, tables, formulas).</summary>
    public static string Page(string html, string source, Counters counts)
    {
        var r = Extract(html, source);
        counts.Add("html_pages");
        counts.Add(r.MainContent ? "html_main_content" : "html_body_fallback");
        counts.Add("html_tables_markdown", r.Tables);
        counts.Add("html_formulas_latex", r.Formulas);
        return r.Text;
    }

    public static HtmlExtraction Extract(string html, string source)
    {
        ArgumentNullException.ThrowIfNull(html);
        string? article = null;
        int formulas = 0;
        try
        {
            var page = Parser.ParseDocument(html);
            formulas = FormulasToTex(page);   // before Readability, which drops MathML and scripts
            var reader = new SmartReader.Reader("https://localhost/", page) { Debug = false, LoggerDelegate = _ => { } };
            var a = reader.GetArticle();
            if (a.IsReadable && !string.IsNullOrWhiteSpace(a.Content)) article = a.Content;
        }
        catch (Exception e) when (e is not (OutOfMemoryException or OperationCanceledException))
        {
            // Readability's heuristics failed on this page: fall back to the cleaned body below
        }
        IElement? root;
        if (article != null) root = Parser.ParseDocument(article).Body;
        else
        {
            var doc = Parser.ParseDocument(html);
            formulas = FormulasToTex(doc);
            foreach (var e in doc.QuerySelectorAll("script, style, noscript, template, nav, header, footer, aside, form, iframe, svg").ToList()) e.Remove();
            root = doc.Body;
        }
        var w = new Renderer();
        if (root != null) w.Block(root);
        return new HtmlExtraction(w.Text(), article != null, w.Tables, formulas);
    }

    /// <summary>MathML with a TeX form (<c>alttext</c>, a TeX annotation) and <c>script type="math/tex"</c> become <c>$…$</c> text.</summary>
    static int FormulasToTex(AngleSharp.Html.Dom.IHtmlDocument doc)
    {
        int n = 0;
        foreach (var e in doc.QuerySelectorAll("math, script").ToList())
        {
            string? tex = e.LocalName == "math"
                ? e.GetAttribute("alttext") ?? e.QuerySelector("annotation[encoding='application/x-tex']")?.TextContent
                : e.GetAttribute("type") is { } ty && ty.StartsWith("math/tex", StringComparison.OrdinalIgnoreCase) ? e.TextContent : null;
            if (string.IsNullOrWhiteSpace(tex)) continue;
            e.Replace(doc.CreateTextNode($" ${tex.Trim()}$ "));
            n++;
        }
        return n;
    }

    sealed class Renderer
    {
        readonly StringBuilder _out = new();
        readonly StringBuilder _line = new();
        public int Tables;

        public string Text()
        {
            EndBlock();
            return _out.ToString().Trim();
        }

        void EndBlock()
        {
            string t = _line.ToString().Trim();
            _line.Clear();
            if (t.Length == 0) return;
            if (_out.Length > 0) _out.Append("\n\n");
            _out.Append(t);
        }

        void Inline(string text)
        {
            foreach (char c in text)
            {
                if (char.IsWhiteSpace(c))
                {
                    if (_line.Length > 0 && _line[^1] != ' ' && _line[^1] != '\n') _line.Append(' ');
                }
                else _line.Append(c);
            }
        }

        static bool IsBlock(string tag) => tag is "P" or "DIV" or "SECTION" or "ARTICLE" or "MAIN" or "BLOCKQUOTE" or "PRE" or "UL" or "OL" or "LI"
            or "H1" or "H2" or "H3" or "H4" or "H5" or "H6" or "TABLE" or "DL" or "DT" or "DD" or "FIGURE" or "FIGCAPTION" or "HR" or "ADDRESS" or "BODY";

        public void Block(INode node)
        {
            foreach (var child in node.ChildNodes) Visit(child);
        }

        void Visit(INode n)
        {
            if (n is IText t) { Inline(t.Data); return; }
            if (n is not IElement e) return;
            string tag = e.TagName;
            switch (tag)
            {
                case "SCRIPT" or "STYLE" or "NOSCRIPT" or "TEMPLATE":
                    return;
                case "BR":
                    _line.Append('\n');
                    return;
                case "TABLE":
                    EndBlock();
                    if (Table(e)) Tables++;
                    return;
                case "PRE":
                    EndBlock();
                    _line.Append(e.TextContent.TrimEnd());
                    EndBlock();
                    return;
            }
            if (!IsBlock(tag)) { Block(e); return; }
            EndBlock();
            if (tag.Length == 2 && tag[0] == 'H' && char.IsAsciiDigit(tag[1])) _line.Append('#', tag[1] - '0').Append(' ');
            else if (tag == "LI") _line.Append("- ");
            Block(e);
            EndBlock();
        }

        /// <summary>Writes the table as a Markdown pipe table; false (written as lines) for a layout table of one column.</summary>
        bool Table(IElement table)
        {
            var rows = new List<List<string>>();
            foreach (var tr in table.QuerySelectorAll("tr"))
            {
                if (tr.Closest("table") != table) continue;   // rows of a nested table belong to it
                var cells = tr.Children.Where(c => c.TagName is "TD" or "TH").Select(c => Cell(c)).ToList();
                if (cells.Count > 0) rows.Add(cells);
            }
            if (rows.Count == 0) return false;
            int cols = rows.Max(r => r.Count);
            if (cols < 2)
            {
                foreach (var r in rows) { _line.Append(r[0]); EndBlock(); }
                return false;
            }
            var sb = new StringBuilder();
            for (int i = 0; i < rows.Count; i++)
            {
                var r = rows[i];
                sb.Append('|');
                for (int c = 0; c < cols; c++) sb.Append(' ').Append(c < r.Count ? r[c] : "").Append(" |");
                sb.Append('\n');
                if (i == 0)
                {
                    sb.Append('|');
                    for (int c = 0; c < cols; c++) sb.Append(" --- |");
                    sb.Append('\n');
                }
            }
            _line.Append(sb.ToString().TrimEnd('\n'));
            EndBlock();
            return true;
        }

        static string Cell(IElement c)
        {
            var sb = new StringBuilder();
            foreach (char ch in c.TextContent)
            {
                if (char.IsWhiteSpace(ch)) { if (sb.Length > 0 && sb[^1] != ' ') sb.Append(' '); }
                else if (ch == '|') sb.Append("\\|");
                else sb.Append(ch);
            }
            return sb.ToString().Trim();
        }
    }
}
