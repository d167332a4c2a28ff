"""Measure held-out-style H100 cases and write them as archsim validation cases.

Run on an H100 SXM (PyTorch >= 2.5 with CUDA; nothing else needed):

    python validation/measure_h100.py --out validation/measured/h100_steps.json [--quick]

then ``archsim validate`` picks the file up (validation/measured/*.json). What it times:

* llama3-8b whole-model decode steps, batch 1..512 x context 512..8192, replayed as CUDA
  graphs (``kind: model, phase: decode``);
* llama3-8b whole-model prefills, 512..8192 tokens, eager (``phase: prefill``);
* one llama3-70b decoder layer in decode, batch 1..2048 (CUDA graphs), and in prefill,
  16..16384 tokens (eager) -- the decode-knee curve of docs/validation.md.

The model code mirrors what archsim lowers with the default h100-like software stack
(arch_configs/h100-like.yaml, ``kernel.*_kernels``): F.rms_norm (one kernel), fused qkv and
fused gate_up GEMMs (torch.matmul -> cuBLAS), RoPE over the q and k heads together (cast,
complex multiply, cast back: three kernels), the new K/V written into a static cache with
index_copy_ (two kernels), attention by F.scaled_dot_product_attention (flash backend, GQA
via enable_gqa; decode q_len = 1), o_proj, residual add, silu(gate) * up on chunks of the
gate_up output (two kernels), down_proj, residual add; final norm and the lm_head on the
last position only. Weights are random bf16 (timing does not depend on values).

Cold L2: decode graphs cycle through enough distinct copies of each layer's weights that
nothing stays in the 50 MB L2 between layers -- as in a real model, every layer has its own
weights, so a whole model needs no extra copies; a single 70B layer is replicated
``ceil(200 MB / layer bytes)`` times and the graph runs through the copies in turn.
Timing: CUDA events around ``graph.replay()`` (decode) or around the eager forward
(prefill), median of ``--iters`` runs after warm-up.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

MODELS = {
    # hidden, layers, heads, kv_heads, head_dim, ffn, vocab (Llama 3 configs)
    "llama3-8b": (4096, 32, 32, 8, 128, 14336, 128256),
    "llama3-70b": (8192, 80, 64, 8, 128, 28672, 128256),
}
EPS = 1e-5


def _torch():
    import torch  # imported lazily: this file must import without torch

    return torch


class Layer:
    """One Llama decoder layer's weights: [in, out] row-major so x @ W is torch.matmul."""

    def __init__(self, cfg, device, dtype):
        torch = _torch()
        h, _, nh, nkv, d, f, _ = cfg
        qkv = (nh + 2 * nkv) * d

        def w(i, o):
            return torch.randn(i, o, device=device, dtype=dtype) / math.sqrt(i)

        self.attn_norm = torch.ones(h, device=device, dtype=dtype)
        self.ffn_norm = torch.ones(h, device=device, dtype=dtype)
        self.wqkv, self.wo = w(h, qkv), w(nh * d, h)
        self.wgu, self.wdown = w(h, 2 * f), w(f, h)


def rope(x, freqs):
    """x [b, s, heads, d] rotated by complex freqs [s, d/2] (one kernel chain per tensor)."""
    torch = _torch()
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs[None, :, None, :]).flatten(3).type_as(x)


def layer_forward(L, x, cache_k, cache_v, pos, freqs, cfg):
    """x [b, s, h]; cache_[kv] [b, kv_heads, max_len, d]; pos [s] positions written."""
    torch = _torch()
    F = torch.nn.functional
    h, _, nh, nkv, d, f, _ = cfg
    b, s, _ = x.shape
    y = F.rms_norm(x, (h,), L.attn_norm, EPS)
    qkv = torch.matmul(y, L.wqkv)
    # RoPE once over the q and k heads together: 3 kernels (cast to fp32, complex multiply,
    # cast back) -- kernel.rope_kernels in arch_configs/h100-like.yaml
    qk = rope(qkv[..., : (nh + nkv) * d].view(b, s, nh + nkv, d), freqs)
    q, k = qk[:, :, :nh], qk[:, :, nh:]
    v = qkv[..., (nh + nkv) * d :]
    cache_k.index_copy_(2, pos, k.transpose(1, 2))
    cache_v.index_copy_(2, pos, v.view(b, s, nkv, d).transpose(1, 2))
    n = cache_k.shape[2]  # decode: ctx + 1 slots, all filled; prefill: exactly the prompt
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        cache_k[:, :, :n],
        cache_v[:, :, :n],
        is_causal=s > 1,
        enable_gqa=True,
    )
    x = x + torch.matmul(o.transpose(1, 2).reshape(b, s, nh * d), L.wo)
    y = F.rms_norm(x, (h,), L.ffn_norm, EPS)
    gate, up = torch.matmul(y, L.wgu).chunk(2, dim=-1)
    return x + torch.matmul(F.silu(gate) * up, L.wdown)


def _freqs(s, d, start, device):
    torch = _torch()
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=device).float() / d))
    t = torch.arange(start, start + s, device=device).float()
    return torch.polar(torch.ones(s, d // 2, device=device), torch.outer(t, inv))


def _time_events(fn, iters, warmup=3):
    torch = _torch()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) / 1e3)
    return statistics.median(out)


