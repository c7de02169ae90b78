namespace Engine.Core;

public static class Shape
{
    public static long Numel(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"negative dimension in shape {Format(shape)}");
            n *= d;
        }
        return n;
    }

    public static string Format(ReadOnlySpan<int> shape) => "[" + string.Join(", ", shape.ToArray()) + "]";

    /// <summary>Throws naming the argument when the tensor's shape differs from the expected one.</summary>
    public static void Check(Tensor t, string name, params int[] expected)
    {
        if (!t.Shape.AsSpan().SequenceEqual(expected))
            throw new ArgumentException($"{name}: expected shape {Format(expected)}, got {Format(t.Shape)}", name);
    }
}
