"""fxvene against a hand-written GPT-2 forward (no pyvene, no hooks): the numbers come from
the weights alone, so this checks the engine independently of the oracle."""

import math

import pytest
import torch
from conftest import frontends

import fxvene as pv


def _ln(x, mod):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), mod.weight, mod.bias, mod.eps)


def gpt2_manual(model, ids, patch=None):
    """GPT-2 LM forward written out by hand. ``patch(layer, name, tensor) -> tensor`` may rewrite
    'block_output' (b, s, d) or 'head_attention_value_output' (b, h, s, dh) at each layer."""
    t = model.transformer
    b, s = ids.shape
    h = t.wte.weight[ids] + t.wpe.weight[torch.arange(s)][None]
    nh = model.config.n_head
    causal = torch.tril(torch.ones(s, s, dtype=torch.bool))
    for li, blk in enumerate(t.h):
        x = _ln(h, blk.ln_1)
        qkv = x @ blk.attn.c_attn.weight + blk.attn.c_attn.bias
        q, k, v = qkv.split(qkv.shape[-1] // 3, dim=-1)
        split = lambda z: z.view(b, s, nh, -1).permute(0, 2, 1, 3)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        att = att.masked_fill(~causal, torch.finfo(att.dtype).min).softmax(-1)
        heads = att @ v  # (b, h, s, dh)
        if patch is not None:
            heads = patch(li, "head_attention_value_output", heads)
        merged = heads.permute(0, 2, 1, 3).reshape(b, s, -1)
        h = h + merged @ blk.attn.c_proj.weight + blk.attn.c_proj.bias
        m = _ln(h, blk.ln_2) @ blk.mlp.c_fc.weight + blk.mlp.c_fc.bias
        m = blk.mlp.act(m) @ blk.mlp.c_proj.weight + blk.mlp.c_proj.bias
        h = h + m
        if patch is not None:
            h = patch(li, "block_output", h)
    return _ln(h, t.ln_f) @ model.lm_head.weight.T


def test_manual_forward_is_the_model(gpt2, batch):
    base, _ = batch
    torch.testing.assert_close(gpt2_manual(gpt2, base["input_ids"]), gpt2(**base).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frontend", frontends())
def test_block_output_patch_matches_manual(gpt2, batch, frontend):
    base, src = batch
    cache = {}

    def grab(li, name, x):
        cache[(li, name)] = x.clone()
        return x

    gpt2_manual(gpt2, src["input_ids"], grab)
    src_h = cache[(2, "block_output")]
    base_pos, src_pos = [[1, 5], [0, 3]], [[2, 2], [7, 4]]

    def put(li, name, x):
        if (li, name) == (2, "block_output"):
            x = x.clone()
            for b in range(2):
                x[b, base_pos[b]] = src_h[b, src_pos[b]]
        return x

    expected = gpt2_manual(gpt2, base["input_ids"], put)
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(layer=2, component="block_output", intervention_type=pv.VanillaIntervention)
        ]
    )
    im = pv.IntervenableModel(cfg, gpt2, tracer=frontend)
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": ([src_pos], [base_pos])})
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.logits, gpt2(**base).logits)


@pytest.mark.parametrize("frontend", frontends())
def test_head_attention_value_output_patch_matches_manual(gpt2, batch, frontend):
    base, src = batch
    cache = {}

    def grab(li, name, x):
        cache[(li, name)] = x.clone()
        return x

    gpt2_manual(gpt2, src["input_ids"], grab)
    src_heads = cache[(1, "head_attention_value_output")]
    heads, pos = [[3, 1], [0, 2]], [[2, 6], [7, 2]]

    def put(li, name, x):
        if (li, name) == (1, "head_attention_value_output"):
            x = x.clone()
            for b in range(2):
                for hh in heads[b]:
                    for p in pos[b]:
                        x[b, hh, p] = src_heads[b, hh, p]
        return x

    expected = gpt2_manual(gpt2, base["input_ids"], put)
    cfg = pv.IntervenableConfig(
        representations=[
            pv.RepresentationConfig(
                layer=1, component="head_attention_value_output", unit="h.pos", intervention_type=pv.VanillaIntervention
            )
        ]
    )
    im = pv.IntervenableModel(cfg, gpt2, tracer=frontend)
    loc = [[heads, pos]]
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": (loc, loc)})
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.logits, gpt2(**base).logits)