def measure(model, phase, batch, length, layers, iters, device="cuda"):
    """Seconds of one step. decode: ``length`` cached tokens, CUDA graph; prefill:
    ``length`` prompt tokens per sequence, eager. ``layers``: None (whole model) or N."""
    torch = _torch()
    dtype = torch.bfloat16
    cfg = MODELS[model]
    h, n_layers, nh, nkv, d, f, vocab = cfg
    whole = layers is None
    n = n_layers if whole else layers
    layer_bytes = 2 * (h * (nh + 2 * nkv) * d + nh * d * h + 3 * h * f)
    copies = n if whole else max(n, math.ceil(200e6 / layer_bytes))  # cold L2
    Ls = [Layer(cfg, device, dtype) for _ in range(copies)]
    max_len = length + 1 if phase == "decode" else length
    kv = [
        (
            torch.zeros(batch, nkv, max_len, d, device=device, dtype=dtype),
            torch.zeros(batch, nkv, max_len, d, device=device, dtype=dtype),
        )
        for _ in range(n)
    ]
    embed = torch.randn(vocab, h, device=device, dtype=dtype) if whole else None
    lm_head = torch.randn(h, vocab, device=device, dtype=dtype) / math.sqrt(h) if whole else None
    final_norm = torch.ones(h, device=device, dtype=dtype)
    s = 1 if phase == "decode" else length
    start = length if phase == "decode" else 0
    pos = torch.arange(start, start + s, device=device)
    freqs = _freqs(s, d, start, device)
    tokens = torch.randint(0, vocab, (batch, s), device=device)
    x0 = torch.randn(batch, s, h, device=device, dtype=dtype)
    turn = {"i": 0}

    def step():
        x = embed[tokens] if whole else x0
        base = turn["i"] * n % copies
        for j in range(n):
            x = layer_forward(Ls[(base + j) % copies], x, *kv[j], pos, freqs, cfg)
        if whole:
            y = torch.nn.functional.rms_norm(x[:, -1], (h,), final_norm, EPS)
            x = torch.matmul(y, lm_head)
        return x

    if phase == "prefill":
        with torch.no_grad():
            return _time_events(step, iters)
    # decode: capture one graph per rotation of the weight copies, replay them in turn
    rotations = max(1, copies // n)
    graphs = []
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for r in range(rotations):
                turn["i"] = r
                step()  # warm up (cuBLAS workspaces, SDPA selection)
        torch.cuda.current_stream().wait_stream(stream)
        for r in range(rotations):
            turn["i"] = r
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                step()
            graphs.append(g)
    k = {"i": 0}

    def replay():
        graphs[k["i"] % rotations].replay()
        k["i"] += 1

    return _time_events(replay, iters)


def plan(quick: bool):
    """(id, params) of every case to measure."""
    ctxs = (512, 2048, 8192) if quick else (512, 1024, 2048, 4096, 8192)
    b8 = (1, 16, 128, 512) if quick else (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    for b in b8:
        for c in ctxs:
            yield f"8b_decode/b{b}/ctx{c}", dict(model="llama3-8b", phase="decode", batch=b, ctx=c)
    for s in (512, 1024, 2048, 4096, 8192):
        yield f"8b_prefill/s{s}", dict(model="llama3-8b", phase="prefill", batch=1, seq=s)
    b70 = (1, 16, 64, 256, 1024) if quick else (1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512,
                                                 768, 1024, 1536, 2048)  # fmt: skip
    for b in b70:
        yield (
            f"70b_layer_decode/b{b}",
            dict(model="llama3-70b", phase="decode", batch=b, ctx=1024, layers=1),
        )
    for s in (16, 64, 256, 1024, 4096, 16384):
        yield (
            f"70b_layer_prefill/s{s}",
            dict(model="llama3-70b", phase="prefill", batch=1, seq=s, layers=1),
        )


def _save(path, doc) -> None:
    """Write ``doc`` atomically (a killed run leaves the previous complete file)."""
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="validation/measured/h100_steps.json")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="a subset that runs in ~5 minutes")
    ap.add_argument("--only", default="", help="only case ids starting with this")
    args = ap.parse_args(argv)
    torch = _torch()
    if not torch.cuda.is_available():
        print("measure_h100.py: no CUDA device", file=sys.stderr)
        return 2
    props = torch.cuda.get_device_properties(0)
    doc = {
        "source": f"[M] validation/measure_h100.py on {props.name} ({props.multi_processor_count}"
        f" SMs), PyTorch {torch.__version__}, CUDA {torch.version.cuda}",
        "cases": [],
    }
    try:  # resume: keep the cases an earlier (killed) run already measured
        with open(args.out) as fh:
            doc["cases"] = json.load(fh)["cases"]
    except (OSError, ValueError, KeyError):
        pass
    done = {c["id"] for c in doc["cases"]}
    for cid, p in plan(args.quick):
        if cid in done or (args.only and not cid.startswith(args.only)):
            continue
        t0 = time.time()
        length = p.get("ctx") if p["phase"] == "decode" else p["seq"]
        try:
            secs = measure(p["model"], p["phase"], p["batch"], length, p.get("layers"), args.iters)
        except torch.cuda.OutOfMemoryError:
            print(f"{cid}: out of memory, skipped", file=sys.stderr)
            torch.cuda.empty_cache()
            continue
        except RuntimeError as exc:  # e.g. no SDPA kernel for a shape: skip, keep the rest
            print(f"{cid}: failed ({str(exc).splitlines()[0]}), skipped", file=sys.stderr)
            torch.cuda.empty_cache()
            continue
        doc["cases"].append(
            {
                "id": cid,
                "group": cid.split("/")[0],
                "kind": "model",
                "timing": "graph" if p["phase"] == "decode" else "eager",
                "params": {**p, "chips": 1, "precision": "bf16"},
                "measured_s": secs,
                "tolerance": 0.10,
                "scored": True,
            }
        )
        _save(args.out, doc)  # after every case: a time limit never loses finished work
        print(f"{cid}: {secs * 1e3:.3f} ms ({time.time() - t0:.0f} s)", file=sys.stderr)
        torch.cuda.empty_cache()
    print(f"{len(doc['cases'])} cases in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
