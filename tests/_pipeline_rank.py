"""One rank of tests/test_pipeline.py (run by torchrun): loads its stage of the checkpoint, runs the
calls of ``calls()`` and the sweeps of ``sweeps()`` through the pipeline and writes its results and held
bytes (safetensors + JSON)."""

import contextlib
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


def sweeps(pv_mod, model, tracer):
    """A causal trace and a patching sweep of ``model`` (every rank of a pipeline calls them alike)."""
    base, src = inputs(5, b=1), inputs(6, b=1)
    kw = dict(tracer=tracer, progress=False, prefix=False)  # full-length rows, as on stages (no KV-cache export)
    ct = pv_mod.causal_trace(model, base, subject_positions=[1, 2], target_token=3, n_samples=2, window=2, **kw)
    ps = pv_mod.patching_sweep(model, base, src, components=("block_output", "mlp_output"), **kw)
    clean = torch.tensor([ct.clean_prob, ct.corrupted_prob])
    return {"ct.probs": ct.probs, "ct.clean": clean, "ps.values": ps.values, "ps.base": ps.base}


@contextlib.contextmanager
def weight_loads():
    """``[n]``: how many offloaded weights accelerate read from the checkpoint inside the block."""
    from accelerate.utils import OffloadedWeightsLoader

    real, n = OffloadedWeightsLoader.__getitem__, [0]

    def counted(self, key):
        n[0] += 1
        return real(self, key)

    OffloadedWeightsLoader.__getitem__ = counted
    try:
        yield n
    finally:
        OffloadedWeightsLoader.__getitem__ = real


def main(path, ks, out, tracer, cli_argv=None):
    """``ks``: stage counts, comma-separated (one model per count, in this order on every rank).
    ``cli_argv``: a JSON list, the arguments of an ``fxvene`` command run last (it ends the process group)."""
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
        loads = [None]
        if k == int(ks.split(",")[0]):  # the sweeps run with the first stage count only (CI time)
            with weight_loads() as loads:  # no rank reads another stage's weights (the graph is traced)
                for key, t in sweeps(pv, m.model, tracer).items():
                    results[key] = t.float().contiguous()
        with weight_loads() as whole:
            m.model(**inputs(0))  # the rank's model run whole does (the count works)
        save_file(results, os.path.join(out, f"k{k}.rank{rank}.safetensors"))
        info = {"held": held_bytes(m.model), "stage": m.pipe_stage, "stages": [list(s) for s in m.pipe_stages]}
        info["ranks"] = m.pipe_ranks
        info["loads"] = [loads[0], whole[0]]
        with open(os.path.join(out, f"k{k}.rank{rank}.json"), "w") as f:
            json.dump(info, f)

    if cli_argv:
        from fxvene.cli import app

        assert app.main(json.loads(cli_argv)) == 0


if __name__ == "__main__":
    main(*sys.argv[1:6])
