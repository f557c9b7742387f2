"""Generation with a steering intervention: fxvene vs HF generate + forward hook vs pyvene.

GPT-2-small shape (12 layers, width 768, random weights), 64 new tokens (greedy, no early stop),
AdditionIntervention at one layer's mlp_output with a steering vector, pyvene's default semantics
(every decode step at the new token). Batch 1 and 8. All numbers come from this one run; ratios are
against HF generate with the equivalent forward hook.

    python benchmarks/generate.py            # full table
    python benchmarks/generate.py --quick    # fewer repeats, smaller model
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel


def build(quick):
    torch.manual_seed(0)
    if quick:
        cfg = GPT2Config(n_layer=4, n_embd=256, n_head=4)
    else:
        cfg = GPT2Config()  # 12 layers, 768 wide, vocab 50257
    return GPT2LMHeadModel(cfg).eval()


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timeit(fns, repeats, device="cpu"):
    """Median seconds per call of each function; the calls are interleaved (round robin) so that a
    change in machine load hits every method alike."""
    for fn in fns.values():
        fn()  # warm-up
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--batches", type=str, default="1,8")
    ap.add_argument("--no-pyvene", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", type=str, default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 5)

    import fxvene as fv

    dev = torch.device(args.device)
    model = build(args.quick).to(dev)
    layer = min(args.layer, model.config.n_layer - 1)
    d = model.config.n_embd
    vec = (torch.randn(d) * 0.5).to(dev)
    kw = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    import transformers

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {name}, threads {torch.get_num_threads()}, GPT-2 {model.config.n_layer}x{d}, "
        f"layer {layer} mlp_output Addition, {args.new_tokens} new tokens, prompt {args.prompt_len}"
    )

    fim = fv.IntervenableModel(
        {"layer": layer, "component": "mlp_output", "intervention_type": fv.AdditionIntervention}, model
    )
    pim = None
    if not args.no_pyvene:
        try:
            import pyvene as pv

            pim = pv.IntervenableModel(
                {"layer": layer, "component": "mlp_output", "intervention_type": pv.AdditionIntervention}, model
            )
        except Exception as e:  # noqa: BLE001
            print(f"pyvene unavailable: {type(e).__name__}: {e}")

    mlp = model.transformer.h[layer].mlp

    def hf_hooked(base):
        calls = [0]

        def hook(mod, a, out):
            calls[0] += 1
            if calls[0] > 1:  # decode forwards only (pyvene's default)
                return out + vec
            return None

        h = mlp.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return model.generate(**base, **kw)
        finally:
            h.remove()

    g = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    base1 = {"input_ids": torch.randint(0, model.config.vocab_size, (1, args.prompt_len), generator=g).to(dev)}
    fim.generate(base1, source_representations=vec, **dict(kw, max_new_tokens=2))
    print(f"one-time: tracing the prefill + decode graphs and first call {time.perf_counter() - t0:.1f} s")

    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        ids = torch.randint(0, model.config.vocab_size, (b, args.prompt_len), generator=g)
        mask = torch.ones_like(ids)
        if b > 1:
            mask[1:, : args.prompt_len // 4] = 0  # left padding on some rows
        ids, mask = ids.to(dev), mask.to(dev)
        base = {"input_ids": ids, "attention_mask": mask}
        ref = hf_hooked(base)
        got = fim.generate(base, source_representations=vec, **kw)[1]
        same = torch.equal(ref, got)
        fns = {
            "plain": lambda: model.generate(**base, **kw),
            "hf": lambda: hf_hooked(base),
            "fx": lambda: fim.generate(base, source_representations=vec, **kw),
        }
        if pim is not None:
            fns["pv"] = lambda: pim.generate(base, source_representations=vec, **kw)
        t = timeit(fns, repeats, dev)
        t_plain, t_hf, t_fx, t_pv = t["plain"], t["hf"], t["fx"], t.get("pv")
        rows.append((b, t_plain, t_hf, t_fx, t_pv, same))

    print()
    hdr = f"{'batch':>5} | {'HF plain':>9} | {'HF+hook':>9} | {'fxvene':>9} | {'pyvene':>9} | {'fx/HF+hook':>10} | {'pyvene/fx':>9} | tokens = HF+hook"
    print(hdr)
    print("-" * len(hdr))
    for b, tp, th, tf, tv, same in rows:
        pv_s = f"{tv:9.3f}" if tv is not None else f"{'-':>9}"
        pv_r = f"{tv / tf:9.2f}" if tv is not None else f"{'-':>9}"
        print(f"{b:>5} | {tp:9.3f} | {th:9.3f} | {tf:9.3f} | {pv_s} | {tf / th:10.3f} | {pv_r} | {same}")
    print(f"(seconds per generate call, median of {repeats} interleaved runs; bar: fx/HF+hook <= 1.10, pyvene/fx > 1)")


if __name__ == "__main__":
    main()
