#!/usr/bin/env python3
"""The baseline for `crossmoe train` throughput: the same layer-local MoE written in plain PyTorch
eager (Python), trained the same way (random windows of train.bin, AdamW, warmup + cosine, clipping,
aux loss, bf16 on CUDA), printing tokens/s and model FLOPs utilisation on the same line format.

    python3 bench/train_eager.py MODEL_CONFIG_JSON DATA_DIR --steps N --batch B --seq-len T [--peak-tflops P]

MODEL_CONFIG_JSON is the config.json that `crossmoe init` writes (layer-local layout: per-head q/k
norm, softmax router with renormalised top-k, no shared experts). Expert dispatch is the usual eager
way: sort the (token, expert) pairs by expert and run each expert on its slice.
"""
import argparse, json, math, time
import numpy as np
import torch
import torch.nn.functional as F


class RMSNorm(torch.nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def swiglu_params(d, width):
    return torch.nn.ModuleDict({n: torch.nn.Linear(a, b, bias=False) for n, a, b in
                                (("gate", d, width), ("up", d, width), ("down", width, d))})


def swiglu(p, x):
    return p["down"](F.silu(p["gate"](x)) * p["up"](x))


class Layer(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        d, hd = c["hidden_size"], c["head_dim"]
        self.hq, self.hkv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], hd
        self.input_norm = RMSNorm(d, c["rms_norm_eps"])
        self.post_norm = RMSNorm(d, c["rms_norm_eps"])
        self.q = torch.nn.Linear(d, self.hq * hd, bias=False)
        self.k = torch.nn.Linear(d, self.hkv * hd, bias=False)
        self.v = torch.nn.Linear(d, self.hkv * hd, bias=False)
        self.o = torch.nn.Linear(self.hq * hd, d, bias=False)
        self.q_norm = RMSNorm(hd, c["rms_norm_eps"])
        self.k_norm = RMSNorm(hd, c["rms_norm_eps"])
        self.E, self.K = c["n_routed_experts"], c["num_experts_per_tok"]
        self.router = torch.nn.Linear(d, self.E, bias=False)
        self.experts = torch.nn.ModuleList(swiglu_params(d, c["moe_intermediate_size"]) for _ in range(self.E))

    def attention(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_norm(self.q(x).view(B, T, self.hq, self.hd))
        k = self.k_norm(self.k(x).view(B, T, self.hkv, self.hd))
        v = self.v(x).view(B, T, self.hkv, self.hd)

        def rope(t):
            a, b = t[..., : self.hd // 2], t[..., self.hd // 2:]
            return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

        q, k, v = rope(q).transpose(1, 2), rope(k).transpose(1, 2), v.transpose(1, 2)
        k = k.repeat_interleave(self.hq // self.hkv, 1)
        v = v.repeat_interleave(self.hq // self.hkv, 1)
        out = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v, is_causal=True)
        return self.o(out.transpose(1, 2).reshape(B, T, -1))

    def moe(self, u):
        N = u.shape[0]
        prob = self.router(u).float().softmax(-1)
        w, top = prob.topk(self.K, -1)
        w = w / w.sum(-1, keepdim=True)
        flat = top.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.E)
        token = order // self.K
        rows, row_w = u[token], w.reshape(-1)[order].unsqueeze(1)
        outs, begin = [], 0
        for e, n in enumerate(counts.tolist()):
            if n:
                outs.append(swiglu(self.experts[e], rows[begin:begin + n]).float() * row_w[begin:begin + n])
            begin += n
        out = torch.zeros_like(u, dtype=torch.float32).index_add(0, token, torch.cat(outs))
        aux = self.E * ((counts.float() / (N * self.K)) * prob.mean(0)).sum()
        return out, aux

    def forward(self, x, cos, sin):
        x = x + self.attention(self.input_norm(x), cos, sin).float()
        B, T, d = x.shape
        y, aux = self.moe(self.post_norm(x).reshape(B * T, d))
        return x + y.view(B, T, d), aux


class Model(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed = torch.nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = torch.nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.lm_head = torch.nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                torch.nn.init.normal_(p, std=0.02)

    def forward(self, tokens):
        T, hd = tokens.shape[1], self.c["head_dim"]
        inv = 1.0 / (self.c.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, device=tokens.device).float() / hd))
        ang = torch.arange(T, device=tokens.device).float()[:, None] * inv[None]
        cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        x, aux = self.embed(tokens).float(), 0.0
        for layer in self.layers:
            x, a = layer(x, cos, sin)
            aux = aux + a
        return self.lm_head(self.norm(x)).float(), aux / len(self.layers)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config"), ap.add_argument("data")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--aux-loss", type=float, default=0.01)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the timing")
    ap.add_argument("--peak-tflops", type=float, default=0.0)
    a = ap.parse_args()
    c = json.load(open(a.config))
    assert c.get("cross_layer_mode", "local") == "local" and c.get("scoring_func", "softmax") == "softmax"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = Model(c).to(dev)
    tokens = torch.from_numpy(np.fromfile(f"{a.data}/train.bin", dtype=np.uint32).astype(np.int64))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(0)
    t0, timed_tokens = None, 0
    for step in range(a.steps):
        if step == a.skip:
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        lr = a.lr * min(1.0, (step + 1) / a.warmup) if step < a.warmup else \
            a.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * (step - a.warmup) / max(1, a.steps - a.warmup))))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(tokens) - a.seq_len - 1, (a.batch,), generator=gen)
        win = torch.stack([tokens[s:s + a.seq_len + 1] for s in starts.tolist()]).to(dev)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            logits, aux = model(win[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), win[:, 1:].reshape(-1))
        (loss + a.aux_loss * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if step >= a.skip:
            timed_tokens += a.batch * a.seq_len
    if dev == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tps = timed_tokens / seconds
    # Model FLOPs per token: 6 x (active non-embedding parameters + lm_head) + attention scores.
    d, L, hd = c["hidden_size"], c["num_hidden_layers"], c["head_dim"]
    attn_params = d * hd * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
    expert = 3 * d * c["moe_intermediate_size"]
    active = L * (attn_params + c["num_experts_per_tok"] * expert + d * c["n_routed_experts"]) + d * c["vocab_size"]
    flops = 6 * active + 6 * L * c["num_attention_heads"] * hd * a.seq_len  # causal QK^T and PV, fwd+bwd
    mfu = f"  MFU {100 * tps * flops / (a.peak_tflops * 1e12):.1f}%" if a.peak_tflops else ""
    print(f"eager    loss {loss_value:.4f}  {tps:10.0f} tokens/s{mfu}")


if __name__ == "__main__":
    main()
