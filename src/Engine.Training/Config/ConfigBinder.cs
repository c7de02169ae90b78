using System.Globalization;
using System.Reflection;
using System.Text;
using System.Text.Json;
using Tomlyn;
using Tomlyn.Model;
#if ENGINE_DATA
namespace Engine.Data;
#else
using Engine.Core;

namespace Engine.Training.Config;
#endif

/// <summary>A configuration problem: names the key and what is wrong, for a one-line CLI error.</summary>
#if ENGINE_DATA
internal sealed class ConfigException(string message) : Exception(message);
#else
public sealed class ConfigException(string message) : Exception(message);
#endif

/// <summary>
/// Marks a config key that holds a file or directory path (a string or an array of strings). In the file it is
/// relative to the file's folder; given on the command line (<c>--set</c>) it is relative to the working directory,
/// as every other path a user types there (<see cref="ConfigBinder.Load"/> makes it absolute when applying it).
/// </summary>
[AttributeUsage(AttributeTargets.Property)]
#if ENGINE_DATA
internal sealed class ConfigPathAttribute : Attribute
#else
public sealed class ConfigPathAttribute : Attribute
#endif
{
    /// <summary>Values that are names, not paths (data.tokenizer's "byte").</summary>
    public string[] Words { get; init; } = [];
    /// <summary>Only a value holding a '/' is a path; the others name something of the config (a stage).</summary>
    public bool NameOrPath { get; init; }

    /// <summary><paramref name="value"/> made absolute against <paramref name="workingDirectory"/> when it is a relative path.</summary>
    public string Absolute(string value, string workingDirectory) =>
        value.Length == 0 || Words.Contains(value) || value.StartsWith(Engine.Data.DataPaths.Prefix, StringComparison.Ordinal)
            || Path.IsPathRooted(value) || (NameOrPath && !value.Contains('/')) || value.Contains('\0')
            ? value : Path.GetFullPath(Path.Combine(workingDirectory, value));
}

