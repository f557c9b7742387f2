"""Path patching (fxvene/methods/path_patching.py, passes/path.py) against a hand-written TransformerLens-style
reference: forward hooks on the HF modules, a sender run (attention outputs frozen to the base run,
senders from the source; MLPs frozen too with freeze="all") that records the receivers' inputs, then a
receiver run that patches only those inputs."""

import pytest
import torch
from conftest import make_gpt2, make_llama

import fxvene as pv

SEQ = 7


def _inputs(seed, vocab=50, b=2):
    g = torch.Generator().manual_seed(seed)
    return (
        {"input_ids": torch.randint(1, vocab, (b, SEQ), generator=g)},
        {"input_ids": torch.randint(1, vocab, (b, SEQ), generator=g)},
    )


class Ref:
    """The HF modules a TransformerLens-style implementation hooks, for GPT-2 and Llama."""

    def __init__(self, model):
        self.m = model
        c = model.config
        self.gpt2 = hasattr(model, "transformer")
        self.blocks = model.transformer.h if self.gpt2 else model.model.layers
        self.H = c.num_attention_heads
        self.KV = getattr(c, "num_key_value_heads", None) or self.H
        self.D = c.hidden_size
        self.dh = self.D // self.H

    def o_proj(self, l):
        return self.blocks[l].attn.c_proj if self.gpt2 else self.blocks[l].self_attn.o_proj

    def mlp(self, l):
        return self.blocks[l].mlp

    def qkv(self, kind, l, h):
        """(module whose output holds it, columns)."""
        if self.gpt2:
            off = {"q": 0, "k": 1, "v": 2}[kind] * self.D
            return self.blocks[l].attn.c_attn, slice(off + h * self.dh, off + (h + 1) * self.dh)
        mod = getattr(self.blocks[l].self_attn, f"{kind}_proj")
        return mod, slice(h * self.dh, (h + 1) * self.dh)

    def run(self, ids, hooks):
        handles = [reg(fn) for reg, fn in hooks]
        try:
            with torch.no_grad():
                return self.m(**ids).logits[:, -1]
        finally:
            for h in handles:
                h.remove()


def _first(o):
    return o[0] if isinstance(o, tuple) else o


def _swap_first(o, new):
    return (new,) + tuple(o[1:]) if isinstance(o, tuple) else new


def reference(model, base, source, senders, receivers, freeze):
    R = Ref(model)
    L = len(R.blocks)
    cache = {}
    # a whole head as a receiver: its query, key and value inputs
    receivers = [
        "logits" if r == "logits" else (k,) + tuple(r[1:])
        for r in receivers
        for k in (("q", "k", "v") if r[0] == "head" else (r[0],))
    ]

    def rec(key, x):
        cache[key] = x.detach().clone()

    def record_run(ids, tag):
        hooks = []
        for l in range(L):
            hooks.append((R.o_proj(l).register_forward_pre_hook, lambda m, a, l=l: rec((tag, "z", l), a[0])))
            hooks.append((R.mlp(l).register_forward_hook, lambda m, a, o, l=l: rec((tag, "mlp", l), _first(o))))
        return R.run(ids, hooks)

    record_run(base, "base")
    record_run(source, "src")
    # pass 1: the sender run, recording the receivers' inputs
    hooks = []
    for l in range(L):

        def freeze_z(m, a, l=l):
            z = cache[("base", "z", l)].clone()
            for s in senders:
                if s[0] == "head" and s[1] == l:
                    cols = slice(s[2] * R.dh, (s[2] + 1) * R.dh)
                    z[..., cols] = cache[("src", "z", l)][..., cols]
            return (z,) + tuple(a[1:])

        hooks.append((R.o_proj(l).register_forward_pre_hook, freeze_z))
        if freeze == "all" or ("mlp", l) in senders:
            tag = "src" if ("mlp", l) in senders else "base"
            hooks.append(
                (R.mlp(l).register_forward_hook, lambda m, a, o, l=l, tag=tag: _swap_first(o, cache[(tag, "mlp", l)]))
            )
    got = {}
    for r in receivers:
        if r == "logits":
            hooks.append(
                (R.blocks[L - 1].register_forward_hook, lambda m, a, o: got.__setitem__("logits", _first(o).clone()))
            )
        elif r[0] == "mlp":
            hooks.append((R.mlp(r[1]).register_forward_pre_hook, lambda m, a, r=r: got.__setitem__(r, a[0].clone())))
        else:
            mod, cols = R.qkv(r[0], r[1], r[2])
            hooks.append(
                (mod.register_forward_hook, lambda m, a, o, r=r, cols=cols: got.__setitem__(r, o[..., cols].clone()))
            )
    R.run(base, hooks)
    # pass 2: the base run with only the receivers' inputs patched
    hooks = []
    for r in receivers:
        if r == "logits":
            hooks.append((R.blocks[L - 1].register_forward_hook, lambda m, a, o: _swap_first(o, got["logits"])))
        elif r[0] == "mlp":
            hooks.append((R.mlp(r[1]).register_forward_pre_hook, lambda m, a, r=r: (got[r],) + tuple(a[1:])))
        else:
            mod, cols = R.qkv(r[0], r[1], r[2])

            def put(m, a, o, r=r, cols=cols):
                o = o.clone()
                o[..., cols] = got[r]
                return o

            hooks.append((mod.register_forward_hook, put))
    return R.run(base, hooks)


