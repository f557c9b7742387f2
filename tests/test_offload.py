"""Models dispatched by accelerate (issue 22, items 1 and 5): a tiny GPT-2 and a tiny Llama saved with
``save_pretrained`` and reloaded with ``from_pretrained(dir, device_map=..., offload_folder=...)``, half their
blocks on disk and the rest on the CPU. Every feature is compared with forward hooks on the *same* weights
loaded in memory without a device map (≤ 1e-5); never with fxvene itself. The placement plan of a
two-device map is checked on a model that lives on the meta device.
"""

import warnings

import numpy as np
import pytest
import torch
from _hooks import capture, head_view, hooks
from conftest import make_gpt2, make_llama
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import fxvene as pv

pytest.importorskip("accelerate")

B, S = 2, 7
VOCAB = 50
GEN = dict(max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)


def _table(kind, layer):
    """component -> (module path, port, heads config attribute), from the HF modeling code."""
    if kind == "gpt2":
        lay = f"transformer.h.{layer}"
        return {
            "block_output": (lay, "output", None),
            "mlp_output": (f"{lay}.mlp", "output", None),
            "head_attention_value_output": (f"{lay}.attn.c_proj", "input", "n_head"),
        }
    lay = f"model.layers.{layer}"
    return {
        "block_output": (lay, "output", None),
        "mlp_output": (f"{lay}.mlp", "output", None),
        "head_attention_value_output": (f"{lay}.self_attn.o_proj", "input", "num_attention_heads"),
    }


def _device_map(kind):
    if kind == "gpt2":
        head = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu"}
        blocks = "transformer.h"
    else:
        head = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
        blocks = "model.layers"
    return {**head, f"{blocks}.0": "cpu", f"{blocks}.1": "disk"}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, tmp_path_factory):
    """(kind, in-memory model, offloaded model, warnings of loading and tracing the offloaded one)."""
    kind = request.param
    ref = make_gpt2(n_layer=2) if kind == "gpt2" else make_llama(n_layer=2)
    ref.config._attn_implementation = "eager"
    d = tmp_path_factory.mktemp(f"offload-{kind}")
    ref.save_pretrained(d)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        off = AutoModelForCausalLM.from_pretrained(
            d, device_map=_device_map(kind), offload_folder=str(d / "off"), attn_implementation="eager"
        ).eval()
        pv.IntervenableModel(_cfg("block_output", pv.CollectIntervention, 1), off)(base=_inputs(0))
    assert any(p.device.type == "meta" for p in off.parameters())  # the disk blocks really are offloaded
    return kind, ref, off, list(seen)


