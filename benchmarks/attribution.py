"""Attribution patching against the exact patching sweep on the shipped demo model.

Head-level grid (``head_attention_value_output``: every layer x position x head), logit difference
of two tokens at the last position, for a few prompt pairs. For each pair it reports:

* the cost of the estimate: 2 forwards + 1 backward (what ``pv.attribution_patching`` runs), its wall
  time, and that time in units of one plain forward of the model (F);
* the cost of the exact sweep: one row per cell (``pv.patching_sweep``, batched, causal prefix), its
  wall time and that time in F;
* how well the estimate ranks the cells: Spearman (rank) and Pearson correlation of estimated and
  exact effects over all cells, and how many of the exact top-10 cells (by |effect|) the estimate's
  top-10 contains;
* ``exact_top_k=10``: the estimate plus the exact re-run of its 10 largest cells.

Times are the best of ``--repeat`` runs after one warm-up call (tracing and the KV-cache export are
one-time costs, not counted). Run on a quiet machine: ``python benchmarks/attribution.py``.
"""

import argparse
import time

import numpy as np
import torch

import fxvene as pv

PAIRS = [
    (
        "John and Mary went to the store. John gave a drink to",
        "John and Mary went to the store. Mary gave a drink to",
        " Mary",
        " John",
    ),
    ("The Colosseum is in the city of", "The Louvre is in the city of", " Paris", " Rome"),
    (
        "When Tom and Emma went to the park, Emma gave a ball to",
        "When Tom and Emma went to the park, Tom gave a ball to",
        " Tom",
        " Emma",
    ),
]


def ranks(x):
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x))
    # ties share their mean rank
    vals, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    if len(vals) < len(x):
        sums = np.zeros(len(vals))
        np.add.at(sums, inv, r)
        r = (sums / counts)[inv]
    return r


def spearman(a, b):
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def best(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--component", default="head_attention_value_output")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pv.set_verbosity(0)
    model, tok = pv.load_demo()
    comp = args.component
    print(
        f"demo model: {model.config.n_layer} layers x {model.config.n_head} heads, width {model.config.n_embd}; "
        f"component {comp}; torch {torch.__version__}, {args.threads} threads; best of {args.repeat}"
    )
    rows = []
    for base_text, source_text, good, bad in PAIRS:
        base = tok(base_text, return_tensors="pt")
        source = tok(source_text, return_tensors="pt")
        toks = [tok.encode(good)[0], tok.encode(bad)[0]]

        def plain():
            with torch.no_grad():
                return model(**base).logits

        t_fwd, _ = best(plain, args.repeat)
        t_est, est = best(lambda: pv.attribution_patching(model, base, source, comp, tokens=toks), args.repeat)
        t_top, _ = best(
            lambda: pv.attribution_patching(model, base, source, comp, tokens=toks, exact_top_k=10, progress=False),
            args.repeat,
        )
        t_ex, sw = best(lambda: pv.patching_sweep(model, base, source, comp, tokens=toks, progress=False), args.repeat)
        exact = ((sw.values[..., 0] - sw.values[..., 1]) - (sw.base[:, 0] - sw.base[:, 1])).flatten().double().numpy()
        e = est.effects[..., 0].flatten().double().numpy()
        cells = e.size
        top_ex = set(np.argsort(-np.abs(exact))[:10].tolist())
        top_est = set(np.argsort(-np.abs(e))[:10].tolist())
        rows.append(
            dict(
                prompt=base_text,
                cells=cells,
                t_fwd=t_fwd,
                t_est=t_est,
                t_top=t_top,
                t_ex=t_ex,
                rho=spearman(e, exact),
                r=float(np.corrcoef(e, exact)[0, 1]),
                top=len(top_ex & top_est),
            )
        )
    print()
    print(
        "| base prompt | cells | estimate: forwards | estimate | exact sweep: rows | exact sweep | estimate + exact top-10 "
        "| Spearman | Pearson | exact top-10 in estimate's top-10 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['prompt']} | {r['cells']} | 2 + 1 backward | {r['t_est'] * 1e3:.1f} ms ({r['t_est'] / r['t_fwd']:.1f} F) "
            f"| {r['cells']} | {r['t_ex'] * 1e3:.1f} ms ({r['t_ex'] / r['t_fwd']:.1f} F) | {r['t_top'] * 1e3:.1f} ms "
            f"| {r['rho']:.3f} | {r['r']:.3f} | {r['top']}/10 |"
        )
    print(
        "\nF = one plain forward of the base prompt "
        + ", ".join(f"{r['t_fwd'] * 1e3:.2f} ms" for r in rows)
        + " (per row above)."
    )


if __name__ == "__main__":
    main()
