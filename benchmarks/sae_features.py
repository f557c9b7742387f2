"""SAE feature sweeps (issue 25): ``pv.feature_sweep`` / ``pv.feature_attribution`` against a per-feature loop
of HF forward hooks around the same SAE (hand-written here), one markdown table.

    python benchmarks/sae_features.py [--quick] [--threads 2] [--features 64]

GPT-2 shape with random weights (12 layers, 768 wide; ``--quick``: 6 layers, 256 wide), a random
ReLU SAE of 8 x width features at ``blocks.6.hook_resid_pre`` (``--quick``: layer 3), one 16-token
prompt, ablating ``--features`` features at 4 positions. Both sides compute the same numbers (checked).
``feature_sweep`` runs on the sweep engine (layers below the SAE's site once; with the causal prefix,
positions before a row's edited one once too); ``prefix=False`` shows the engine without the prefix.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

import fxvene as pv


def _time(fn):
    fn()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--features", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n_layer, width, layer = (6, 256, 3) if a.quick else (12, 768, 6)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_embd=width, n_head=width // 64, vocab_size=50257)
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg).eval()
    d_sae = 8 * width
    w = {
        "W_enc": torch.randn(width, d_sae) / width**0.5,
        "W_dec": torch.randn(d_sae, width) / d_sae**0.5,
        "b_enc": torch.zeros(d_sae) - 0.5,
        "b_dec": torch.zeros(width),
    }
    d = tempfile.mkdtemp()
    save_file(w, os.path.join(d, "sae_weights.safetensors"))
    meta = {"hook_name": f"blocks.{layer}.hook_resid_pre", "model_from_pretrained_kwargs": {}}
    with open(os.path.join(d, "cfg.json"), "w") as f:
        json.dump({"architecture": "standard", "d_in": width, "d_sae": d_sae, "metadata": meta}, f)
    sae = pv.load_sae(d)
    ids = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(1))
    feats, poss, target = list(range(a.features)), [3, 7, 11, 15], 42

    def loop():
        out = torch.empty(len(feats), len(poss))
        for i, f in enumerate(feats):
            for j, p in enumerate(poss):

                def pre(mod, args, kwargs, f=f, p=p):
                    x = args[0]
                    pre_acts = torch.relu((x[:, p] - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
                    y = x.clone()
                    y[:, p] = x[:, p] - pre_acts[:, f, None] * w["W_dec"][f]
                    return (y, *args[1:]), kwargs

                h = model.transformer.h[layer].register_forward_pre_hook(pre, with_kwargs=True)
                with torch.no_grad():
                    out[i, j] = model(input_ids=ids).logits[0, -1, target]
                h.remove()
        return out

    t_loop, ref = _time(loop)
    t_sweep, got = _time(lambda: pv.feature_sweep(model, {"input_ids": ids}, sae, feats, poss, tokens=[target])[..., 0])
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
    t_full, got = _time(
        lambda: pv.feature_sweep(model, {"input_ids": ids}, sae, feats, poss, tokens=[target], prefix=False)[..., 0]
    )
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
    t_attr, _ = _time(lambda: pv.feature_attribution(model, {"input_ids": ids}, sae, target, k=10))
    rows = len(feats) * len(poss)
    print(f"| workload ({n_layer} layers, width {width}, {d_sae} features, {rows} rows) | seconds | vs loop |")
    print("|---|---|---|")
    print(f"| HF-hook loop, one forward per (feature, position) | {t_loop:.2f} | 1.0x |")
    print(f"| pv.feature_sweep (sweep engine, causal prefix) | {t_sweep:.2f} | {t_loop / t_sweep:.1f}x |")
    print(f"| pv.feature_sweep, prefix=False (full-length rows) | {t_full:.2f} | {t_loop / t_full:.1f}x |")
    print(f"| pv.feature_attribution (all {16 * d_sae} scores + exact top-10) | {t_attr:.2f} | |")


if __name__ == "__main__":
    main()
