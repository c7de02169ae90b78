#!/usr/bin/env python3
"""An independent PyTorch Baichuan 2 (BaichuanTests' oracle; it never calls the engine). It reads a Hugging Face
Baichuan directory the way Baichuan 2's modeling_baichuan.py does and computes, in fp64, the mean next-token NLL of
given token sequences, and Baichuan's training loss (NLL + z_loss_weight * mean of the squared largest logit).

  * config.json: model_type "baichuan"; 7B-style (rotary embedding, base 10000) when it has max_position_embeddings,
    13B-style (ALiBi) when it has only model_max_length -- the two shipped configs differ exactly there.
  * weights: model.safetensors, or model.safetensors.index.json + shards (read with a plain reader: 8-byte header
    length, JSON header, little-endian data); F32 and BF16.
  * each layer: RMSNorm -> W_pack [3C, C] whose output splits into q, k, v in that order -> (7B: rotate-half RoPE)
    -> softmax(q k^T / sqrt(D) + mask) v, where 13B's mask is the causal -inf mask plus slope_h * j (Baichuan's
    _gen_alibi_mask: the key position times the head's slope from _get_interleave) -> o_proj -> residual -> RMSNorm
    -> down(silu(gate) * up) -> residual; final RMSNorm; NormHead: lm_head rows normalised (F.normalize).

usage: baichuan2_torch.py MODEL_DIR INPUT_JSON   (INPUT_JSON: {"sequences": [[ids], ...]})
prints {"mean_nll": .., "tokens": .., "train_loss": .., "logits_last": [...]}
"""
import json, math, os, struct, sys
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


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
        b, end = e["data_offsets"]
        buf = bytearray(data[b:end])
        if e["dtype"] == "F32":
            t = torch.frombuffer(buf, dtype=torch.float32)
        elif e["dtype"] == "BF16":
            bits = torch.frombuffer(buf, dtype=torch.int16).to(torch.int32) & 0xFFFF
            t = (bits << 16).view(torch.float32)
        else:
            raise ValueError(f"{name}: dtype {e['dtype']} not handled by the oracle")
        out[name] = t.reshape(e["shape"]).to(torch.float64)
    return out


def read_weights(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        files = sorted(set(json.load(open(index))["weight_map"].values()))
        out = {}
        for f in files:
            out.update(read_safetensors(os.path.join(model_dir, f)))
        return out
    return read_safetensors(os.path.join(model_dir, "model.safetensors"))


def get_interleave(n):
    # Baichuan 2's ALiBi slopes (its _get_interleave): geometric for a power of two, else the closest power of two's
    # slopes followed by every other slope of the next power of two
    def power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + get_interleave(2 * closest)[0::2][: n - closest]


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(p, cfg, ids):
    T = len(ids)
    C, H = cfg["hidden_size"], cfg["num_attention_heads"]
    D = C // H
    eps = cfg["rms_norm_eps"]
    rope = "max_position_embeddings" in cfg
    causal = torch.full((T, T), float("-inf")).triu(1)
    if rope:
        inv = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        f = torch.outer(torch.arange(T, dtype=torch.float64), inv)
        emb = torch.cat((f, f), dim=-1)
        cos, sin = emb.cos()[None], emb.sin()[None]
        bias = causal[None]
    else:
        slopes = torch.tensor(get_interleave(H))
        bias = causal[None] + slopes[:, None, None] * torch.arange(T, dtype=torch.float64)[None, None, :]
    x = p["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        h = rms(x, p[pre + "input_layernorm.weight"], eps)
        proj = h @ p[pre + "self_attn.W_pack.weight"].T
        q, k, v = (proj[:, j * C:(j + 1) * C].reshape(T, H, D).transpose(0, 1) for j in range(3))
        if rope:
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + bias, dim=-1) @ v
        x = x + a.transpose(0, 1).reshape(T, C) @ p[pre + "self_attn.o_proj.weight"].T
        h2 = rms(x, p[pre + "post_attention_layernorm.weight"], eps)
        m = F.silu(h2 @ p[pre + "mlp.gate_proj.weight"].T) * (h2 @ p[pre + "mlp.up_proj.weight"].T)
        x = x + m @ p[pre + "mlp.down_proj.weight"].T
    x = rms(x, p["model.norm.weight"], eps)
    head = p["lm_head.weight"]
    if cfg.get("norm_head", cfg["vocab_size"] == 125696):
        head = F.normalize(head)
    return x @ head.T


def main():
    model_dir, input_path = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    assert cfg["model_type"] == "baichuan", cfg["model_type"]
    params = read_weights(model_dir)
    seqs = json.load(open(input_path))["sequences"]
    nll, count, zsum, last = 0.0, 0, 0.0, None
    for ids in seqs:
        logits = forward(params, cfg, ids)
        shift = logits[:-1]
        nll += float(F.cross_entropy(shift, torch.tensor(ids[1:]), reduction="sum"))
        zsum += float((shift.max(-1).values ** 2).sum())
        count += len(ids) - 1
        last = logits[-1].tolist()
    zw = cfg.get("z_loss_weight", 0.0)
    print(json.dumps({"mean_nll": nll / count, "tokens": count, "train_loss": nll / count + zw * zsum / count, "logits_last": last}))


if __name__ == "__main__":
    main()
