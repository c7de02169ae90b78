using Engine.Core;
using Engine.Core.Autograd;

namespace Engine.Tests.Ops;

/// <summary>
/// Gradient checking: the engine's fp32 forward and backward against a double-precision reference and its
/// central finite differences (h = 1e-6 in fp64). Tolerance: |got − ref| ≤ atol + rtol·|ref|, first failures printed.
/// </summary>
public static class GradCheck
{
    public const double Rtol = 2e-3, Atol = 2e-4;

    public static void AssertClose(ReadOnlySpan<float> got, ReadOnlySpan<double> expected, string what, double rtol = Rtol, double atol = Atol)
    {
        Assert.Equal(expected.Length, got.Length);
        var bad = new List<string>();
        for (int i = 0; i < got.Length; i++)
        {
            double g = got[i], e = expected[i];
            bool ok = double.IsFinite(g) == double.IsFinite(e) && Math.Abs(g - e) <= atol + rtol * Math.Abs(e);
            if (!ok && bad.Count < 5) bad.Add($"[{i}] got {g:G9} expected {e:G9}");
            if (!ok && bad.Count >= 5) break;
        }
        Assert.True(bad.Count == 0, $"{what}: mismatch (rtol {rtol}, atol {atol}): {string.Join("; ", bad)}");
    }

    /// <summary>Compares against a JSON array of numbers (an external oracle's output).</summary>
    public static void AssertCloseTo(float[] got, System.Text.Json.JsonElement expected, string what, double rtol, double atol) =>
        AssertClose(got, expected.EnumerateArray().Select(e => e.GetDouble()).ToArray(), what, rtol, atol);

    public static double[] RandomArray(Rng rng, int n, double scale = 1.0)
    {
        var a = new double[n];
        for (int i = 0; i < n; i++) a[i] = rng.NextGaussian() * scale;
        return a;
    }

    public static Tensor ToTensor(double[] a, params int[] shape)
    {
        var t = CpuBackend.Instance.Empty(shape);
        var f = t.Span;
        for (int i = 0; i < a.Length; i++) f[i] = (float)a[i];
        t.RequiresGrad = true;
        return t;
    }

    /// <summary>
    /// Checks forward and every input gradient of op against reference. Inputs are rounded to fp32 first so both
    /// sides see the same values; the upstream gradient is random.
    /// </summary>
    public static void Check(string name, Func<Tensor[], Tensor> op, Func<double[][], double[]> reference,
        (double[] Values, int[] Shape)[] inputs, ulong seed = 7, double rtol = Rtol, double atol = Atol)
    {
        var x = inputs.Select(i => i.Values.Select(v => (double)(float)v).ToArray()).ToArray();
        var refOut = reference(x);
        var rng = new Rng(seed);
        var upstream = RandomArray(rng, refOut.Length).Select(v => (double)(float)v).ToArray();

        using var scope = new TensorScope();
        var ts = x.Select((v, i) => ToTensor(v, inputs[i].Shape)).ToArray();
        var y = op(ts);
        AssertClose(y.Span, refOut, $"{name} forward", rtol, atol);
        var seedT = CpuBackend.Instance.Empty(y.Shape);
        for (int i = 0; i < upstream.Length; i++) seedT.Span[i] = (float)upstream[i];
        Grad.Backward(y, seedT);

        for (int a = 0; a < x.Length; a++)
        {
            var fd = new double[x[a].Length];
            const double h = 1e-6;
            for (int i = 0; i < fd.Length; i++)
            {
                double orig = x[a][i];
                x[a][i] = orig + h; double lp = Dot(reference(x), upstream);
                x[a][i] = orig - h; double lm = Dot(reference(x), upstream);
                x[a][i] = orig;
                fd[i] = (lp - lm) / (2 * h);
            }
            Assert.True(ts[a].Grad != null, $"{name}: input {a} received no gradient");
            AssertClose(ts[a].Grad!.Span, fd, $"{name} d/dinput{a}", rtol, atol);
        }
    }

    static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }
}