def _inputs(seed, b=B, s=S):
    ids = torch.randint(1, VOCAB, (b, s), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _cfg(component, itype, layer, unit="pos", **kw):
    rep = pv.RepresentationConfig(layer=layer, component=component, unit=unit, intervention_type=itype, **kw)
    return pv.IntervenableConfig(representations=[rep])


def test_loading_and_tracing_leak_no_warnings(pair):
    kind, _, _, seen = pair
    assert [str(w.message) for w in seen] == []


def test_vanilla_addition_collect_and_heads_equal_hooks(pair):
    """On a block on the CPU (layer 0) and one on disk (layer 1): a Vanilla patch, an Addition (steer), a
    Collect and a head x position patch, each against hooks on the in-memory model."""
    kind, ref, off, _ = pair
    base, src = _inputs(1), _inputs(2)
    bpos, spos = [[1, 3], [0, 4]], [[2, 3], [5, 0]]
    for layer in (0, 1):
        path, port, _ = _table(kind, layer)["block_output"]
        im = pv.IntervenableModel(_cfg("block_output", pv.VanillaIntervention, layer, max_number_of_units=2), off)
        _, out = im(base=base, sources=[src], unit_locations={"sources->base": ([spos], [bpos])})
        store = {}
        with hooks(ref, [(path, port, capture(store, "s"))]), torch.no_grad():
            ref(**src)

        def patch(x):
            y = x.clone()
            for i in range(B):
                y[i, bpos[i]] = store["s"][i, spos[i]]
            return y

        with hooks(ref, [(path, port, patch)]), torch.no_grad():
            want = ref(**base).logits
        torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)

    vec = torch.randn(ref.config.hidden_size, generator=torch.Generator().manual_seed(3))
    path, port, _ = _table(kind, 1)["block_output"]
    im = pv.IntervenableModel(_cfg("block_output", pv.AdditionIntervention, 1), off)
    _, out = im(base=base, source_representations=vec, unit_locations={"base": [[[6], [6]]]})

    def add_last(x):
        y = x.clone()
        y[:, 6] = y[:, 6] + vec
        return y

    with hooks(ref, [(path, port, add_last)]), torch.no_grad():
        want = ref(**base).logits
    torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)

    path, port, _ = _table(kind, 1)["mlp_output"]
    (_, got), _ = pv.IntervenableModel(_cfg("mlp_output", pv.CollectIntervention, 1), off)(base=base)
    store = {}
    with hooks(ref, [(path, port, capture(store, "x"))]), torch.no_grad():
        ref(**base)
    torch.testing.assert_close(got[0], store["x"], atol=1e-5, rtol=1e-5)

    path, port, heads = _table(kind, 1)["head_attention_value_output"]
    n = getattr(ref.config, heads)
    bh, sh = [[0, 1], [1, 0]], [[1, 0], [0, 1]]
    cfg = _cfg("head_attention_value_output", pv.VanillaIntervention, 1, unit="h.pos", max_number_of_units=2)
    _, out = pv.IntervenableModel(cfg, off)(
        base=base, sources=[src], unit_locations={"sources->base": ([[sh, spos]], [[bh, bpos]])}
    )
    store = {}
    with hooks(ref, [(path, port, capture(store, "s"))]), torch.no_grad():
        ref(**src)

    def patch_heads(x):
        y = x.clone()
        yv, sv = head_view(y, n), head_view(store["s"], n)
        for i in range(B):
            for hb, hs in zip(bh[i], sh[i]):
                for pb, ps in zip(bpos[i], spos[i]):
                    yv[i, hb, pb] = sv[i, hs, ps]
        return y

    with hooks(ref, [(path, port, patch_heads)]), torch.no_grad():
        want = ref(**base).logits
    torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)