CASES = [
    ([("head", 0, 1)], ["logits"], "heads"),
    ([("head", 0, 1), ("head", 1, 3)], [("q", 2, 0), ("k", 2, 1), ("v", 3, 0)], "heads"),
    ([("head", 0, 3)], [("v", 1, 1), ("q", 2, 3)], "heads"),
    ([("mlp", 0), ("head", 1, 2)], [("q", 2, 3), ("mlp", 2), "logits"], "heads"),
    ([("head", 0, 2)], [("q", 1, 1), ("q", 3, 1)], "all"),
    ([("head", 1, 0)], [("head", 2, 1)], "heads"),
]


def _sharpen(model):
    """Random init gives near-uniform attention, where queries and keys barely matter: scale the
    query/key weights up so that paths into them carry something."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("c_attn.weight", "q_proj.weight", "k_proj.weight")):
                p.mul_(8.0)
    return model


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    """GPT-2 (fused QKV) and Llama with grouped-query attention (2 key/value heads for 4 query heads)."""
    return _sharpen(make_gpt2(n_layer=4, n_embd=24) if request.param == "gpt2" else make_llama(n_layer=4, kv_heads=2))


@pytest.mark.parametrize("senders,receivers,freeze", CASES)
def test_path_patching_equals_the_hook_reference(model, senders, receivers, freeze):
    base, source = _inputs(3)
    res = pv.path_patching(model, base, source, senders=senders, receivers=receivers, freeze=freeze)
    ref = reference(model, base, source, senders, receivers, freeze)
    torch.testing.assert_close(res.logits, ref, atol=2e-5, rtol=1e-4)
    assert (res.logits - res.base_logits).abs().max() > 1e-4  # the path carries something


def test_no_path_no_effect_and_metric():
    model = make_gpt2(n_layer=3, n_embd=24)
    base, source = _inputs(5)
    # a sender after the receiver reaches nothing
    res = pv.path_patching(model, base, source, senders=("head", 2, 0), receivers=("q", 1, 0))
    torch.testing.assert_close(res.logits, res.base_logits)
    res = pv.path_patching(
        model, base, source, senders=[("head", 0, 0)], receivers="logits", metric="logit_diff", tokens=[3, 8]
    )
    torch.testing.assert_close(res.value[:, 0], res.logits[:, 3] - res.logits[:, 8])
    torch.testing.assert_close(res.effect, res.value - res.base_value)
    # the graph diff shows the rewired edge into the receiver (the final norm reads the spliced residual)
    d = res.graph_diff()
    assert d.added_by_kind().get("path") and d.rewired
    rewired_users = [n for n in d.rewired if d._new_nodes[n].op != "output"]
    assert rewired_users and all(
        "fxv_receiver_0" in [a.name for a in d._new_nodes[n].all_input_nodes] for n in rewired_users
    )
    assert "fxv_freeze_attn_0" in " ".join(res.graph_diff("senders").added)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(senders=[("head", 9, 0)], receivers="logits"), "layer 9 is out of range"),
        (dict(senders=[("head", 0, 7)], receivers="logits"), "head 7 is out of range"),
        (dict(senders=[("q", 0, 0)], receivers="logits"), "senders"),
        (dict(senders=[("head", 0, 0)], receivers=[("attn", 1)]), "receivers"),
        (dict(senders=[], receivers="logits"), "senders must not be empty"),
        (dict(senders=[("head", 0, 0)], receivers="logits", freeze="mlps"), "freeze"),
    ],
)
def test_bad_input(kwargs, match):
    model = make_gpt2(n_layer=2, n_embd=16)
    base, source = _inputs(2)
    with pytest.raises(ValueError, match=match):
        pv.path_patching(model, base, source, **kwargs)


def test_rewire_pass_is_pure_and_rewires_only_the_receiving_edges():
    """passes.path.rewire: a new GraphModule; for an input port only the users inside the receiving
    module read the spliced value, every other user still reads the original node."""
    from fxvene.graph.sites import resolve_site
    from fxvene.graph.tracing import trace
    from fxvene.methods.path_patching import Splice
    from fxvene.passes.locate import module_paths
    from fxvene.passes.path import rewire

    model = make_gpt2(n_layer=2, n_embd=16)
    traced = trace(model, ("input_ids", "attention_mask"))
    site = resolve_site(traced, model, "block_input", 1)  # block 0's output: read by block 1 (two edges)
    before = traced.gm.code
    gm = rewire(traced.gm, [dict(name="fxv_r", module=Splice(), node=site.node, port="input", region=site.path)])
    assert traced.gm.code == before
    nodes = {n.name: n for n in gm.graph.nodes}
    new_users = list(nodes["fxv_r"].users)
    old_users = [u for u in nodes[site.node].users if u.name != "fxv_r"]
    assert new_users and all(site.path in module_paths(u) for u in new_users)
    assert all(site.path not in module_paths(u) for u in old_users)
    ids = torch.randint(0, 50, (1, 5))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        plain = traced.gm(input_ids=ids, attention_mask=mask)[0]
        same = gm(input_ids=ids, attention_mask=mask)[0]  # no value fed: the splice is the identity
        value = torch.zeros(1, 5, 16)
        moved = gm(input_ids=ids, attention_mask=mask, fxv_r_value=value)[0]
        # reference: block 1 sees a zero residual stream (forward pre-hook on the HF block)
        h = model.transformer.h[1].register_forward_pre_hook(lambda m, a: (torch.zeros_like(a[0]),) + tuple(a[1:]))
        try:
            ref = model(input_ids=ids).logits
        finally:
            h.remove()
    torch.testing.assert_close(same, plain)
    torch.testing.assert_close(moved, ref, atol=1e-5, rtol=1e-4)
