using Tomlyn;
using Tomlyn.Model;

namespace Engine.Data;

/// <summary>
/// TOML as TOML 1.0 defines it, for every config reader (train/recipe's ConfigBinder and prepare's PrepareConfig): a
/// key or table defined twice is an error with line and column (Tomlyn's deserializer lets the last one win silently;
/// its validating parser refuses it). Errors are <see cref="TomlException"/>s, whose first line
/// <see cref="ErrorText"/>'s Toml turns into "line L, column C: …".
/// </summary>
public static class StrictToml
{
    public static TomlTable Parse(string text, string source)
    {
        try { Tomlyn.Parsing.SyntaxParser.ParseStrict(text, source, validate: true); }
        catch (Exception e) when (e is not (TomlException or OutOfMemoryException))
        {
            // the validating lexer trips over its own message for some invalid escapes ("\uD800": an
            // ArgumentOutOfRangeException, found by the fuzz targets); the deserializer below reports those as TomlException
        }
        return TomlSerializer.Deserialize<TomlTable>(text) ?? new TomlTable();
    }
}