def test_trainable_rotation_gradients_reach_only_the_intervention(pair):
    """LowRankRotatedSpace at a block on disk: loss and gradient equal the hooked in-memory model's; one
    backward leaves every weight of the model without a gradient."""
    kind, ref, off, _ = pair
    d = ref.config.hidden_size
    path, port, _ = _table(kind, 1)["block_output"]
    im = pv.IntervenableModel(_cfg("block_output", pv.LowRankRotatedSpaceIntervention, 1, low_rank_dimension=2), off)
    im.disable_model_gradients()
    iv = next(iter(im.interventions.values()))
    iv = iv[0] if isinstance(iv, tuple) else iv
    base, src = _inputs(4), _inputs(5)
    bpos, spos = [[4], [6]], [[3], [2]]
    labels = torch.tensor([5, 9])
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": ([spos], [bpos])})
    loss = torch.nn.functional.cross_entropy(out.logits[:, -1], labels)
    params = [p for p in iv.parameters() if p.requires_grad]
    loss.backward()
    grads = [p.grad.clone() for p in params]
    assert all(p.grad is None for p in off.parameters())
    for p in params:
        p.grad = None

    store = {}
    with hooks(ref, [(path, port, capture(store, "s"))]), torch.no_grad():
        ref(**src)
    bi = torch.arange(B)[:, None]

    def apply(x):
        new = iv(x[bi, torch.tensor(bpos)].reshape(B, d), store["s"][bi, torch.tensor(spos)].reshape(B, d))
        y = x.clone()
        y[bi, torch.tensor(bpos)] = new.reshape(B, 1, d)
        return y

    with hooks(ref, [(path, port, apply)]):
        want = torch.nn.functional.cross_entropy(ref(**base).logits[:, -1], labels)
    torch.testing.assert_close(loss, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(grads, torch.autograd.grad(want, params)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # the intervention lives on the device of its site: block 1 is on disk, so it runs on the main device
    assert {p.device for p in iv.parameters()} == {torch.device("cpu")}


def test_generate_with_kv_cache_equals_hf_generate_with_hook(pair):
    """Greedy generation with the KV-cache graphs, an Addition at a block on disk on every forward, equals
    HF's generate of the in-memory model with the same hook."""
    kind, ref, off, _ = pair
    if kind == "llama":
        pytest.skip("one family is enough for generate within the time budget (GPT-2)")
    base = _inputs(6, s=5)
    vec = torch.randn(ref.config.hidden_size, generator=torch.Generator().manual_seed(7)) * 3
    path, port, _ = _table(kind, 1)["block_output"]
    im = pv.IntervenableModel(_cfg("block_output", pv.AdditionIntervention, 1), off)
    _, seq = im.generate(base, source_representations=vec, intervene_on_prompt=True, unit_locations=None, **GEN)
    with hooks(ref, [(path, port, lambda x: x + vec)]), torch.no_grad():
        want = ref.generate(**base, **GEN)
    assert torch.equal(seq, want)


def test_causal_trace_equals_hooked_restores(pair):
    """causal_trace (block outputs, every position and layer) equals one hooked in-memory forward per cell:
    noise on the subject's embeddings, the clean state restored at one position of one layer."""
    kind, ref, off, _ = pair
    if kind == "llama":
        pytest.skip("one family is enough for the sweep within the time budget (GPT-2)")
    ids = _inputs(8, b=1, s=5)["input_ids"]
    subj, n_samples, level, target = [1, 2], 3, 0.5, 7
    res = pv.causal_trace(
        off,
        {"input_ids": ids},
        subject_positions=subj,
        target_token=target,
        noise_level=level,
        n_samples=n_samples,
        streams=("block_output",),
    )
    noise = torch.from_numpy(np.random.RandomState(1).randn(n_samples, len(subj), ref.config.hidden_size))

    def noisy(x):
        y = x.clone()
        y[:, subj] = (x[:, subj].double() + noise * level).to(x.dtype)
        return y

    clean = {}
    specs = [(_table(kind, layer)["block_output"][0], "output", capture(clean, layer)) for layer in range(2)]
    with hooks(ref, specs), torch.no_grad():
        ref(input_ids=ids)
    rows = ids.expand(n_samples, -1)
    for p in range(5):
        for layer in range(2):

            def restore(x, p=p, layer=layer):
                y = x.clone()
                y[:, p] = clean[layer][:, p]
                return y

            specs = [("transformer.h.0", "input", noisy), (_table(kind, layer)["block_output"][0], "output", restore)]
            with hooks(ref, specs), torch.no_grad():
                prob = torch.softmax(ref(input_ids=rows).logits[:, -1].float(), -1)[:, target].mean()
            assert abs(float(res.probs[0, p, layer]) - float(prob)) < 1e-5, (p, layer)


def test_graph_diff_shows_only_the_site_ops(pair):
    """The graph diff of a dispatched model: the intervention's nodes are added, nothing is removed; the
    offloaded weights are loader calls of the graph (no meta-device weight is left in it)."""
    kind, ref, off, _ = pair
    im = pv.IntervenableModel(_cfg("block_output", pv.VanillaIntervention, 1), off)
    d = im.graph_diff()
    assert sorted(d.added) == ["fxv_loc_0", "fxv_site_0", "fxv_src_0"]
    assert d.removed == []
    read = [_attr(d.new, n.target) for n in d.new.graph.nodes if n.op == "get_attr"]
    assert read and all(t.device.type != "meta" for t in read if isinstance(t, torch.Tensor))
    loads = [n for n in d.new.graph.nodes if n.op == "call_module" and str(n.target).startswith("fxvene_offload.")]
    assert loads


def _attr(gm, target):
    owner, _, leaf = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, leaf)


def test_placement_plan_of_a_two_device_map_on_meta():
    """A GPT-2 on the meta device planned over {h.0-1: 0, h.2-3: 1}: each node runs on its block's
    device, the embeddings' ops on 0, the final norm and head on 1; interventions on their site's device."""
    cfg = GPT2Config(n_layer=4, n_embd=24, n_head=4, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    with torch.device("meta"):
        model = GPT2LMHeadModel(cfg).eval()
    dmap = {"transformer.wte": 0, "transformer.wpe": 0, "transformer.h.0": 0, "transformer.h.1": "disk"}
    dmap.update({"transformer.h.2": 1, "transformer.h.3": "cpu", "transformer.ln_f": 1, "lm_head": 1})
    sites = [("block_output", 1), ("block_output", 2), ("head_attention_value_output", 3), ("mlp_output", 0)]
    plan = pv.placement_plan(model, dmap, sites=sites)
    cuda = [torch.device("cuda", 0), torch.device("cuda", 1)]
    # accelerate runs "disk" and "cpu" modules on the main device (the first one in the map), cuda:0
    assert plan["sites"] == {sites[0]: cuda[0], sites[1]: cuda[1], sites[2]: cuda[0], sites[3]: cuda[0]}
    nodes = plan["nodes"]
    assert set(nodes.values()) == set(cuda)
    assert nodes["input_ids"] == cuda[0]
    by_name = {n: d for n, d in nodes.items()}
    for name, dev in by_name.items():
        for i in range(4):
            if f"transformer_h_{i}_" in name:
                assert dev == cuda[i == 2], name
        if "lm_head" in name or "ln_f" in name:
            assert dev == cuda[1], name
        if "wte" in name or "wpe" in name:
            assert dev == cuda[0], name
    with pytest.raises(TypeError, match="device_map"):
        pv.placement_plan(model, "auto")


class _Counting(dict):
    """A weights map that counts its reads (accelerate's loaders are mappings too)."""

    def __init__(self, *a):
        super().__init__(*a)
        self.reads = []

    def __getitem__(self, key):
        self.reads.append(key)
        return super().__getitem__(key)


def test_load_offloaded_pass_alone_equals_a_hand_written_forward():
    """The pass on a plain fx trace of two linears whose weights are on the meta device: each weight is
    read once per call, just before its use, and the output is the hand-written forward's."""
    import torch.fx as fx

    from fxvene.passes.offload import load_offloaded

    torch.manual_seed(0)
    real = {"a.weight": torch.randn(5, 4), "a.bias": torch.randn(5), "b.weight": torch.randn(3, 5)}
    net = torch.nn.Sequential()
    net.add_module("a", torch.nn.Linear(4, 5, device="meta"))
    net.add_module("b", torch.nn.Linear(5, 3, bias=False, device="meta"))

    class Root(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = net.a, net.b

        def forward(self, x):
            h = torch.relu(torch.nn.functional.linear(x, self.a.weight, self.a.bias))
            return torch.nn.functional.linear(h, self.b.weight)

    gm = fx.symbolic_trace(Root())
    wm = _Counting(real)
    gm = load_offloaded(gm, {k: (wm, k, "cpu", torch.float32) for k in real})
    x = torch.randn(2, 4)
    want = torch.relu(x @ real["a.weight"].T + real["a.bias"]) @ real["b.weight"].T
    torch.testing.assert_close(gm(x), want)
    assert sorted(wm.reads) == sorted(real)
    order = [n.op for n in gm.graph.nodes]
    assert order.index("call_module") > order.index("placeholder")  # loads come after the inputs, near their use
    assert not [n for n in gm.graph.nodes if n.op == "get_attr"]


def _gpt2_block_hooks(ref, fn_of_layer):
    return [(f"transformer.h.{layer}", "output", fn_of_layer(layer)) for layer in range(2)]


def test_patching_sweep_and_attribution_equal_hooked_cells(pair):
    """patching_sweep (block outputs, every layer and position) equals one hooked in-memory forward per cell;
    attribution_patching equals the hand-written (a_source - a_base) . d logit_diff / d a of the hooked model."""
    kind, ref, off, _ = pair
    if kind == "llama":
        pytest.skip("one family is enough for the sweeps within the time budget (GPT-2)")
    base, src = _inputs(9, b=1, s=5)["input_ids"], _inputs(10, b=1, s=5)["input_ids"]
    res = pv.patching_sweep(off, {"input_ids": base}, {"input_ids": src}, progress=False)
    store = {}
    with hooks(ref, _gpt2_block_hooks(ref, lambda layer: capture(store, layer))), torch.no_grad():
        ref(input_ids=src)
    for layer in range(2):
        for p in range(5):

            def patch(x, p=p, layer=layer):
                y = x.clone()
                y[:, p] = store[layer][:, p]
                return y

            with hooks(ref, [(f"transformer.h.{layer}", "output", patch)]), torch.no_grad():
                want = ref(input_ids=base).logits[0, -1]
            torch.testing.assert_close(res.values[0, layer, p, 0], want, atol=1e-5, rtol=1e-5)

    a, b = 3, 7
    est = pv.attribution_patching(off, {"input_ids": base}, {"input_ids": src}, metric="logit_diff", tokens=[a, b])
    acts = {}

    def keep(layer):
        def fn(x):
            x.retain_grad()
            acts[layer] = x

        return fn

    def leaf(x):
        return x.detach().requires_grad_()

    with hooks(ref, [("transformer.h.0", "input", leaf), *_gpt2_block_hooks(ref, keep)]):
        logits = ref(input_ids=base).logits[0, -1]
        metric = logits[a] - logits[b]
        metric.backward()
    for layer in range(2):
        delta = ((store[layer] - acts[layer].detach()) * acts[layer].grad)[0].sum(-1)  # per position
        got = est.values[0, layer, :, 0, 0]
        torch.testing.assert_close(got, float(metric.detach()) + delta, atol=1e-5, rtol=1e-5)


def test_device_map_auto_with_max_memory_sends_blocks_to_disk(pair, tmp_path):
    """device_map="auto" with a CPU budget too small for the model: accelerate puts the last blocks on disk;
    a Vanilla patch at the last block equals hooks on the in-memory model."""
    kind, ref, off, _ = pair
    if kind == "llama":
        pytest.skip("one family is enough for device_map='auto' within the time budget (GPT-2)")
    weights = sum(p.numel() * p.element_size() for p in ref.parameters())
    auto = AutoModelForCausalLM.from_pretrained(
        off.config._name_or_path,
        device_map="auto",
        max_memory={"cpu": weights // 2},
        offload_folder=str(tmp_path / "off"),
        attn_implementation="eager",
    ).eval()
    assert "disk" in set(auto.hf_device_map.values()), auto.hf_device_map
    base, src = _inputs(11), _inputs(12)
    pos = [[4], [2]]
    im = pv.IntervenableModel(_cfg("block_output", pv.VanillaIntervention, 1), auto)
    _, out = im(base=base, sources=[src], unit_locations={"sources->base": ([pos], [pos])})
    store = {}
    with hooks(ref, [("transformer.h.1", "output", capture(store, "s"))]), torch.no_grad():
        ref(**src)

    def patch(x):
        y = x.clone()
        for i in range(B):
            y[i, pos[i]] = store["s"][i, pos[i]]
        return y

    with hooks(ref, [("transformer.h.1", "output", patch)]), torch.no_grad():
        want = ref(**base).logits
    torch.testing.assert_close(out.logits, want, atol=1e-5, rtol=1e-5)


def test_sweeps_load_each_offloaded_weight_once_per_batch_of_rows(pair, monkeypatch):
    """Weight loads, counted on accelerate's OffloadedWeightsLoader: a causal trace of 48 rows and a head
    sweep of 64 rows (start-position groups, the engine's other path) read each offloaded weight once for
    the clean run plus once per batch of rows (max_rows=16: 4 batches), not once per cell or row group."""
    kind, ref, off, _ = pair
    if kind == "llama":
        pytest.skip("one family is enough for the load counts within the time budget (GPT-2)")
    from accelerate.utils.offload import OffloadedWeightsLoader

    loads = []
    original = OffloadedWeightsLoader.__getitem__

    def counting(self, key):
        loads.append(key)
        return original(self, key)

    def most():
        n = max(loads.count(k) for k in set(loads))
        loads.clear()
        return n

    ids = {"input_ids": _inputs(13, b=1, s=8)["input_ids"]}
    src = {"input_ids": _inputs(14, b=1, s=8)["input_ids"]}
    kw = dict(subject_positions=[1, 2], target_token=7, n_samples=3, streams=("block_output",), progress=False)
    heads = dict(components="head_attention_value_output", progress=False)
    pv.causal_trace(off, ids, **kw)  # the engines are built (and their graphs checked) before counting
    pv.patching_sweep(off, ids, src, **heads)
    monkeypatch.setattr(OffloadedWeightsLoader, "__getitem__", counting)
    pv.causal_trace(off, ids, **kw)
    assert most() <= 2
    pv.patching_sweep(off, ids, src, **heads)
    assert most() <= 2
    pv.patching_sweep(off, ids, src, max_rows=16, **heads)
    assert most() <= 1 + 4
