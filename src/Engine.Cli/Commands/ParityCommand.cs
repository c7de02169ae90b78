using System.CommandLine;
using Engine.Model.IO;
using Engine.Training.Parity;

namespace Engine.Cli.Commands;

/// <summary>`engine parity`: the engine side of a parity check against PyTorch / Hugging Face (see benchmarks/scripts).</summary>
public static class ParityCommand
{
    public static Command Create()
    {
        var model = new Option<DirectoryInfo>("--model", "-m") { Description = "model directory (config.json + model.safetensors)", Required = true };
        var input = new Option<FileInfo>("--input", "-i") { Description = "parity input JSON (ids, targets, z_loss, lr, betas, eps, weight_decay, clip)", Required = true };
        var output = new Option<FileInfo>("--out", "-o") { Description = "where to write logits, loss, gradients and updated weights", Required = true };
        var device = new Option<string>("--device") { Description = "cpu or cuda", DefaultValueFactory = _ => "cpu" };
        var adapter = new Option<DirectoryInfo?>("--adapter") { Description = "a LoRA adapter in PEFT's layout on the model: writes the logits only (peft_parity.py)" };
        var cmd = new Command("parity", "logits, loss, gradients and one AdamW step on given tokens, as JSON (for parity checks)") { model, input, output, device, adapter };
        cmd.SetAction(p => Cli.Guard(() =>
        {
            var inp = ParityInput.Load(p.GetValue(input)!.FullName);
            using var m = ModelIO.Load(p.GetValue(model)!.FullName, Cli.Backend(p.GetValue(device)!));
            if (p.GetValue(adapter) is { } ad)
            {
                using var lora = Engine.Model.Lora.LoraAdapters.Load(m, ad.FullName);
                var r = ParityRun.Logits(m, inp);
                File.WriteAllText(p.GetValue(output)!.FullName, r.ToJsonString());
                Console.WriteLine($"{r["backend"]}: logits with the adapter {ad.FullName} (r = {lora.Config.R}, {lora.Modules.Count} layers) → {p.GetValue(output)!.FullName}");
                return 0;
            }
            var result = ParityRun.Run(m, inp);
            File.WriteAllText(p.GetValue(output)!.FullName, result.ToJsonString());
            Console.WriteLine($"{result["backend"]}: loss {result["loss"]}, grad norm {result["grad_norm"]} → {p.GetValue(output)!.FullName}");
            return 0;
        }));
        return cmd;
    }
}
