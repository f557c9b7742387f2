"""Each pass alone, on known GPT-2 and Llama graphs."""

import pytest
import torch
import torch.nn as nn
from conftest import frontends

from fxvene.graph import tracing
from fxvene.passes import locate
from fxvene.passes.rewrite import expose, insert_interventions, truncate


class AddOne(nn.Module):
    def forward(self, x, *rest):
        return x + 1.0


class Ident(nn.Module):
    def forward(self, x, *rest):
        return x


@pytest.mark.parametrize("frontend", frontends())
def test_locate_block_output_and_input(gpt2, frontend):
    gm = tracing.trace(gpt2, tracer=frontend).gm
    out1 = locate.module_output(gm, "transformer.h.1")
    in2 = locate.module_input(gm, "transformer.h.2")
    assert out1 is in2  # block 1's output is block 2's input
    # every user of block 1's output is inside block 2
    assert all("transformer.h.2" in locate.module_paths(u) for u in out1.users)
    assert tuple(out1.meta["val"].shape)[-1] == 24
    assert locate.region(gm, "transformer.h[1]") == locate.region(gm, "transformer.h.1")
    with pytest.raises(locate.LocateError, match="has no nodes"):
        locate.module_output(gm, "transformer.h.7")


@pytest.mark.parametrize("frontend", frontends())
def test_attention_probs_pattern(gpt2, frontend):
    gm = tracing.trace(gpt2, tracer=frontend).gm
    node = locate.attention_probs(gm, "transformer.h.0.attn")
    shape = tuple(node.meta["val"].shape)
    assert shape[1:] == (4, 8, 8)  # (b, heads, s, s)
    # it feeds the attention-times-values matmul (through dropout)
    seen, frontier = set(), [node]
    while frontier:
        n = frontier.pop()
        for u in n.users:
            if u not in seen:
                seen.add(u)
                frontier.append(u)
    assert any("matmul" in str(u.target) for u in seen)


@pytest.mark.parametrize("frontend", frontends())
def test_insert_rewires_output_users(gpt2, frontend):
    tg = tracing.trace(gpt2, tracer=frontend)
    gm = tg.gm
    site = locate.module_output(gm, "transformer.h.1")
    users_before = {u.name for u in site.users}
    new = insert_interventions(
        gm,
        [
            dict(
                name="iv",
                module=AddOne(),
                node=site.name,
                port="output",
                region="transformer.h.1",
                inputs=["fxv_src_0"],
            )
        ],
    )
    assert gm.graph is not new.graph  # pure: the input graph is untouched
    assert {u.name for u in site.users} == users_before
    nodes = {n.name: n for n in new.graph.nodes}
    iv = next(n for n in new.graph.nodes if n.op == "call_module" and n.target == "iv")
    assert iv.args[0].name == site.name
    assert {u.name for u in iv.users} == users_before
    assert nodes[site.name].users.keys() == {iv}
    assert "fxv_src_0" in nodes and nodes["fxv_src_0"].op == "placeholder"
    # numerically: the block's output +1 == hidden state +1 fed to the next blocks
    ids = torch.randint(0, 50, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    out = new(input_ids=ids, attention_mask=mask)[0]

    def hook(m, a, o):
        return (o[0] + 1.0,) + tuple(o[1:]) if isinstance(o, tuple) else o + 1.0

    h = gpt2.transformer.h[1].register_forward_hook(hook)
    try:
        ref = gpt2(input_ids=ids, attention_mask=mask).logits
    finally:
        h.remove()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frontend", frontends())
def test_insert_input_port_rewires_only_region_users(llama, frontend):
    gm = tracing.trace(llama, tracer=frontend).gm
    site = locate.module_input(gm, "model.layers.1.mlp")
    inside = [u for u in site.users if "model.layers.1.mlp" in locate.module_paths(u)]
    outside = [u for u in site.users if u not in inside]
    new = insert_interventions(
        gm, [dict(name="iv", module=Ident(), node=site.name, port="input", region="model.layers.1.mlp")]
    )
    nodes = {n.name: n for n in new.graph.nodes}
    iv = next(n for n in new.graph.nodes if n.target == "iv")
    assert {u.name for u in iv.users} == {u.name for u in inside}
    assert {u.name for u in nodes[site.name].users} == {u.name for u in outside} | {iv.name}


@pytest.mark.parametrize("frontend", frontends())
def test_expose_and_truncate(gpt2, frontend):
    tg = tracing.trace(gpt2, tracer=frontend)
    gm = tg.gm
    site = locate.module_output(gm, "transformer.h.0")
    exposed = expose(gm, [dict(node=site.name)])
    ids = torch.randint(0, 50, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.long)
    logits, h0 = exposed(input_ids=ids, attention_mask=mask)
    # block 0's output by a forward hook (not output_hidden_states: transformers 5 computes those with
    # hooks that a pyvene wrap elsewhere in the session may have removed from this shared model)
    seen = {}
    handle = gpt2.transformer.h[0].register_forward_hook(
        lambda m, a, o: seen.__setitem__("h0", o[0] if isinstance(o, tuple) else o)
    )
    try:
        gpt2(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    hs = {1: seen["h0"]}
    torch.testing.assert_close(h0, hs[1], atol=1e-5, rtol=1e-5)
    cut = truncate(exposed, [1])
    (h0b,) = cut(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(h0b, hs[1])
    names = {n.name for n in cut.graph.nodes}
    later = [n.name for n in locate.region(gm, "transformer.h.1")] + [n.name for n in locate.region(gm, "lm_head")]
    assert later and not (names & set(later)), "truncate kept nodes after the last needed site"
    assert len(cut.graph.nodes) < len(gm.graph.nodes) / 2