/// <summary>
/// Strict binding of TOML or JSON into typed records: snake_case keys map to PascalCase init properties, nested
/// tables to nested records; an unknown key, a wrong type or an invalid value is an error naming its full key.
/// A file may start from another: <c>base = "other.toml"</c> (relative to the file) reads that one first, then this
/// file's keys replace the base's, table by table (a value or an array — [[stages]] included — replaces whole); bases
/// chain up to <see cref="MaxBaseDepth"/> deep, a cycle is an error. Command-line overrides `section.key=value` are
/// applied on the merged tree before binding; a relative path in one (a key marked <see cref="ConfigPathAttribute"/>)
/// is relative to the working directory, not the config's folder. Engine.Data, which depends on nothing, compiles this
/// same file as its internal <c>Engine.Data.ConfigBinder</c> (ENGINE_DATA): engine prepare's config reads its tree
/// through <see cref="Parse"/>.
/// </summary>
#if ENGINE_DATA
internal static class ConfigBinder
#else
public static class ConfigBinder
#endif
{
    /// <summary>The key naming a base config file.</summary>
    public const string BaseKey = "extends";
    public const int MaxBaseDepth = 8;

    /// <summary>Reads and binds <paramref name="path"/> (after its base files) with <paramref name="overrides"/> applied;
    /// their relative paths resolve against <paramref name="workingDirectory"/> (default: the process's current directory).</summary>
    public static T Load<T>(string path, IEnumerable<string>? overrides = null, string? workingDirectory = null) where T : new()
    {
        var tree = ReadTree(path, []);
        string cwd = workingDirectory ?? Directory.GetCurrentDirectory();
        foreach (var o in overrides ?? []) ApplyOverride(tree, o, typeof(T), cwd);
        try { return Bind<T>(tree, ""); }
        catch (ConfigException e) { throw new ConfigException($"{path}: {ErrorText.OneLine(e.Message)}"); }
    }

    /// <summary>Largest config file read (shipped configs are a few KB).</summary>
    public const long MaxConfigBytes = 10_000_000;

    /// <summary>A config file's tree with its base (if any) merged under it.</summary>
    static Dictionary<string, object?> ReadTree(string path, List<string> chain)
    {
        if (!File.Exists(path)) throw new ConfigException(chain.Count == 0 ? $"config file not found: {path}" : $"{chain[^1]}: base config not found: {path}");
        FileStat.RequireRegular(path, "config file");
        var tree = Parse(ReadBounded(path), path);
        if (!tree.Remove(BaseKey, out var b)) return tree;
        if (b is not string name || name.Length == 0) throw new ConfigException($"{path}: '{BaseKey}' must name a config file (got {b ?? "nothing"})");
        string full = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, name));
        var here = new List<string>(chain) { Path.GetFullPath(path) };
        if (here.Contains(full, StringComparer.Ordinal)) throw new ConfigException($"{path}: '{BaseKey}' = {name} makes a cycle ({string.Join(" → ", here.Select(Path.GetFileName))} → {Path.GetFileName(full)})");
        if (here.Count > MaxBaseDepth) throw new ConfigException($"{path}: more than {MaxBaseDepth} base configs in a chain");
        var merged = ReadTree(full, here);
        Merge(merged, tree);
        return merged;
    }

    /// <summary>The file's text, refused past <see cref="MaxConfigBytes"/> — counted while reading, so a device or a file
    /// that grows cannot make it read without end.</summary>
    static string ReadBounded(string path)
    {
        long length = new FileInfo(path).Length;
        if (length > MaxConfigBytes) throw new ConfigException($"{path}: {length:N0} bytes, more than the {MaxConfigBytes:N0} a config file may hold");
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var buffer = new MemoryStream();
        var chunk = new byte[81920];
        int n;
        while ((n = f.Read(chunk, 0, chunk.Length)) > 0)
        {
            buffer.Write(chunk, 0, n);
            if (buffer.Length > MaxConfigBytes) throw new ConfigException($"{path}: more than the {MaxConfigBytes:N0} bytes a config file may hold");
        }
        buffer.Position = 0;
        using var reader = new StreamReader(buffer, Encoding.UTF8, detectEncodingFromByteOrderMarks: true);   // as File.ReadAllText
        return reader.ReadToEnd();
    }

    /// <summary>over's keys into under: tables merged key by key, anything else replaced.</summary>
    static void Merge(Dictionary<string, object?> under, Dictionary<string, object?> over)
    {
        foreach (var (k, v) in over)
        {
            if (v is Dictionary<string, object?> ov && under.TryGetValue(k, out var u) && u is Dictionary<string, object?> ud) Merge(ud, ov);
            else under[k] = v;
        }
    }

    public static Dictionary<string, object?> Parse(string text, string source)
    {
        bool json = source.EndsWith(".json", StringComparison.OrdinalIgnoreCase) || text.TrimStart().StartsWith('{');
        try
        {
            if (json)
            {
                using var doc = JsonDocument.Parse(text, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
                if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ConfigException($"{source}: the top level must be an object");
                return (Dictionary<string, object?>)FromJson(doc.RootElement)!;
            }
            var table = Engine.Data.StrictToml.Parse(text, source);   // duplicate keys and tables refused with line and column
            return (Dictionary<string, object?>)FromToml(table)!;
        }
        catch (JsonException e) { throw new ConfigException($"{source}: invalid JSON: {ErrorText.OneLine(e.Message)}"); }
        catch (TomlException e) { throw new ConfigException($"{source}: invalid TOML: {ErrorText.Toml(e.Message)}"); }
        catch (InvalidOperationException e) { throw new ConfigException($"{source}: invalid JSON string ({ErrorText.OneLine(e.Message)})"); }
        catch (ConfigException e) when (!e.Message.StartsWith(source, StringComparison.Ordinal)) { throw new ConfigException($"{source}: {ErrorText.OneLine(e.Message)}"); }
    }

    static object? FromJson(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => JsonObject(e),
        JsonValueKind.Array => e.EnumerateArray().Select(FromJson).ToList(),
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out long l) ? (object)l   // a long stays a long; a number past double's range is refused
            : e.TryGetDouble(out double d) ? d : throw new JsonException($"number {e.GetRawText()} is out of range"),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };

    static Dictionary<string, object?> JsonObject(JsonElement e)
    {
        var d = new Dictionary<string, object?>();
        foreach (var p in e.EnumerateObject())
            if (!d.TryAdd(p.Name, FromJson(p.Value))) throw new ConfigException($"key '{p.Name}' appears twice in one object");
        return d;
    }

    static object? FromToml(object? v) => v switch
    {
        TomlTable t => t.ToDictionary(kv => kv.Key, kv => FromToml(kv.Value)),
        TomlTableArray a => a.Select(x => FromToml(x)).ToList(),
        TomlArray a => a.Select(FromToml).ToList(),
        _ => v,
    };

    /// <summary>Applies "a.b.c=value" (value parsed as TOML scalar/array when possible, else a string); when the key is a
    /// <see cref="ConfigPathAttribute"/> property of <paramref name="type"/>, relative paths in the value are made
    /// absolute against <paramref name="workingDirectory"/>.</summary>
    public static void ApplyOverride(Dictionary<string, object?> tree, string assignment, Type? type = null, string? workingDirectory = null)
    {
        int eq = assignment.IndexOf('=');
        if (eq <= 0) throw new ConfigException($"override '{assignment}' is not of the form section.key=value");
        string key = assignment[..eq].Trim().TrimStart('-');
        string raw = assignment[(eq + 1)..].Trim();
        object? value;
        try
        {
            var t = TomlSerializer.Deserialize<TomlTable>("v = " + raw);
            value = FromToml(t!["v"]);
        }
        catch (TomlException) { value = raw; }
        var parts = key.Split('.');
        if (type != null && PropertyAt(type, parts)?.GetCustomAttribute<ConfigPathAttribute>() is { } path)
        {
            string cwd = workingDirectory ?? Directory.GetCurrentDirectory();
            value = value switch
            {
                string s => path.Absolute(s, cwd),
                List<object?> list => list.Select(x => x is string s ? path.Absolute(s, cwd) : x).ToList(),
                _ => value,
            };
        }
        var node = tree;
        for (int i = 0; i < parts.Length - 1; i++)
        {
            if (!node.TryGetValue(parts[i], out var child) || child is not Dictionary<string, object?> d)
            {
                d = new Dictionary<string, object?>();
                node[parts[i]] = d;
            }
            node = d;
        }
        node[parts[^1]] = value;
    }

    /// <summary>The property a dotted key names in <paramref name="type"/> (a table of named sections is passed over by
    /// its key), or null when it names none (binding then reports the unknown key).</summary>
    static PropertyInfo? PropertyAt(Type type, string[] parts)
    {
        PropertyInfo? prop = null;
        var t = type;
        foreach (var part in parts)
        {
            if (t.IsGenericType && t.GetGenericTypeDefinition() == typeof(Dictionary<,>))
            {
                (t, prop) = (t.GetGenericArguments()[1], null);
                continue;
            }
            prop = t.GetProperty(ToPascal(part), BindingFlags.Public | BindingFlags.Instance);
            if (prop == null) return null;
            t = Nullable.GetUnderlyingType(prop.PropertyType) ?? prop.PropertyType;
        }
        return prop;
    }

    public static string ToPascal(string snake)
    {
        var sb = new StringBuilder();
        foreach (var part in snake.Split('_', StringSplitOptions.RemoveEmptyEntries))
            sb.Append(char.ToUpperInvariant(part[0])).Append(part.AsSpan(1));
        return sb.ToString();
    }

    public static string ToSnake(string pascal)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < pascal.Length; i++)
        {
            char c = pascal[i];
            if (char.IsUpper(c) && i > 0) sb.Append('_');
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }

    public static T Bind<T>(Dictionary<string, object?> tree, string prefix) where T : new() => (T)Bind(typeof(T), tree, prefix);

    static object Bind(Type type, Dictionary<string, object?> tree, string prefix)
    {
        object target = Activator.CreateInstance(type)!;
        var props = type.GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.CanWrite).ToDictionary(p => p.Name, StringComparer.Ordinal);
        foreach (var (key, value) in tree)
        {
            string full = prefix.Length == 0 ? key : prefix + "." + key;
            if (!props.TryGetValue(ToPascal(key), out var prop) || ToSnake(prop.Name) != key.ToLowerInvariant())
                throw new ConfigException($"unknown config key '{full}'" + Suggest(key, props.Keys));
            prop.SetValue(target, Convert(prop.PropertyType, value, full));
        }
        return target;
    }

    static string Suggest(string key, IEnumerable<string> known)
    {
        var names = known.Select(ToSnake).ToList();
        return names.Count == 0 ? "" : $" (known keys here: {string.Join(", ", names)})";
    }

    static object? Convert(Type t, object? v, string key)
    {
        var under = Nullable.GetUnderlyingType(t);
        if (under != null) return v == null ? null : Convert(under, v, key);
        try
        {
            if (t == typeof(string)) return v as string ?? throw Type("a string");
            if (t == typeof(int)) return checked((int)AsLong(v));
            if (t == typeof(long)) return AsLong(v);
            if (t == typeof(double)) return Finite(AsDouble(v));
            if (t == typeof(float)) return (float)Finite(AsDouble(v)) is var f && float.IsFinite(f) ? f : throw new OverflowException();
            if (t == typeof(bool)) return v is bool b ? b : throw Type("true or false");
            if (t == typeof(ulong)) return checked((ulong)AsLong(v));
            if (t.IsEnum)
            {
                if (v is string s)
                {
                    var name = Enum.GetNames(t).FirstOrDefault(n => string.Equals(n, ToPascal(s), StringComparison.OrdinalIgnoreCase) || string.Equals(n, s, StringComparison.OrdinalIgnoreCase));
                    if (name != null) return Enum.Parse(t, name);
                }
                throw Type("one of " + string.Join(", ", Enum.GetNames(t).Select(ToSnake)));
            }
            if (t.IsArray)
            {
                var et = t.GetElementType()!;
                var list = v as List<object?> ?? throw Type("an array");
                var arr = Array.CreateInstance(et, list.Count);
                for (int i = 0; i < list.Count; i++) arr.SetValue(Convert(et, list[i], $"{key}[{i}]"), i);
                return arr;
            }
            if (t.IsGenericType && t.GetGenericTypeDefinition() == typeof(Dictionary<,>) && t.GetGenericArguments()[0] == typeof(string))
            {
                var vt = t.GetGenericArguments()[1];
                var d = v as Dictionary<string, object?> ?? throw Type("a table");
                var dict = (System.Collections.IDictionary)Activator.CreateInstance(t)!;
                foreach (var (k, x) in d) dict[k] = Convert(vt, x, key + "." + k);
                return dict;
            }
            if (t.IsClass)
            {
                var d = v as Dictionary<string, object?> ?? throw Type("a table");
                return Bind(t, d, key);
            }
        }
        catch (OverflowException) { throw new ConfigException($"config key '{key}': value {v} is out of range"); }
        throw new ConfigException($"config key '{key}': unsupported type {t.Name}");

        ConfigException Type(string expected) => new($"config key '{key}': expected {expected}, got {Describe(v)}");
        // a float with an integral value is taken (1e3 = 1000); beyond ±2^63 it is out of range, not saturated
        long AsLong(object? x) => x switch
        {
            long l => l,
            double d when d == Math.Floor(d) && d >= -9.2233720368547758E18 && d < 9.2233720368547758E18 => (long)d,
            double d when d == Math.Floor(d) => throw new OverflowException(),
            _ => throw Type("an integer"),
        };
        double Finite(double d) => double.IsFinite(d) ? d : throw new ConfigException($"config key '{key}': {Describe(d)} is not a finite number");
        double AsDouble(object? x) => x switch { long l => l, double d => d, string s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double p) => p, _ => throw Type("a number") };
    }

    static string Describe(object? v) => v switch
    {
        null => "nothing",
        string s => $"\"{s}\"",
        List<object?> => "an array",
        Dictionary<string, object?> => "a table",
        _ => System.Convert.ToString(v, CultureInfo.InvariantCulture) ?? "?",
    };
}
