using UglyToad.PdfPig;
using UglyToad.PdfPig.DocumentLayoutAnalysis.TextExtractor;

namespace Engine.Data.Extraction;

/// <summary>
/// PDF text with PdfPig: each page's words in content order (<see cref="ContentOrderTextExtractor"/>, paragraphs
/// separated by blank lines), pages separated by blank lines. PdfPig finds no tables, so a PDF table comes out as its
/// cells' text in reading order, not as Markdown (docs/DATA.md). A file PdfPig cannot open (not a PDF, truncated,
/// encrypted) is an <see cref="InvalidDataException"/> naming it.
/// </summary>
public static class PdfExtractor
{
    public static string Extract(byte[] bytes, string source, Counters counts)
    {
        try
        {
            using var doc = PdfDocument.Open(bytes);
            var pages = new List<string>();
            foreach (var page in doc.GetPages())
            {
                counts.Add("pdf_pages");
                string t = ContentOrderTextExtractor.GetText(page, new ContentOrderTextExtractor.Options { SeparateParagraphsWithDoubleNewline = true }).Trim();
                if (t.Length > 0) pages.Add(t);
            }
            counts.Add("pdf_files");
            return string.Join("\n\n", pages);
        }
        // PdfPig reports damage through many exception types: any of them from a file is a bad file, not a crash
        catch (Exception e) when (e is not (OutOfMemoryException or OperationCanceledException))
        {
            throw new InvalidDataException($"{source}: not a readable PDF ({ErrorText.OneLine(e.Message)})", e);
        }
    }
}
