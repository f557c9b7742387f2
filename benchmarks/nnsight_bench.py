"""nnsight baselines for benchmarks/run.py, in nnsight's fastest idiomatic form (issue 4): one trace,
a clean invoke plus one invoke whose rows carry the per-cell patches, ``logits_to_keep=1``.
Edits are vectorised per (layer, stream): one indexed assignment per module, in forward order."""

from __future__ import annotations

import torch
import transformers


def _wrap(model):
    from nnsight import LanguageModel
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        unk_token="<unk>",
        pad_token="<unk>",
    )
    return LanguageModel(model, tokenizer=tok)


STREAMS = ("attention_output", "mlp_activation", "block_output")  # forward order inside a block


def _out(env):
    # a GPT-2 block returns a tuple in transformers 4.x, a tensor in 5.x
    return env.output[0] if transformers.__version__.startswith("4.") else env.output


def causal_trace(nn_model, ids, subj, target, noise, cells, window_of, n_layers):
    """``cells``: list of (stream, layer, pos); returns p(target) per cell (one sample of ``noise``)."""
    R = len(cells)
    h = nn_model.transformer.h
    by_layer = {}
    for r, (st, l, p) in enumerate(cells):
        for ll in [l] if st == "block_output" else window_of(l):
            by_layer.setdefault((ll, st), []).append((r, p))
    by_layer = {k: (torch.tensor([r for r, _ in v]), torch.tensor([p for _, p in v])) for k, v in by_layer.items()}
    rows_ids = ids.expand(R, ids.shape[1])
    clean = {}  # filled by the clean invoke, read by the patched one
    with nn_model.trace(logits_to_keep=1) as tracer:
        barriers = {(l, st): tracer.barrier(2) for l in range(n_layers) for st in STREAMS}
        with tracer.invoke({"input_ids": ids}):
            for l in range(n_layers):
                clean[(l, "attention_output")] = h[l].attn.output[0]
                barriers[(l, "attention_output")]()
                clean[(l, "mlp_activation")] = h[l].mlp.act.output
                barriers[(l, "mlp_activation")]()
                clean[(l, "block_output")] = _out(h[l])
                barriers[(l, "block_output")]()
        with tracer.invoke({"input_ids": rows_ids}):
            emb = nn_model.transformer.drop.output
            emb[:, subj] = emb[:, subj] + noise.to(emb.dtype)
            for l in range(n_layers):
                for st in STREAMS:
                    barriers[(l, st)]()
                    rp = by_layer.get((l, st))
                    if not rp:
                        continue
                    r_idx, p_idx = rp
                    if st == "attention_output":
                        t = h[l].attn.output[0]
                    elif st == "mlp_activation":
                        t = h[l].mlp.act.output
                    else:
                        t = _out(h[l])
                    t[r_idx, p_idx] = clean[(l, st)][0, p_idx]
            probs = torch.softmax(nn_model.lm_head.output[:, -1], -1)[:, target].save()
    return probs


def patching_sweep(nn_model, base_ids, src_ids, cells, target):
    """block_output patching: row r restores the source state at (layer, pos) of cell r."""
    R = len(cells)
    h = nn_model.transformer.h
    n_layers = len(h)
    by_layer = {}
    for l in range(n_layers):
        rp = [(r, p) for r, (ll, p) in enumerate(cells) if ll == l]
        by_layer[l] = (
            torch.tensor([r for r, _ in rp], dtype=torch.long),
            torch.tensor([p for _, p in rp], dtype=torch.long),
        )
    src = {}  # filled by the clean invoke, read by the patched one
    with nn_model.trace(logits_to_keep=1) as tracer:
        barriers = [tracer.barrier(2) for _ in range(n_layers)]  # hand layer l from invoke 1 to invoke 2
        with tracer.invoke({"input_ids": src_ids}):
            for l in range(n_layers):
                src[l] = _out(h[l])
                barriers[l]()
        with tracer.invoke({"input_ids": base_ids.expand(R, base_ids.shape[1])}):
            for l in range(n_layers):
                barriers[l]()
                r_idx, p_idx = by_layer[l]
                _out(h[l])[r_idx, p_idx] = src[l][0, p_idx]
            logits = nn_model.lm_head.output[:, -1, target].save()
    return logits
