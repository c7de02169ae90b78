#!/usr/bin/env python3
"""Hugging Face parity for a GPU machine (the GPU proof issue). Needs transformers + torch there; no downloads.

1. builds LlamaForCausalLM(config) with random weights for a small GQA config (head dim 64, so the CUDA flash kernels
   apply), save_pretrained(..., safe_serialization=True) in fp32;
2. writes a parity input (ids, targets with ignored positions, z-loss 0, one AdamW step with clipping);
3. computes the reference with transformers on the GPU in fp32: logits, loss (mean over valid targets), every
   gradient, the weights after torch.optim.AdamW (norm weights without decay);
4. runs `engine parity` on --device cpu and --device cuda and compares both against the reference:
   fp32 CPU: logits/loss rel 1e-4, grads rel 1e-3; bf16 CUDA: logits/loss rel 2e-2, grads cosine >= 0.99 per tensor.
Prints one JSON summary (and writes it to $OUT/hf_parity.json when OUT is set). Exit 1 on any mismatch.

usage: hf_parity.py ENGINE_CMD   e.g.  hf_parity.py "/opt/engine/engine"
"""
import json, os, subprocess, sys, tempfile
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def reference(model, inp, dev):
    ids = torch.tensor(inp["ids"], device=dev)
    tg = torch.tensor(inp["targets"], device=dev)
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits.float()
    flat, t = logits.reshape(-1, logits.shape[-1]), tg.reshape(-1)
    loss = torch.nn.functional.cross_entropy(flat, t, ignore_index=-100)
    loss.backward()
    named = dict(model.named_parameters())
    grads = {k: v.grad.detach().float().reshape(-1).cpu() for k, v in named.items()}
    norm = torch.nn.utils.clip_grad_norm_(list(named.values()), inp["clip"])
    groups = [{"params": [v for v in named.values() if v.dim() > 1], "weight_decay": inp["weight_decay"]},
              {"params": [v for v in named.values() if v.dim() == 1], "weight_decay": 0.0}]
    torch.optim.AdamW(groups, lr=inp["lr"], betas=tuple(inp["betas"]), eps=inp["eps"]).step()
    updated = {k: v.detach().float().reshape(-1).cpu() for k, v in named.items()}
    return {"loss": float(loss), "logits": flat.detach().reshape(-1).cpu(), "grad_norm": float(norm), "grads": grads, "updated": updated}


def compare(ref, eng, strict):
    t = lambda x: torch.tensor(x, dtype=torch.float32)
    out, ok = {}, True
    rel = lambda a, b: float((a - b).norm() / (b.norm() + 1e-12))
    out["loss_rel"] = abs(eng["loss"] - ref["loss"]) / abs(ref["loss"])
    out["logits_rel"] = rel(t(eng["logits"]), ref["logits"])
    worst_g, worst_u = 0.0, 0.0
    for k, g in ref["grads"].items():
        if k not in eng["grads"]:
            continue  # tied lm_head appears once in the engine
        e = t(eng["grads"][k])
        worst_g = max(worst_g, rel(e, g) if strict else 1 - float(torch.nn.functional.cosine_similarity(e, g, dim=0)))
        worst_u = max(worst_u, float((t(eng["updated"][k]) - ref["updated"][k]).abs().max()))
    out["grads_worst"] = worst_g
    out["updated_max_abs"] = worst_u
    if strict:
        ok = out["loss_rel"] < 1e-4 and out["logits_rel"] < 1e-4 and worst_g < 1e-3
    else:
        ok = out["loss_rel"] < 2e-2 and out["logits_rel"] < 2e-2 and worst_g < 1e-2
    out["ok"] = ok
    return out


def main():
    engine = sys.argv[1]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamaForCausalLM(cfg).float()
    work = tempfile.mkdtemp(prefix="hf_parity_")
    model.save_pretrained(work, safe_serialization=True)
    g = torch.Generator().manual_seed(1)
    B, T = 2, 64
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    tg = torch.cat([ids[:, 1:], torch.full((B, 1), -100)], dim=1)
    tg[:, ::7] = -100
    inp = {"ids": ids.tolist(), "targets": tg.tolist(), "z_loss": 0.0, "lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8,
           "weight_decay": 0.1, "clip": 1.0}
    with open(f"{work}/input.json", "w") as f:
        json.dump(inp, f)
    ref = reference(model.to(dev), inp, dev)
    summary = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}
    for backend in ["cpu", "cuda"]:
        out = f"{work}/engine_{backend}.json"
        r = subprocess.run(f'{engine} parity --model {work} --input {work}/input.json --out {out} --device {backend}',
                           shell=True, capture_output=True, text=True)
        if r.returncode != 0:
            summary[backend] = {"ok": False, "error": (r.stderr or r.stdout).strip()[-500:]}
            continue
        with open(out) as f:
            summary[backend] = compare(ref, json.load(f), strict=backend == "cpu")
    text = json.dumps(summary, indent=1)
    print(text)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "hf_parity.json"), "w") as f:
            f.write(text)
    sys.exit(0 if all(summary[b].get("ok") for b in ["cpu", "cuda"]) else 1)


if __name__ == "__main__":
    main()
