#!/usr/bin/env python3
"""The baseline for `crossmoe train` throughput: the same layer-local MoE or dense model written in
plain PyTorch eager (Python), trained the same way (random windows of train.bin, AdamW, warmup +
cosine, clipping, aux loss, bf16 on CUDA), printing tokens/s and model FLOPs utilisation on the same
line format; with --compile, the same model through torch.compile.

    python3 bench/train_eager.py MODEL_CONFIG_JSON DATA_DIR --steps N --batch B --seq-len T [--peak-tflops P]
        [--init MODEL_DIR] [--windows FILE] [--log-every N] [--compile]

MODEL_CONFIG_JSON is the config.json that `crossmoe init` writes (layer-local layout: per-head q/k
norm, softmax router with renormalised top-k, no shared experts; or the dense layout: one SwiGLU FFN
of intermediate_size per layer). Expert dispatch is the usual eager way: sort the (token, expert)
pairs by expert and run each expert on its slice.

Like for like with `crossmoe train`: --init loads the model.safetensors that `crossmoe init` wrote
(the run's --init), and --windows reads where each step's windows start, as
`crossmoe train --print-windows` lists them for the same --data, --steps, --batch, --seq-len and
--seed; both then train the same weights on the same data, and --log-every prints the losses to
hold against crossmoe's log.csv.
"""
import argparse, json, math, struct, time
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


def causal_attention(q, k, v):
    if hasattr(F, "scaled_dot_product_attention"):  # PyTorch 2
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    # PyTorch 1.13 (Debian 12's python3-torch), to check the like-for-like run on a CPU.
    T = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


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
        self.E = c.get("n_routed_experts", 0)
        if self.E:
            self.K = c["num_experts_per_tok"]
            self.router = torch.nn.Linear(d, self.E, bias=False)
            self.experts = torch.nn.ModuleList(swiglu_params(d, c["moe_intermediate_size"]) for _ in range(self.E))
        else:
            self.mlp = swiglu_params(d, c["intermediate_size"])

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
        out = causal_attention(q.to(v.dtype), k.to(v.dtype), v)
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
        u = self.post_norm(x).reshape(B * T, d)
        y, aux = self.moe(u) if self.E else (swiglu(self.mlp, u).float(), 0.0)
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


# Hugging Face names (as crossmoe writes them) -> this module's parameter names.
HF_NAMES = [("model.embed_tokens.", "embed."), ("model.norm.", "norm."), ("model.layers.", "layers."),
            (".input_layernorm.", ".input_norm."), (".post_attention_layernorm.", ".post_norm."),
            (".self_attn.q_proj.", ".q."), (".self_attn.k_proj.", ".k."), (".self_attn.v_proj.", ".v."),
            (".self_attn.o_proj.", ".o."), (".self_attn.q_norm.", ".q_norm."), (".self_attn.k_norm.", ".k_norm."),
            (".mlp.gate.", ".router."), (".mlp.experts.", ".experts."), ("_proj.", ".")]


def load_safetensors(path):
    """The tensors of a safetensors file (F32 or BF16) as float32 torch tensors."""
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        raw = np.frombuffer(data[begin:end], dtype={"F32": np.float32, "BF16": np.uint16}[t["dtype"]])
        if t["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        out[name] = torch.from_numpy(raw.copy()).reshape(t["shape"])
    return out


def load_init(model, model_dir):
    state = {}
    for name, tensor in load_safetensors(f"{model_dir}/model.safetensors").items():
        for hf, ours in HF_NAMES:
            name = name.replace(hf, ours)
        state[name] = tensor
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)


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
    ap.add_argument("--init", help="crossmoe model directory whose weights to start from")
    ap.add_argument("--windows", help="window starts per step (crossmoe train --print-windows)")
    ap.add_argument("--log-every", type=int, default=0, help="print the loss every N steps (0: only at the end)")
    ap.add_argument("--compile", action="store_true", help="train the model through torch.compile")
    a = ap.parse_args()
    c = json.load(open(a.config))
    assert c.get("cross_layer_mode", "local") == "local" and c.get("scoring_func", "softmax") == "softmax"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = Model(c)
    if a.init:
        load_init(model, a.init)
    model = model.to(dev)
    step_model = torch.compile(model) if a.compile else model
    windows = [[int(s) for s in line.split()] for line in open(a.windows)] if a.windows else None
    assert windows is None or len(windows) >= a.steps, f"{a.windows}: fewer lines than --steps"
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
        starts = windows[step] if windows else torch.randint(0, len(tokens) - a.seq_len - 1, (a.batch,), generator=gen).tolist()
        win = torch.stack([tokens[s:s + a.seq_len + 1] for s in starts]).to(dev)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            logits, aux = step_model(win[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), win[:, 1:].reshape(-1))
        (loss + a.aux_loss * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if a.log_every and (step + 1) % a.log_every == 0:
            print(f"step {step + 1} loss {loss_value:.6f}")
        if step >= a.skip:
            timed_tokens += a.batch * a.seq_len
    if dev == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tps = timed_tokens / seconds
    # Model FLOPs per token: 6 x (active non-embedding parameters + lm_head) + attention scores.
    d, L, hd = c["hidden_size"], c["num_hidden_layers"], c["head_dim"]
    attn_params = d * hd * (2 * c["num_attention_heads"] + 2 * c["num_key_value_heads"])
    if c.get("n_routed_experts", 0):
        ffn = c["num_experts_per_tok"] * 3 * d * c["moe_intermediate_size"] + d * c["n_routed_experts"]
    else:
        ffn = 3 * d * c["intermediate_size"]
    active = L * (attn_params + ffn) + d * c["vocab_size"]
    flops = 6 * active + 6 * L * c["num_attention_heads"] * hd * a.seq_len  # causal QK^T and PV, fwd+bwd
    mfu = f"  MFU {100 * tps * flops / (a.peak_tflops * 1e12):.1f}%" if a.peak_tflops else ""
    print(f"{'compiled' if a.compile else 'eager':8} loss {loss_value:.4f}  {tps:10.0f} tokens/s{mfu}")


if __name__ == "__main__":
    main()
