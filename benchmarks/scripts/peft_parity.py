#!/usr/bin/env python3
"""PEFT parity for LoRA adapters (issue 15 item 3), for the GPU machine. Needs torch + transformers + peft there; no downloads.

1. builds LlamaForCausalLM(config) with random weights (fp32, head dim 64) and save_pretrained()s it as the base;
2. PEFT -> engine: get_peft_model() with LoraConfig(r=8, lora_alpha=16, all seven Llama projections,
   init_lora_weights=False so lora_B is not zero), save_pretrained() (adapter_config.json + adapter_model.safetensors);
   reference logits from the PEFT model in eval mode; `engine parity --adapter` on cpu and cuda must match them;
3. engine -> PEFT: `engine train` with [lora] (r=4, q_proj/v_proj/down_proj, a few steps on a byte-level text file)
   writes final/ in PEFT's layout; PeftModel.from_pretrained() loads it onto the base and its logits must match
   `engine parity --adapter final/` on cpu and cuda; merge_and_unload() must match them too.
Tolerances: fp32 CPU logits rel 1e-4; bf16 CUDA rel 2e-2 (as hf_parity.py).
Prints one JSON summary (and writes $OUT/peft_parity.json when OUT is set). Exit 1 on any mismatch.

usage: peft_parity.py ENGINE_CMD   e.g.  peft_parity.py "/opt/engine/engine"
"""
import json, os, subprocess, sys, tempfile
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, PeftModel, get_peft_model

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def logits_of(model, ids, dev):
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, device=dev)).logits.float().reshape(-1).cpu()


def engine_logits(engine, base, adapter, inp_path, out, backend):
    r = subprocess.run(f"{engine} parity --model {base} --adapter {adapter} --input {inp_path} --out {out} --device {backend}",
                       shell=True, capture_output=True, text=True)
    if r.returncode != 0:
        return None, (r.stderr or r.stdout).strip()[-500:]
    with open(out) as f:
        return torch.tensor(json.load(f)["logits"], dtype=torch.float32), None


def check(ref, eng, backend):
    rel = float((eng - ref).norm() / (ref.norm() + 1e-12))
    return {"logits_rel": rel, "ok": rel < (1e-4 if backend == "cpu" else 2e-2)}


def main():
    engine = sys.argv[1]
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False)
    work = tempfile.mkdtemp(prefix="peft_parity_")
    base_dir = f"{work}/base"
    LlamaForCausalLM(cfg).float().save_pretrained(base_dir, safe_serialization=True)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 258, (2, 48), generator=g)   # byte-level ids: the engine-trained adapter used the byte tokenizer
    inp = {"ids": ids.tolist(), "targets": ids.tolist(), "z_loss": 0.0, "lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8,
           "weight_decay": 0.0, "clip": 1.0}
    inp_path = f"{work}/input.json"
    with open(inp_path, "w") as f:
        json.dump(inp, f)
    summary = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}
    try:
        import peft
        summary["peft"] = peft.__version__
    except AttributeError:
        pass

    # 2. PEFT -> engine
    base = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    pm = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                         init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_dir = f"{work}/peft_adapter"
    pm.save_pretrained(peft_dir, safe_serialization=True)
    ref = logits_of(pm.to(dev), inp["ids"], dev)
    summary["peft_to_engine"] = {}
    for backend in ["cpu", "cuda"]:
        eng, err = engine_logits(engine, base_dir, peft_dir, inp_path, f"{work}/p2e_{backend}.json", backend)
        summary["peft_to_engine"][backend] = {"ok": False, "error": err} if eng is None else check(ref, eng, backend)

    # 3. engine -> PEFT
    text = f"{work}/train.txt"
    with open(text, "w") as f:
        f.write(("The quick brown fox jumps over the lazy dog. " * 40 + "\n") * 20)
    toml = f"""
[model]
init_from = "{base_dir}"
[data]
train = ["{text}"]
tokenizer = "byte"
valid_fraction = 0.05
[train]
seq_len = 32
batch_size = 4
steps = 5
seed = 3
device = "cpu"
[optim]
lr = 0.01
weight_decay = 0.0
[schedule]
kind = "constant"
[lora]
r = 4
alpha = 8
target_modules = ["q_proj", "v_proj", "down_proj"]
[output]
dir = "{work}/engine_run"
"""
    with open(f"{work}/lora.toml", "w") as f:
        f.write(toml)
    r = subprocess.run(f"{engine} train --config {work}/lora.toml", shell=True, capture_output=True, text=True)
    summary["engine_to_peft"] = {}
    if r.returncode != 0:
        summary["engine_to_peft"]["train"] = {"ok": False, "error": (r.stderr or r.stdout).strip()[-500:]}
    else:
        adapter = f"{work}/engine_run/final"
        base = LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
        loaded = PeftModel.from_pretrained(base, adapter).to(dev)
        ref = logits_of(loaded, inp["ids"], dev)
        plain = logits_of(LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32).to(dev), inp["ids"], dev)
        summary["engine_to_peft"]["adapter_changes_logits_rel"] = float((ref - plain).norm() / plain.norm())
        for backend in ["cpu", "cuda"]:
            eng, err = engine_logits(engine, base_dir, adapter, inp_path, f"{work}/e2p_{backend}.json", backend)
            summary["engine_to_peft"][backend] = {"ok": False, "error": err} if eng is None else check(ref, eng, backend)
        merged = logits_of(loaded.merge_and_unload(), inp["ids"], dev)
        summary["engine_to_peft"]["peft_merged"] = check(ref, merged, "cpu" if dev == "cpu" else "cuda")
    text_out = json.dumps(summary, indent=1)
    print(text_out)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "peft_parity.json"), "w") as f:
            f.write(text_out)
    oks = [v.get("ok") for part in ("peft_to_engine", "engine_to_peft") for v in summary[part].values() if isinstance(v, dict)]
    sys.exit(0 if oks and all(oks) else 1)


if __name__ == "__main__":
    main()
