#!/usr/bin/env python3
"""PyTorch peer for the CPU training benchmark: the same Llama (RMSNorm, RoPE, GQA, SwiGLU, untied head) trained
with AdamW + global-norm clipping on random tokens, fp32, eager mode (PyTorch 1.13 from Debian has no SDPA, so the
attention is the explicit causal softmax that HF's eager LlamaAttention uses). Prints one JSON object.

Run with Debian's interpreter: OMP_NUM_THREADS=2 /usr/bin/python3 torch_llama_train.py --hidden 384 ...
With --weights DIR (`engine bench train` passes the engine's own export: config.json + model.safetensors, F32) the
shape comes from config.json and the weights from the safetensors file, read here without the safetensors package
(Debian has none): 8-byte little-endian header length, JSON header, raw tensors. With --tokens FILE (int32 LE,
(warmup + steps) x 2 x batch x seq: ids then targets per step) every step trains on the engine's own batch, so the
first step's loss must equal the engine's (the script reports it; the harness compares).
"""
import argparse, json, math, os, time
import torch
import torch.nn as nn
import torch.nn.functional as F

import blas_kernel


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Block(nn.Module):
    def __init__(self, c, heads, kv, ffn, eps):
        super().__init__()
        self.h, self.kv, self.d = heads, kv, c // heads
        self.ln1, self.ln2 = RMSNorm(c, eps), RMSNorm(c, eps)
        self.q = nn.Linear(c, heads * self.d, bias=False)
        self.k = nn.Linear(c, kv * self.d, bias=False)
        self.v = nn.Linear(c, kv * self.d, bias=False)
        self.o = nn.Linear(heads * self.d, c, bias=False)
        self.gate = nn.Linear(c, ffn, bias=False)
        self.up = nn.Linear(c, ffn, bias=False)
        self.down = nn.Linear(ffn, c, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, C = x.shape
        h = self.ln1(x)
        q = self.q(h).view(B, T, self.h, self.d).transpose(1, 2)
        k = self.k(h).view(B, T, self.kv, self.d).transpose(1, 2)
        v = self.v(h).view(B, T, self.kv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.h // self.kv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.d) + mask
        a = torch.softmax(att, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(B, T, C))
        h2 = self.ln2(x)
        return x + self.down(F.silu(self.gate(h2)) * self.up(h2))


def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {t['dtype']}, this peer reads F32 exports only")
        b, e = t["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[b:e]), dtype=torch.float32).reshape(t["shape"])
    return out


def load_engine_export(model, directory):
    """Copies the engine's Hugging Face names into this module's parameters (every tensor used, every parameter set)."""
    w = read_safetensors(os.path.join(directory, "model.safetensors"))
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "head.weight": "lm_head.weight" if "lm_head.weight" in w else "model.embed_tokens.weight"}
    hf = {"ln1": "input_layernorm", "ln2": "post_attention_layernorm", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
          "v": "self_attn.v_proj", "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    for i in range(len(model.layers)):
        for ours, theirs in hf.items():
            names[f"layers.{i}.{ours}.weight"] = f"model.layers.{i}.{theirs}.weight"
    used = set()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            src = w[names[pname]]
            if tuple(src.shape) != tuple(p.shape):
                raise SystemExit(f"{directory}: {names[pname]} has shape {tuple(src.shape)}, the peer expects {tuple(p.shape)}")
            p.copy_(src)
            used.add(names[pname])
    unused = set(w) - used
    if unused:
        raise SystemExit(f"{directory}: tensors the peer did not use: {sorted(unused)[:5]}")


class Llama(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed = nn.Embedding(a.vocab, a.hidden)
        self.layers = nn.ModuleList([Block(a.hidden, a.heads, a.kv_heads, a.ffn, a.eps) for _ in range(a.layers)])
        self.norm = RMSNorm(a.hidden, a.eps)
        self.head = nn.Linear(a.hidden, a.vocab, bias=False)
        d = a.hidden // a.heads
        inv = 1.0 / (a.rope_theta ** (torch.arange(0, d, 2).float() / d))
        f = torch.outer(torch.arange(a.seq).float(), inv)
        emb = torch.cat((f, f), dim=-1)
        self.register_buffer("cos", emb.cos()[None, None])
        self.register_buffer("sin", emb.sin()[None, None])
        self.register_buffer("mask", torch.full((a.seq, a.seq), float("-inf")).triu(1)[None, None])
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0, 0.02)

    def forward(self, ids, targets):
        x = self.embed(ids)
        for l in self.layers:
            x = l(x, self.cos, self.sin, self.mask)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def main():
    p = argparse.ArgumentParser()
    for k, v in dict(hidden=384, layers=6, heads=6, kv_heads=2, ffn=1024, vocab=8192, seq=256, batch=8, steps=6, warmup=2).items():
        p.add_argument("--" + k.replace("_", "-"), type=int, default=v, dest=k)
    p.add_argument("--weights", help="the engine's export (config.json + model.safetensors, F32)")
    p.add_argument("--tokens", help="int32 batches written by the engine")
    p.add_argument("--lr", type=float, default=1e-4)
    a = p.parse_args()
    a.eps, a.rope_theta = 1e-5, 10000.0
    if a.weights:
        with open(os.path.join(a.weights, "config.json")) as f:
            c = json.load(f)
        a.hidden, a.layers, a.heads = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
        a.kv_heads, a.ffn, a.vocab = c.get("num_key_value_heads", a.heads), c["intermediate_size"], c["vocab_size"]
        a.eps, a.rope_theta = c.get("rms_norm_eps", 1e-5), c.get("rope_theta", 10000.0)
    torch.manual_seed(0)
    model = Llama(a)
    if a.weights:
        load_engine_export(model, a.weights)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    batches = None
    if a.tokens:
        raw = torch.frombuffer(bytearray(open(a.tokens, "rb").read()), dtype=torch.int32).long()
        batches = raw.reshape(a.warmup + a.steps, 2, a.batch, a.seq)
    times, losses = [], []
    for step in range(a.warmup + a.steps):
        if batches is not None:
            ids, tg = batches[step, 0], batches[step, 1]
        else:
            ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
            tg = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(ids, tg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(float(loss))
        if step >= a.warmup:
            times.append(dt)
    step_seconds = list(times)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "blas": blas_kernel.describe(),
        "cpu_capability": next((l.split(":", 1)[1].strip() for l in torch.__config__.show().splitlines() if "CPU capability usage" in l), None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_seconds_median": median,
        "tokens_per_s": a.batch * a.seq / median,
        "final_loss": float(loss),
        "first_loss": losses[0],
        "step_seconds": step_seconds,
        "weights": a.weights,
    }))


if __name__ == "__main__":
    main()
