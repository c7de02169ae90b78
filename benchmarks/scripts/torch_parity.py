#!/usr/bin/env python3
"""PyTorch oracle for the engine's Llama: reads an engine-written model directory (config.json + model.safetensors,
parsed here with a plain reader: 8-byte header length, JSON header, little-endian data) into an independent PyTorch
implementation of Hugging Face's LlamaForCausalLM forward (same parameter names), then computes on the given tokens:
logits, the mean cross-entropy loss (+ z-loss), every parameter gradient, and the weights after one torch.optim.AdamW
step with global-norm clipping. Writes one JSON object to stdout. Run with Debian's /usr/bin/python3 (python3-torch).

usage: torch_parity.py MODEL_DIR INPUT_JSON   (INPUT_JSON: {"ids": [[...]], "targets": [[...]], "z_loss": z,
                                               "lr": .., "betas": [..], "eps": .., "weight_decay": .., "clip": ..})
"""
import json, math, struct, sys
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)  # the oracle runs in fp64: differences are the engine's fp32 error


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", e["dtype"]
        b, end = e["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:end]), dtype=torch.float32).reshape(e["shape"])
        out[name] = t.to(torch.float64)
    return out


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(p, cfg, ids):
    B, T = ids.shape
    C, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    D = C // H
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    pos = torch.arange(T, dtype=torch.float64)
    rs = cfg.get("rope_scaling")
    if rs and rs.get("type", rs.get("rope_type")) == "linear":
        pos = pos / rs["factor"]
    f = torch.outer(pos, inv)
    emb = torch.cat((f, f), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
    x = p["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        h = rms(x, p[pre + "input_layernorm.weight"], eps)
        q = (h @ p[pre + "self_attn.q_proj.weight"].T).view(B, T, H, D).transpose(1, 2)
        k = (h @ p[pre + "self_attn.k_proj.weight"].T).view(B, T, KV, D).transpose(1, 2)
        v = (h @ p[pre + "self_attn.v_proj.weight"].T).view(B, T, KV, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + mask, dim=-1) @ v
        x = x + a.transpose(1, 2).reshape(B, T, C) @ p[pre + "self_attn.o_proj.weight"].T
        h2 = rms(x, p[pre + "post_attention_layernorm.weight"], eps)
        m = F.silu(h2 @ p[pre + "mlp.gate_proj.weight"].T) * (h2 @ p[pre + "mlp.up_proj.weight"].T)
        x = x + m @ p[pre + "mlp.down_proj.weight"].T
    x = rms(x, p["model.norm.weight"], eps)
    head = p["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else p["lm_head.weight"]
    return x @ head.T


def main():
    model_dir, input_path = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{model_dir}/config.json"))
    inp = json.load(open(input_path))
    params = {k: v.clone().requires_grad_(True) for k, v in read_safetensors(f"{model_dir}/model.safetensors").items()}
    ids = torch.tensor(inp["ids"])
    tg = torch.tensor(inp["targets"])
    logits = forward(params, cfg, ids)
    flat, tflat = logits.reshape(-1, logits.shape[-1]), tg.reshape(-1)
    valid = tflat != -100
    lse = torch.logsumexp(flat, dim=-1)
    nll = lse - flat.gather(1, tflat.clamp(min=0)[:, None])[:, 0]
    z = inp.get("z_loss", 0.0)
    loss = ((nll + z * lse * lse) * valid).sum() / valid.sum()
    loss.backward()
    grads = {k: v.grad.reshape(-1).tolist() for k, v in params.items()}
    # one AdamW step exactly as torch.optim.AdamW, after global-norm clipping
    ordered = list(params.values())
    norm = torch.nn.utils.clip_grad_norm_(ordered, inp["clip"])
    groups = [
        {"params": [v for v in ordered if v.dim() > 1], "weight_decay": inp["weight_decay"]},
        {"params": [v for v in ordered if v.dim() == 1], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=inp["lr"], betas=tuple(inp["betas"]), eps=inp["eps"])
    opt.step()
    print(json.dumps({
        "loss": float(loss),
        "logits": flat.detach().reshape(-1).tolist(),
        "grad_norm": float(norm),
        "grads": grads,
        "updated": {k: v.detach().reshape(-1).tolist() for k, v in params.items()},
    }))


if __name__ == "__main__":
    main()
