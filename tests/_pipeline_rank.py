"""One rank of tests/test_pipeline.py (run by torchrun): loads its stage of the checkpoint, runs the
calls of ``calls()`` through the pipeline and writes its results and held bytes (safetensors + JSON)."""

import json
import os
import sys

import torch
from safetensors.torch import save_file

import fxvene as pv
from fxvene.sweeps.pipeline import held_bytes, pipeline_intervenable


def inputs(seed, b=2, n=6, vocab=50):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(0, vocab, (b, n), generator=g), "attention_mask": torch.ones(b, n, dtype=int)}


def config(pv_mod):
    """Sites in the first block, at the cut after block 1 (k=2), in the last block, and a Collect."""
    v = pv_mod.VanillaIntervention
    return pv_mod.IntervenableConfig(
        [
            {"layer": 0, "component": "block_output", "intervention_type": v},
            {"layer": 1, "component": "block_output", "intervention_type": v},
            {"layer": 3, "component": "mlp_output", "intervention_type": v},
            {"layer": 2, "component": "block_output", "intervention_type": pv_mod.CollectIntervention},
        ]
    )


def calls():
    """``(name, kwargs)`` of each call: source runs and per-row positions."""
    a, b = [[1], [4]], [[5], [2]]  # one position per row (pyvene 0.1.8 collects several in another layout)
    return [
        (
            "one",
            dict(sources=[inputs(1), inputs(2), inputs(1), None], unit_locations={"sources->base": ([a] * 4, [a] * 4)}),
        ),
        (
            "two",
            dict(sources=[inputs(3), inputs(3), inputs(4), None], unit_locations={"sources->base": ([b] * 4, [b] * 4)}),
        ),
    ]


def main(path, ks, out, tracer):
    """``ks``: stage counts, comma-separated (one model per count, in this order on every rank)."""
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    for k in (int(x) for x in ks.split(",")):
        results = {}
        m = pipeline_intervenable(config(pv), path, k, load_kwargs={"attn_implementation": "eager"}, tracer=tracer)
        for name, args in calls():
            (_, col), o = m(inputs(0), **args)
            results[f"{name}.logits"] = o.logits.contiguous()
            for j, t in enumerate(col):
                results[f"{name}.collect{j}"] = t.contiguous()
        save_file(results, os.path.join(out, f"k{k}.rank{rank}.safetensors"))
        info = {"held": held_bytes(m.model), "stage": m.pipe_stage, "stages": [list(s) for s in m.pipe_stages]}
        info["ranks"] = m.pipe_ranks
        with open(os.path.join(out, f"k{k}.rank{rank}.json"), "w") as f:
            json.dump(info, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
