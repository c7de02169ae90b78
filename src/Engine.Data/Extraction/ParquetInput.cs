using Parquet;
using Parquet.Schema;

namespace Engine.Data.Extraction;

/// <summary>
/// Parquet input (Parquet.Net): one string column (the source's <c>field</c>) read a row group at a time, so a unit
/// holds one row group's values. A file that is not Parquet, is truncated, or lacks the column is an error naming it.
/// </summary>
public static class ParquetInput
{
    /// <summary>
    /// Longest one footer read or one row group's decoding may take. Fuzzing found mutated footers that made Parquet.Net
    /// 6.1.0 loop for many minutes (<see cref="ParquetFooter"/> now refuses them first); this bounds what the check
    /// cannot see: past it the file is refused (skipped and counted) and the stuck read is left behind on a pool thread
    /// until the process ends.
    /// </summary>
    public static TimeSpan Timeout { get; set; } = TimeSpan.FromMinutes(5);

    static T Bounded<T>(string path, string what, Func<CancellationToken, T> read)
    {
        using var cts = new CancellationTokenSource();
        var task = Task.Run(() => read(cts.Token));
        try
        {
            if (!task.Wait(Timeout))
            {
                cts.Cancel();   // Parquet.Net checks the token between pages; a loop inside one page goes on until the process ends
                throw new InvalidDataException($"{path}: reading the Parquet {what} took more than {Timeout.TotalSeconds:F0} s (a damaged file can make the Parquet reader loop)");
            }
            return task.Result;
        }
        catch (AggregateException e) when (e.InnerException != null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerException).Throw();
            throw;
        }
    }

    /// <summary>Row groups in the file (read from its footer), for cutting large files into units.</summary>
    public static int RowGroups(string path)
    {
        try
        {
            using var fs = File.OpenRead(path);
            ParquetFooter.Check(path, fs);
            var reader = Bounded(path, "footer", ct => ParquetReader.CreateAsync(fs, null, false, ct).GetAwaiter().GetResult());
            try { return reader.RowGroupCount; }
            finally { reader.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
        }
        catch (Exception e) when (IsFormatError(e)) { throw Bad(path, e); }
    }

    public static IEnumerable<string> Read(InputPart part, InputOptions options, Counters counts)
    {
        if (DataFile.IsGzip(part.Path) || DataFile.IsZstd(part.Path))
            throw new NotSupportedException($"{part.Path}: a compressed .parquet file (Parquet compresses its pages itself: store it uncompressed)");
        using var fs = File.OpenRead(part.Path);
        ParquetReader reader;
        DataField field;
        try
        {
            ParquetFooter.Check(part.Path, fs);
            reader = Bounded(part.Path, "footer", ct => ParquetReader.CreateAsync(fs, null, false, ct).GetAwaiter().GetResult());
            var fields = reader.Schema.GetDataFields();
            field = fields.FirstOrDefault(f => f.Name == options.Field)
                ?? throw new InvalidDataException($"{part.Path}: no column '{ErrorText.OneLine(options.Field)}' (columns: {ErrorText.OneLine(string.Join(", ", fields.Select(f => f.Name)))})");
            if (field.ClrType != typeof(string) && field.ClrType != typeof(ReadOnlyMemory<char>)) throw new InvalidDataException($"{part.Path}: column '{field.Name}' holds {field.ClrType.Name}, not strings");
        }
        catch (Exception e) when (IsFormatError(e)) { throw Bad(part.Path, e); }
        try
        {
            int end = part.End < 0 ? reader.RowGroupCount : (int)Math.Min(part.End, reader.RowGroupCount);
            for (int g = (int)part.Start; g < end; g++)
            {
                string?[] values;
                try
                {
                    int group = g;
                    values = Bounded(part.Path, $"row group {g}", ct =>
                    {
                        using var rg = reader.OpenRowGroupReader(group);
                        if (rg.RowCount > int.MaxValue) throw new InvalidDataException($"{part.Path}: row group {group} holds {rg.RowCount} rows");
                        var v = new string?[rg.RowCount];
                        rg.ReadAsync(field, v.AsMemory()!, null, ct).GetAwaiter().GetResult();
                        return v;
                    });
                }
                catch (Exception e) when (IsFormatError(e)) { throw Bad(part.Path, e); }
                counts.Add("parquet_row_groups");
                foreach (var v in values)
                {
                    if (v == null || string.IsNullOrWhiteSpace(v)) { counts.Add("empty_records"); continue; }
                    if (v.Length > options.MaxRecordBytes) { counts.Add("records_too_long"); continue; }
                    string? text = v;
                    if (options.Html && string.IsNullOrWhiteSpace(text = HtmlExtractor.Page(v, part.Path, counts))) { counts.Add("empty_records"); continue; }
                    counts.Add("parquet_rows");
                    yield return text;
                }
            }
        }
        finally { reader.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
    }

    // Parquet.Net reports damage through many exception types (its own, IO, format, index, overflow): any of them
    // from reading the file is a bad file, not a crash.
    static bool IsFormatError(Exception e) => e is not (OutOfMemoryException or OperationCanceledException or FileNotFoundException);

    static InvalidDataException Bad(string path, Exception e) => e as InvalidDataException is { } ide && ide.Message.StartsWith(path, StringComparison.Ordinal)
        ? ide : new InvalidDataException($"{path}: not a readable Parquet file ({ErrorText.OneLine(e.Message)})", e);
}
