#!/usr/bin/env python3
"""PyTorch peer for the CPU training benchmark: the same Llama (RMSNorm, RoPE, GQA, SwiGLU, untied head) trained
with AdamW + global-norm clipping on random tokens, fp32, eager mode (PyTorch 1.13 from Debian has no SDPA, so the
attention is the explicit causal softmax that HF's eager LlamaAttention uses). Prints one JSON object.

Run with Debian's interpreter: OMP_NUM_THREADS=2 /usr/bin/python3 torch_llama_train.py --hidden 384 ...
"""
import argparse, json, math, os, time
import torch
import torch.nn as nn
import torch.nn.functional as F


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


class Llama(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed = nn.Embedding(a.vocab, a.hidden)
        self.layers = nn.ModuleList([Block(a.hidden, a.heads, a.kv_heads, a.ffn, 1e-5) for _ in range(a.layers)])
        self.norm = RMSNorm(a.hidden, 1e-5)
        self.head = nn.Linear(a.hidden, a.vocab, bias=False)
        d = a.hidden // a.heads
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
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
    a = p.parse_args()
    torch.manual_seed(0)
    model = Llama(a)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    times = []
    for step in range(a.warmup + a.steps):
        ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
        tg = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(ids, tg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_seconds_median": median,
        "tokens_per_s": a.batch * a.seq / median,
        "final_loss": float(loss),
    }))


if __name__ == "__main__":
    main()
